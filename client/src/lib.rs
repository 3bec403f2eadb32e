//! A typed client of the Kelp cloud's fleet API (`/api/v1/…`): API tokens,
//! fleets and their provisioning keys, releases and pins, devices (names,
//! tags), environment variables of a fleet or a device, hardware maps and
//! device logs, including following them. The bodies are
//! [`kelp_core::api`]'s, the ones the cloud itself serves; the cloud
//! describes every call in its OpenAPI document, `GET /api/v1/openapi.json`
//! ([`Client::openapi`]).
//!
//! Every call returns one [`Error`] type; a refusal carries the status and
//! the cloud's own message, and the field at fault when there is one.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kelp_client::Error> {
//! use kelp_client::{Client, StatusCode};
//!
//! let cloud = Client::new("http://127.0.0.1:8080", "the API token")?;
//! match cloud.create_fleet("garden").await {
//!     Ok(created) => println!("provisioning key: {}", created.provisioning_key),
//!     Err(e) if e.status() == Some(StatusCode::CONFLICT) => println!("garden exists"),
//!     Err(e) => return Err(e),
//! }
//! cloud.set_fleet_env("garden", "GREETING", "hello", None).await?;
//! for release in cloud.releases("garden").await? {
//!     println!("{} ({} services)", release.version, release.services.len());
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use kelp_core::api;
pub use reqwest::{StatusCode, Url};

use kelp_core::api::{
    DeviceUpdate, DeviceView, EnvValue, EnvView, ErrorBody, FleetCreated, FleetView,
    HardwareMapView, NewFleet, NewHardwareMap, NewRelease, NewToken, Pin, ProvisioningKeyCreated,
    ReleaseView, RestartRequested, ServiceSamples, StoredLogLine, TagValue, TokenCreated,
    TokenInfo,
};

/// How long to wait for the cloud to accept a connection: long enough for
/// a slow link, short enough that a wrong address fails while the user
/// waits.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest one request may take. Every fleet API answer is small; a cloud
/// that takes longer is stuck.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Most log lines the cloud sends for one read.
pub const MAX_LOG_READ: u32 = 1000;

/// How often [`LogFollower::next`] asks for new lines while there are
/// none: a new line shows within a second, and an idle follower costs the
/// cloud one small read a second.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cloud refused the request and said why.
    #[error("{}", refusal(url, message, field.as_deref(), *status))]
    Refused {
        /// The cloud's URL.
        url: String,
        status: StatusCode,
        /// The cloud's message, on one line.
        message: String,
        /// The part of the request at fault (`name`, `services.web.image`,
        /// `limit`), when one is.
        field: Option<String>,
    },
    /// Something answered, but not as a Kelp cloud does: an error status
    /// without the API's error body, or a success that is not JSON.
    #[error("{url} answered {what}; is it a Kelp cloud?")]
    NotKelp { url: String, what: String },
    /// A success whose body is not the type this version expects.
    #[error("the answer of the Kelp cloud at {url} is not what this version of kelp expects")]
    Unexpected {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot reach the Kelp cloud at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot read the answer of the Kelp cloud at {url}")]
    Read {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The cloud's URL is not one a client can use.
    #[error("{0}")]
    BadUrl(String),
    #[error("cannot build an HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
}

fn refusal(url: &str, message: &str, field: Option<&str>, status: StatusCode) -> String {
    if status == StatusCode::UNAUTHORIZED {
        return format!("the Kelp cloud at {url} refused the API token: {message}");
    }
    match field {
        Some(field) => format!("{message} (field `{field}`; {status})"),
        None => format!("{message} ({status})"),
    }
}

impl Error {
    /// The status of a refusal; none for an error that is not one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The cloud's message, for a refusal.
    pub fn message(&self) -> Option<&str> {
        match self {
            Error::Refused { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Whether the cloud answered 404: what was named does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }
}

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

/// Which devices [`Client::devices`] lists.
#[derive(Clone, Debug, Default)]
pub struct DeviceQuery<'a> {
    /// Only this fleet's.
    pub fleet: Option<&'a str>,
    /// Only those whose uuid sorts after this one: the last of the
    /// previous page.
    pub after: Option<&'a str>,
    /// At most this many (the cloud's limit when absent).
    pub limit: Option<u32>,
}

/// Which log lines [`Client::logs`] reads.
#[derive(Clone, Debug, Default)]
pub struct LogQuery<'a> {
    /// Only this service's.
    pub service: Option<&'a str>,
    /// Only lines after this id; without it, the newest lines.
    pub after: Option<i64>,
    /// At most this many (100 when absent; at most [`MAX_LOG_READ`]).
    pub limit: Option<u32>,
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

    // --- the OpenAPI document ---

    /// The cloud's OpenAPI document (`GET /api/v1/openapi.json`).
    pub async fn openapi(&self) -> Result<serde_json::Value, Error> {
        self.get(&["api", "v1", "openapi.json"], &[]).await
    }

    // --- tokens ---

    /// The live API tokens (never the tokens themselves).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        self.get(&["api", "v1", "tokens"], &[]).await
    }

    /// A new API token named `name`; the token is in the answer, this once.
    pub async fn create_token(&self, name: &str) -> Result<TokenCreated, Error> {
        let body = NewToken {
            name: name.to_owned(),
        };
        self.send(Method::POST, &["api", "v1", "tokens"], &[], Some(&body))
            .await
    }

    /// Revokes the token with id `id`; the cloud refuses to revoke the last
    /// live one (409).
    pub async fn revoke_token(&self, id: &str) -> Result<(), Error> {
        self.empty(
            Method::DELETE,
            &["api", "v1", "tokens", id],
            &[],
            None::<&()>,
        )
        .await
    }

    // --- fleets ---

    pub async fn fleets(&self) -> Result<Vec<FleetView>, Error> {
        self.get(&["api", "v1", "fleets"], &[]).await
    }

    /// A new fleet; its provisioning key is in the answer, this once.
    pub async fn create_fleet(&self, name: &str) -> Result<FleetCreated, Error> {
        let body = NewFleet {
            name: name.to_owned(),
        };
        self.send(Method::POST, &["api", "v1", "fleets"], &[], Some(&body))
            .await
    }

    pub async fn fleet(&self, name: &str) -> Result<FleetView, Error> {
        self.get(&["api", "v1", "fleets", name], &[]).await
    }

    /// A new provisioning key for fleet `name`; the previous one stops
    /// working.
    pub async fn rotate_provisioning_key(
        &self,
        name: &str,
    ) -> Result<ProvisioningKeyCreated, Error> {
        let path = ["api", "v1", "fleets", name, "provisioning-key"];
        self.send(Method::POST, &path, &[], None::<&()>).await
    }

    // --- releases and pins ---

    /// The fleet's releases, oldest first.
    pub async fn releases(&self, fleet: &str) -> Result<Vec<ReleaseView>, Error> {
        self.get(&["api", "v1", "fleets", fleet, "releases"], &[])
            .await
    }

    pub async fn create_release(
        &self,
        fleet: &str,
        release: &NewRelease,
    ) -> Result<ReleaseView, Error> {
        let path = ["api", "v1", "fleets", fleet, "releases"];
        self.send(Method::POST, &path, &[], Some(release)).await
    }

    pub async fn release(&self, fleet: &str, version: &str) -> Result<ReleaseView, Error> {
        self.get(&["api", "v1", "fleets", fleet, "releases", version], &[])
            .await
    }

    /// Pins the fleet to release `version`, or with `None` makes it track
    /// its latest.
    pub async fn pin_fleet(&self, fleet: &str, version: Option<&str>) -> Result<FleetView, Error> {
        let body = Pin {
            release: version.map(str::to_owned),
        };
        let path = ["api", "v1", "fleets", fleet, "pin"];
        self.send(Method::PUT, &path, &[], Some(&body)).await
    }

    /// Pins the device to a release of its fleet, or with `None` makes it
    /// follow its fleet.
    pub async fn pin_device(&self, uuid: &str, version: Option<&str>) -> Result<DeviceView, Error> {
        let body = Pin {
            release: version.map(str::to_owned),
        };
        let path = ["api", "v1", "devices", uuid, "pin"];
        self.send(Method::PUT, &path, &[], Some(&body)).await
    }

    // --- devices ---

    /// One page of devices, by uuid.
    pub async fn devices(&self, q: &DeviceQuery<'_>) -> Result<Vec<DeviceView>, Error> {
        let limit = q.limit.map(|l| l.to_string());
        let query: Vec<(&str, &str)> = [
            ("fleet", q.fleet),
            ("after", q.after),
            ("limit", limit.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
        self.get(&["api", "v1", "devices"], &query).await
    }

    pub async fn device(&self, uuid: &str) -> Result<DeviceView, Error> {
        self.get(&["api", "v1", "devices", uuid], &[]).await
    }

    /// Gives the device the name people see; its uuid stays.
    pub async fn rename_device(&self, uuid: &str, name: &str) -> Result<DeviceView, Error> {
        let body = DeviceUpdate {
            name: Some(name.to_owned()),
        };
        let path = ["api", "v1", "devices", uuid];
        self.send(Method::PATCH, &path, &[], Some(&body)).await
    }

    pub async fn set_tag(&self, uuid: &str, tag: &str, value: &str) -> Result<DeviceView, Error> {
        let body = TagValue {
            value: value.to_owned(),
        };
        let path = ["api", "v1", "devices", uuid, "tags", tag];
        self.send(Method::PUT, &path, &[], Some(&body)).await
    }

    pub async fn delete_tag(&self, uuid: &str, tag: &str) -> Result<(), Error> {
        let path = ["api", "v1", "devices", uuid, "tags", tag];
        self.empty(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// Asks the device to restart `service`; it does when it next hears
    /// from the cloud.
    pub async fn restart_service(
        &self,
        uuid: &str,
        service: &str,
    ) -> Result<RestartRequested, Error> {
        let path = ["api", "v1", "devices", uuid, "services", service, "restart"];
        self.send(Method::POST, &path, &[], None::<&()>).await
    }

    /// Each service's memory and restarts over time, since `since`
    /// (seconds since the epoch; the last hour when `None`).
    pub async fn samples(&self, uuid: &str, since: Option<i64>) -> Result<ServiceSamples, Error> {
        let since = since.map(|s| s.to_string());
        let query: Vec<(&str, &str)> = since.as_deref().map(|s| ("since", s)).into_iter().collect();
        self.get(&["api", "v1", "devices", uuid, "samples"], &query)
            .await
    }

    // --- environment variables ---

    /// The fleet's variables for all services, or with `service` for that
    /// one.
    pub async fn fleet_env(
        &self,
        fleet: &str,
        service: Option<&str>,
    ) -> Result<Vec<EnvView>, Error> {
        let path = ["api", "v1", "fleets", fleet, "env"];
        self.get(&path, &scope(service)).await
    }

    pub async fn set_fleet_env(
        &self,
        fleet: &str,
        name: &str,
        value: &str,
        service: Option<&str>,
    ) -> Result<EnvView, Error> {
        let body = EnvValue {
            value: value.to_owned(),
        };
        let path = ["api", "v1", "fleets", fleet, "env", name];
        self.send(Method::PUT, &path, &scope(service), Some(&body))
            .await
    }

    pub async fn delete_fleet_env(
        &self,
        fleet: &str,
        name: &str,
        service: Option<&str>,
    ) -> Result<(), Error> {
        let path = ["api", "v1", "fleets", fleet, "env", name];
        self.empty(Method::DELETE, &path, &scope(service), None::<&()>)
            .await
    }

    /// The device's own variables (over its fleet's) for all services, or
    /// with `service` for that one.
    pub async fn device_env(
        &self,
        uuid: &str,
        service: Option<&str>,
    ) -> Result<Vec<EnvView>, Error> {
        let path = ["api", "v1", "devices", uuid, "env"];
        self.get(&path, &scope(service)).await
    }

    pub async fn set_device_env(
        &self,
        uuid: &str,
        name: &str,
        value: &str,
        service: Option<&str>,
    ) -> Result<EnvView, Error> {
        let body = EnvValue {
            value: value.to_owned(),
        };
        let path = ["api", "v1", "devices", uuid, "env", name];
        self.send(Method::PUT, &path, &scope(service), Some(&body))
            .await
    }

    pub async fn delete_device_env(
        &self,
        uuid: &str,
        name: &str,
        service: Option<&str>,
    ) -> Result<(), Error> {
        let path = ["api", "v1", "devices", uuid, "env", name];
        self.empty(Method::DELETE, &path, &scope(service), None::<&()>)
            .await
    }

    // --- hardware maps ---

    /// The fleet's hardware map (TOML), if it has one.
    pub async fn fleet_hardware_map(&self, fleet: &str) -> Result<Option<String>, Error> {
        let path = ["api", "v1", "fleets", fleet, "hardware-map"];
        Ok(self.get::<HardwareMapView>(&path, &[]).await?.map)
    }

    /// Gives every device of the fleet without a map of its own `map`
    /// (TOML, as a device's `hardware-map.toml`).
    pub async fn set_fleet_hardware_map(&self, fleet: &str, map: &str) -> Result<(), Error> {
        let body = NewHardwareMap {
            map: map.to_owned(),
        };
        let path = ["api", "v1", "fleets", fleet, "hardware-map"];
        self.send::<HardwareMapView, _>(Method::PUT, &path, &[], Some(&body))
            .await
            .map(drop)
    }

    pub async fn delete_fleet_hardware_map(&self, fleet: &str) -> Result<(), Error> {
        let path = ["api", "v1", "fleets", fleet, "hardware-map"];
        self.empty(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// The device's own hardware map, if it has one.
    pub async fn device_hardware_map(&self, uuid: &str) -> Result<Option<String>, Error> {
        let path = ["api", "v1", "devices", uuid, "hardware-map"];
        Ok(self.get::<HardwareMapView>(&path, &[]).await?.map)
    }

    /// Gives the device its own map, over its fleet's.
    pub async fn set_device_hardware_map(&self, uuid: &str, map: &str) -> Result<(), Error> {
        let body = NewHardwareMap {
            map: map.to_owned(),
        };
        let path = ["api", "v1", "devices", uuid, "hardware-map"];
        self.send::<HardwareMapView, _>(Method::PUT, &path, &[], Some(&body))
            .await
            .map(drop)
    }

    pub async fn delete_device_hardware_map(&self, uuid: &str) -> Result<(), Error> {
        let path = ["api", "v1", "devices", uuid, "hardware-map"];
        self.empty(Method::DELETE, &path, &[], None::<&()>).await
    }

    // --- logs ---

    /// Log lines of the device, oldest first: the newest ones, or with
    /// `after` the first ones after that id.
    pub async fn logs(&self, uuid: &str, q: &LogQuery<'_>) -> Result<Vec<StoredLogLine>, Error> {
        let after = q.after.map(|a| a.to_string());
        let limit = q.limit.map(|l| l.to_string());
        let query: Vec<(&str, &str)> = [
            ("service", q.service),
            ("after", after.as_deref()),
            ("limit", limit.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
        let path = ["api", "v1", "devices", uuid, "logs"];
        self.get(&path, &query).await
    }

    /// Follows the device's log from the line after id `after` (0 for its
    /// start; the last id [`Client::logs`] gave to go on from there).
    pub fn follow_logs(&self, uuid: &str, service: Option<&str>, after: i64) -> LogFollower {
        LogFollower {
            client: self.clone(),
            uuid: uuid.to_owned(),
            service: service.map(str::to_owned),
            after,
            interval: FOLLOW_INTERVAL,
        }
    }

    // --- requests ---

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

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, Error> {
        self.send(Method::GET, segments, query, None::<&()>).await
    }

    /// One request whose answer is a `T`.
    async fn send<T: DeserializeOwned, B: Serialize>(
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
    async fn empty<B: Serialize>(
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

fn scope(service: Option<&str>) -> Vec<(&str, &str)> {
    service.map(|s| ("service", s)).into_iter().collect()
}

/// A device's log as it grows: each [`LogFollower::next`] gives the lines
/// that came since the last, waiting for some to come.
#[derive(Debug)]
pub struct LogFollower {
    client: Client,
    uuid: String,
    service: Option<String>,
    after: i64,
    interval: Duration,
}

impl LogFollower {
    /// Asks for new lines every `interval` while there are none (default
    /// [`FOLLOW_INTERVAL`]).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The id of the last line given.
    pub fn last_id(&self) -> i64 {
        self.after
    }

    /// The next lines, oldest first: at least one, at most
    /// [`MAX_LOG_READ`]; waits until there are some.
    pub async fn next(&mut self) -> Result<Vec<StoredLogLine>, Error> {
        loop {
            let q = LogQuery {
                service: self.service.as_deref(),
                after: Some(self.after),
                limit: Some(MAX_LOG_READ),
            };
            let lines = self.client.logs(&self.uuid, &q).await?;
            if let Some(last) = lines.last() {
                self.after = last.id;
                return Ok(lines);
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}
