//! A device in a fleet: `kelpd --config FILE` registers with a Kelp cloud,
//! follows the target state the cloud gives it and reports what it runs.
//!
//! ```toml
//! cloud = "https://kelp.example.com"   # the kelp-cloud serving the fleet API
//! provisioning-key = "kelp_pk_…"       # needed on the first start only
//! fleet = "garden"                     # optional: refuse to join another fleet
//! device-name = "pump-1"               # optional: the name the cloud shows
//! trusted-keys = ["publisher.pub"]     # publisher keys; relative to this file
//! hardware-map = "hardware.toml"       # optional
//! hardware = "linux"                   # or "sim"; default linux
//! data-dir = "/var/lib/kelp"           # default: kelpd's --data-dir
//! health-window = "30s"                # how long a new release must run without
//!                                      # a service failing before it counts as healthy
//! log-buffer = "8MiB"                  # log lines kept on disk while the cloud is away
//! registries = ["registry.example.com"] # where images may come from; default: the cloud's
//! ```
//!
//! On its first start the device makes up a uuid, registers it with the
//! provisioning key and keeps both the uuid and the device key the cloud
//! hands out in its data directory:
//!
//! ```text
//! <data-dir>/device/uuid        this device's uuid
//! <data-dir>/device/key         its device key (mode 0600)
//! <data-dir>/device/state.json  the cloud's last target, the last healthy one,
//!                               and the one given up on (see `rollout`)
//! <data-dir>/device/logs/       log lines not yet delivered (see `outbox`)
//! ```
//!
//! Later starts use the stored key and never need the provisioning key. The
//! state is what the device runs when it starts without the cloud; its
//! images are already in the blob store.

pub mod cloud;
pub mod config;
pub mod disk;
pub mod error;
pub mod follow;
pub mod outbox;
pub mod rollout;

pub use config::Config;
pub use disk::DeviceFiles;
pub use error::AgentError;
pub use follow::Agent;
