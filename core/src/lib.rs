//! Shared vocabulary of Kelp.
//!
//! Every part of Kelp — the device supervisor, the cloud, the CLI — speaks of
//! the same things: a content [`Digest`], a [`RestartPolicy`], a memory
//! [`ByteSize`], and the [`ServiceStatus`] a device reports for each service.
//! They live here, with their text forms, so that a value written by one part
//! parses the same way in every other.
//!
//! ```
//! use kelp_core::{ByteSize, RestartPolicy};
//!
//! let policy: RestartPolicy = "on-failure:3".parse().unwrap();
//! assert_eq!(policy, RestartPolicy::OnFailure { max_restarts: 3 });
//! assert_eq!("64MiB".parse::<ByteSize>().unwrap().bytes(), 64 << 20);
//! ```

mod digest;
mod size;
mod status;

pub use digest::{Digest, DigestError};
pub use size::{ByteSize, SizeError};
pub use status::{ExitReason, RestartPolicy, RestartPolicyError, ServiceState, ServiceStatus};
