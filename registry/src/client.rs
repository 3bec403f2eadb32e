//! Pushing and pulling Wasm OCI artifacts, to and from any OCI registry.
//!
//! A pull is written to `<dest>.partial` while its sha256 is computed; an
//! interrupted pull resumes from what that file holds with a `Range`
//! request, never reads past the size the manifest declares, and the file is
//! renamed to `<dest>` only once the digest matches.
//!
//! A push streams its blob, from memory or straight from a file, so pushing
//! a large file does not need its size in memory. A [`Progress`] given to
//! [`Client::with_progress`] hears how each blob transfer goes.
//!
//! One module per area of the distribution API the client speaks: `blobs`
//! (streamed pushes, resumable pulls), `manifests`, and `wasm`, the Wasm OCI
//! artifact made of both. This module holds the client's connection and the
//! way every call turns an answer into a result.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use crate::error::ErrorBody;

mod blobs;
mod error;
mod manifests;
mod progress;
mod reference;
#[cfg(test)]
#[cfg(feature = "server")]
mod tests;
mod wasm;

pub use error::ClientError;
pub use progress::Progress;
pub use reference::Reference;
pub use wasm::Pulled;

use error::Result;

/// How long to wait for a connection to a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest silence on a connection before the transfer is given up (and can
/// be resumed): long enough for a slow cellular link, short enough that a
/// dead one is noticed.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Size of the pieces a blob is streamed in.
const CHUNK: usize = 64 << 10;

/// Bytes read or written per step on a local file: few, large steps, since
/// each tokio file operation is a trip to the blocking pool.
const FILE_BUFFER: usize = 256 << 10;
/// A client for one registry.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    progress: Option<Arc<dyn Progress>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the registry at `base` (`http(s)://host[:port]`), sending
    /// `token` as a bearer token if given.
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("kelp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Http {
                what: "cannot build an HTTP client".to_owned(),
                source,
            })?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
            progress: None,
        })
    }

    /// Reports every blob transfer to `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        req.send().await.map_err(|source| ClientError::Http {
            what: what.to_owned(),
            source,
        })
    }

    /// Turns a non-success answer into an error carrying the registry's own
    /// words.
    async fn expect(
        &self,
        what: &str,
        res: reqwest::Response,
        ok: &[StatusCode],
    ) -> Result<reqwest::Response> {
        if ok.contains(&res.status()) {
            return Ok(res);
        }
        let status = res.status();
        let body = res.bytes().await.unwrap_or_default();
        let message = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => b
                .errors
                .iter()
                .map(|e| {
                    let code = serde_json::to_value(e.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    format!(": {code}: {}", e.message)
                })
                .collect(),
            Err(_) => String::new(),
        };
        Err(ClientError::Status {
            what: what.to_owned(),
            status,
            message,
        })
    }
}
