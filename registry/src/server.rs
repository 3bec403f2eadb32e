//! The OCI distribution API over a [`Store`], one module per area of the
//! spec: `auth` (who may push, pull and delete, and the `/v2/` check),
//! `blobs`, `uploads`, `manifests`, `tags` and `referrers`, with `gc`
//! removing what nothing uses. `routes` maps a request to its area;
//! this module holds the state they share and the helpers they use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::routing::{any, get};
use uuid::Uuid;

use crate::digest::BlobDigest;
use crate::error::{ApiError, ErrorCode};
use crate::store::Store;

mod auth;
mod blobs;
mod gc;
mod manifests;
mod referrers;
mod routes;
mod tags;
#[cfg(test)]
mod tests;
mod uploads;

pub use auth::{Auth, PullPolicy, PullPolicyError, TokenHash, Tokens};
pub use gc::{GC_EVERY, GcPolicy, GcPolicyError, GcReport, RetainNothing, Retained};
pub use tags::MAX_TAGS_PAGE;
pub use uploads::{MAX_UPLOAD_SESSIONS, UPLOAD_IDLE_TIMEOUT};

use uploads::Upload;

/// Bytes read from or written to disk per step when a blob is served or
/// uploaded. Each read or write of a tokio file is a trip to the blocking
/// pool; at the default 4 KiB a 20 MiB blob took 5,120 of them, and pulling
/// it ran at a twentieth of disk speed.
const SERVE_CHUNK: usize = 256 << 10;

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");

/// The registry's shared state: its store, its access rules and the uploads
/// in progress. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    auth: Auth,
    uploads: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<Upload>>>>,
    retained: Arc<dyn Retained>,
    /// Read by everything that makes a blob wanted (a manifest linked, a
    /// blob announced to a client), written by what removes blobs: see
    /// `gc`.
    gc_lock: tokio::sync::RwLock<()>,
}

impl Registry {
    pub fn new(store: Store, auth: Auth) -> Self {
        Registry::retaining(store, auth, Arc::new(RetainNothing))
    }

    /// A registry that never lets go of the manifests `retained` names (nor
    /// of their blobs): they cannot be deleted, and garbage collection keeps
    /// them.
    pub fn retaining(store: Store, auth: Auth, retained: Arc<dyn Retained>) -> Self {
        Registry {
            inner: Arc::new(Inner {
                store,
                auth,
                uploads: Mutex::new(HashMap::new()),
                retained,
                gc_lock: tokio::sync::RwLock::new(()),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<tokio::sync::Mutex<Upload>>>> {
        // A poisoned map is still a consistent map: every change to it is a
        // single insert or remove.
        self.inner
            .uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The OCI distribution API under `/v2/`.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/v2/", get(auth::base))
        .route("/v2", get(auth::base))
        .route("/v2/{*path}", any(routes::dispatch))
        .layer(axum::middleware::map_response(api_version))
        .with_state(registry)
}

async fn api_version(mut response: Response) -> Response {
    response.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn parse_digest(s: &str) -> Result<BlobDigest, ApiError> {
    s.parse().map_err(|e: crate::digest::BlobDigestError| {
        ApiError::bad_request(ErrorCode::DigestInvalid, e.to_string())
    })
}

fn header_value(s: &str) -> HeaderValue {
    // Every value built here is ASCII made of names, digests and numbers that
    // were validated before.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> ApiError + '_ {
    move |e| ApiError::internal(context, e)
}
