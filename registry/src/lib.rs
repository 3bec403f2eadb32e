//! Kelp's registry: a content-addressed blob store on disk, the OCI
//! distribution API over it, and the client that pushes and pulls Wasm OCI
//! artifacts (from this registry or any other OCI registry).
//!
//! The server half (the store and the API, on axum) is the `server` feature,
//! on by default. A device needs only the client: it depends on this crate
//! with `default-features = false` and links no HTTP server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kelp_registry::{Auth, PullPolicy, Registry, Store, TokenHash, router};
//!
//! let store = Store::open("/var/lib/kelp-cloud/registry")?;
//! let auth = Auth { pull: PullPolicy::Anonymous, tokens: std::sync::Arc::new(vec![TokenHash::of("s3cret")]) };
//! let app = router(Registry::new(store, auth));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! The modules, bottom up: `names` (repository names, tags, references),
//! `oci` (the artifact format), `digest` (the sha256 and sha512 digests
//! the server accepts), `error` (the spec's error body), `store` (the
//! blobs on disk), `server` (the API, one module per area of the spec) and
//! `client` (the same areas, from the other side). `oci` and `client` are
//! public as namespaces too, for their less common items
//! (`oci::WasmArtifact`, `client::Progress`).

pub mod client;
#[cfg(feature = "server")]
mod digest;
mod error;
mod names;
pub mod oci;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod store;

pub use client::{Client, ClientError, Progress, Pulled, Reference};
#[cfg(feature = "server")]
pub use digest::{Algorithm, BlobDigest, BlobDigestError};
#[cfg(feature = "server")]
pub use error::ApiError;
pub use error::{ErrorBody, ErrorCode, ErrorEntry};
pub use kelp_core::fsutil::write_atomic;
pub use names::{MAX_NAME_LEN, MAX_TAG_LEN, ManifestRef, NameError, RepoName, Tag};
pub use oci::{MAX_BLOB_SIZE, MAX_MANIFEST_SIZE};
#[cfg(feature = "server")]
pub use server::{
    Auth, GC_EVERY, GcPolicy, GcPolicyError, GcReport, MAX_TAGS_PAGE, MAX_UPLOAD_SESSIONS,
    PullPolicy, PullPolicyError, Registry, RetainNothing, Retained, TokenHash, Tokens,
    UPLOAD_IDLE_TIMEOUT, router,
};
#[cfg(feature = "server")]
pub use store::Store;
