//! Shared vocabulary of Kelp.
//!
//! Every part of Kelp — the device supervisor, the cloud, the CLI — speaks of
//! the same things: a content [`Digest`], a [`RestartPolicy`], a memory
//! [`ByteSize`], the [`ServiceStatus`] a device reports for each service, the
//! service [`Manifest`] a publisher signs, the signature format ([`sign`],
//! [`verify`]) that decides what a device runs, and the fleet API's request
//! and response bodies ([`api`]). They live here, with their
//! text and byte forms, so that a value written by one part parses the same
//! way in every other.
//!
//! ```
//! use kelp_core::{ByteSize, RestartPolicy};
//!
//! let policy: RestartPolicy = "on-failure:3".parse().unwrap();
//! assert_eq!(policy, RestartPolicy::OnFailure { max_restarts: 3 });
//! assert_eq!("64MiB".parse::<ByteSize>().unwrap().bytes(), 64 << 20);
//! ```

pub mod api;
mod digest;
pub mod fsutil;
pub mod hardware_map;
mod manifest;
pub mod network;
#[cfg(feature = "openapi")]
pub mod openapi;
mod sections;
mod signature;
mod size;
mod status;
mod wasm;

pub use digest::{Digest, DigestError};
pub use manifest::{
    DEFAULT_MEMORY, GpioGrant, GpioMode, Grants, I2cGrant, MAX_I2C_ADDRESS, MAX_MANIFEST_SIZE,
    MAX_NAME_LEN, Manifest, ManifestError, ManifestFileError, embed, extract, read_manifest_file,
    valid_label, valid_service_name,
};
pub use network::{Destination, NetworkGrant, NetworkPolicy, Refusal, Transport};
pub use sections::{MANIFEST_SECTION, SIGNATURE_SECTION};
pub use signature::{
    Inspection, KeyError, KeyId, MAX_HASH_SETS, MAX_HASHES, MAX_KEY_FILE_SIZE, MAX_SIGNATURES,
    PublicKey, SecretKey, SignatureError, SignatureSummary, VerifiedBy, inspect, sign, verify,
};
pub use size::{ByteSize, SizeError};
pub use status::{ExitReason, RestartPolicy, RestartPolicyError, ServiceState, ServiceStatus};
pub use wasm::{WasmError, WasmKind};
