//! The client itself: its connection and token, the cloud's URL, and the
//! one way every call is sent and its answer read. The calls are in the
//! modules of the resources they act on.

use std::time::Duration;

use kelp_core::api::ErrorBody;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// How long to wait for the cloud to accept a connection: long enough for
/// a slow link, short enough that a wrong address fails while the user
/// waits.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest one request may take. Every fleet API answer is small; a cloud
/// that takes longer is stuck.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The cloud's URL, checked: http or https, and no credentials, query or
/// fragment in it (the token goes apart, where it is never echoed).
pub fn parse_url(url: &str) -> Result<Url, Error> {
    let parsed = Url::parse(url).map_err(|e| {
        Error::BadUrl(format!(
            "`{url}` is not a URL (like http://127.0.0.1:8080): {e}"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Error::BadUrl(format!(
            "`{url}` is not an http:// or https:// URL of a Kelp cloud"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::BadUrl(
            "the cloud's URL must not hold credentials; give the API token apart".to_owned(),
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::BadUrl(format!(
            "the cloud's URL `{url}` must not have a query or fragment"
        )));
    }
    Ok(parsed)
}

/// A client of one cloud's fleet API, holding its API token. Cheap to
/// clone; clones share connections. Its pooled connections belong to the
/// tokio runtime that opened them: use a client (and its clones) from one
/// runtime.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &"…")
            .finish()
    }
}

impl Client {
    /// A client of the cloud at `url` (like `http://127.0.0.1:8080`),
    /// calling with `token`.
    pub fn new(url: &str, token: impl Into<String>) -> Result<Client, Error> {
        let base = parse_url(url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("kelp-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Http)?;
        Ok(Client {
            http,
            base,
            token: token.into(),
        })
    }

    /// The cloud's URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The API token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The cloud's OpenAPI document (`GET /api/v1/openapi.json`).
    pub async fn openapi(&self) -> Result<serde_json::Value, Error> {
        self.get(&["api", "v1", "openapi.json"], &[]).await
    }

    /// `segments` (each percent-encoded, so a name cannot reach another
    /// path) under the base URL, with `query`.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, Error> {
        self.send(Method::GET, segments, query, None::<&()>).await
    }

    /// One request whose answer is a `T`.
    pub(crate) async fn send<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<T, Error> {
        let bytes = self.call(method, segments, query, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Unexpected {
            url: self.base.to_string(),
            source,
        })
    }

    /// One request whose answer's body does not matter.
    pub(crate) async fn empty<B: Serialize>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<(), Error> {
        self.call(method, segments, query, body).await.map(drop)
    }

    /// Sends one request; the body of a successful answer (JSON, or
    /// empty), or the refusal.
    async fn call<B: Serialize>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<Vec<u8>, Error> {
        let url = self.url(segments, query);
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body).map_err(Error::Encode)?;
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let response = request.send().await.map_err(|e| Error::Unreachable {
            url: self.base.to_string(),
            source: e.without_url(),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| Error::Read {
            url: self.base.to_string(),
            source: e.without_url(),
        })?;
        if !status.is_success() {
            return Err(self.refusal(status, &bytes));
        }
        if !bytes.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Err(Error::NotKelp {
                url: self.base.to_string(),
                what: "with something other than JSON".to_owned(),
            });
        }
        Ok(bytes.to_vec())
    }

    fn refusal(&self, status: StatusCode, bytes: &[u8]) -> Error {
        match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(body) => Error::Refused {
                url: self.base.to_string(),
                status,
                // One line, whatever the server sent.
                message: body.error.replace(['\n', '\r'], " "),
                field: body.field,
            },
            Err(_) => Error::NotKelp {
                url: self.base.to_string(),
                what: status.to_string(),
            },
        }
    }
}
