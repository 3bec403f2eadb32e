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
//!                               and the one given up on (see `health`)
//! <data-dir>/device/logs/       log lines not yet delivered (see `outbox`)
//! ```
//!
//! Later starts use the stored key and never need the provisioning key. The
//! state is what the device runs when it starts without the cloud; its
//! images are already in the blob store.

pub mod follow;
pub mod health;
pub mod outbox;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kelp_core::api::{CurrentState, Register, RegisteredDevice, ServiceReport, TargetState};
use kelp_core::fsutil;
use serde::{Deserialize, Serialize};

use crate::local::TargetService;
use crate::service::{DEFAULT_STOP_GRACE, ServiceSpec};

/// Largest config file read.
const MAX_CONFIG: u64 = 64 << 10;
/// Largest answer read from the cloud: a target of 64 services with many
/// variables is well below it.
const MAX_ANSWER: usize = 16 << 20;
/// Longest a device key or uuid file may be.
const MAX_SMALL_FILE: u64 = 4096;
/// How long the cloud may hold a request for the target (its most).
pub const POLL_WAIT: Duration = Duration::from_secs(60);
/// Time a request may take beyond what the cloud holds it.
const REQUEST_SLACK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read config file `{path}`: {error}")]
    ReadConfig {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file `{path}` is not valid: {message}")]
    Config { path: PathBuf, message: String },
    #[error("`{path}`: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("`{path}` is damaged: {message}")]
    Damaged { path: PathBuf, message: String },
    #[error(
        "this device is not registered yet, and the config file gives no `provisioning-key` to register it with"
    )]
    NoProvisioningKey,
    #[error("cloud {url}: {message}")]
    Cloud { url: String, message: String },
    /// The cloud refused what was sent as wrong (a 4xx other than 401,
    /// 408 and 429): sending it again would be refused again.
    #[error("cloud {url} refused it: {message}")]
    Rejected { url: String, message: String },
    #[error(
        "the cloud registered this device into fleet `{got}`, but the config file says `{want}`"
    )]
    WrongFleet { want: String, got: String },
    #[error(
        "the cloud refused the device key (401): the device was re-registered elsewhere, or its key revoked"
    )]
    KeyRefused,
}

/// The config file of `kelpd --config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    cloud: String,
    provisioning_key: Option<String>,
    fleet: Option<String>,
    device_name: Option<String>,
    #[serde(default)]
    trusted_keys: Vec<PathBuf>,
    hardware_map: Option<PathBuf>,
    hardware: Option<String>,
    data_dir: Option<PathBuf>,
    health_window: Option<String>,
    log_buffer: Option<kelp_core::ByteSize>,
}

/// A device's config, its paths made relative to the config file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The cloud's base URL, without a trailing `/`.
    pub cloud: String,
    pub provisioning_key: Option<String>,
    pub fleet: Option<String>,
    pub device_name: Option<String>,
    pub trusted_keys: Vec<PathBuf>,
    pub hardware_map: Option<PathBuf>,
    pub hardware: Option<kelp_hostcalls::BackendKind>,
    pub data_dir: Option<PathBuf>,
    /// How long a new target must run without a service failing.
    pub health_window: Duration,
    /// Bytes of log lines kept on disk for the cloud.
    pub log_buffer: u64,
}

/// Log lines kept on disk for the cloud unless the config file says.
pub const DEFAULT_LOG_BUFFER: u64 = 8 << 20;

impl Config {
    /// The cloud's registry as a pulled image's reference names it:
    /// `http(s)://host[:port]`.
    pub fn registry(&self) -> Option<String> {
        let url = reqwest::Url::parse(&self.cloud).ok()?;
        Some(url.origin().ascii_serialization())
    }

    pub fn load(path: &Path) -> Result<Config, AgentError> {
        let read = |error| AgentError::ReadConfig {
            path: path.to_owned(),
            error,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > MAX_CONFIG {
            return Err(AgentError::Config {
                path: path.to_owned(),
                message: format!("it is larger than {MAX_CONFIG} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, AgentError> {
        let invalid = |message: String| AgentError::Config {
            path: path.to_owned(),
            message,
        };
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        let cloud = file.cloud.trim_end_matches('/').to_owned();
        match reqwest::Url::parse(&cloud) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => {
                return Err(invalid(format!(
                    "`cloud = {cloud:?}` is not an http or https URL"
                )));
            }
            Err(e) => return Err(invalid(format!("`cloud = {cloud:?}` is not a URL: {e}"))),
        }
        let hardware = file
            .hardware
            .map(|h| {
                h.parse()
                    .map_err(|e: String| invalid(format!("`hardware`: {e}")))
            })
            .transpose()?;
        let health_window = match &file.health_window {
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| invalid(format!("`health-window = {text:?}`: {e}")))?,
            None => health::DEFAULT_HEALTH_WINDOW,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Config {
            cloud,
            provisioning_key: file.provisioning_key,
            fleet: file.fleet,
            device_name: file.device_name,
            trusted_keys: file.trusted_keys.iter().map(|k| base.join(k)).collect(),
            hardware_map: file.hardware_map.map(|m| base.join(m)),
            hardware,
            data_dir: file.data_dir.map(|d| base.join(d)),
            health_window,
            log_buffer: file.log_buffer.map_or(DEFAULT_LOG_BUFFER, |b| b.bytes()),
        })
    }
}

/// Who this device is to the cloud.
#[derive(Clone)]
pub struct Identity {
    pub uuid: String,
    pub key: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("uuid", &self.uuid)
            .finish_non_exhaustive()
    }
}

/// The files of a device's agent under its data directory.
pub struct Store {
    dir: PathBuf,
}

/// The last target applied, as kept on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedTarget {
    pub etag: String,
    pub target: TargetState,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, AgentError> {
        let dir = data_dir.join("device");
        std::fs::create_dir_all(&dir).map_err(|error| AgentError::Io {
            path: dir.clone(),
            error,
        })?;
        Ok(Store { dir })
    }

    /// This device's uuid, made up and kept on first use.
    pub fn uuid(&self) -> Result<String, AgentError> {
        let path = self.dir.join("uuid");
        if let Some(text) = read_small(&path)? {
            let uuid = text.trim();
            if uuid.is_empty()
                || uuid.len() > 64
                || !uuid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(AgentError::Damaged {
                    path,
                    message: "it does not hold a device uuid".to_owned(),
                });
            }
            return Ok(uuid.to_owned());
        }
        let uuid = uuid::Uuid::new_v4().to_string();
        fsutil::write_atomic(&path, format!("{uuid}\n").as_bytes())
            .map_err(|error| AgentError::Io { path, error })?;
        Ok(uuid)
    }

    /// The device key, if the device has registered.
    pub fn key(&self) -> Result<Option<String>, AgentError> {
        let path = self.dir.join("key");
        Ok(read_small(&path)?
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty()))
    }

    pub fn save_key(&self, key: &str) -> Result<(), AgentError> {
        let path = self.dir.join("key");
        fsutil::write_atomic_private(&path, format!("{key}\n").as_bytes())
            .map_err(|error| AgentError::Io { path, error })
    }

    /// What the device last knew of its targets.
    pub fn rollout(&self) -> Result<health::Rollout, AgentError> {
        let path = self.dir.join("state.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(health::Rollout::default());
            }
            Err(error) => return Err(AgentError::Io { path, error }),
        };
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Damaged {
            path,
            message: e.to_string(),
        })
    }

    pub fn save_rollout(&self, rollout: &health::Rollout) -> Result<(), AgentError> {
        let path = self.dir.join("state.json");
        let bytes = serde_json::to_vec_pretty(rollout).map_err(|e| AgentError::Io {
            path: path.clone(),
            error: std::io::Error::other(e),
        })?;
        fsutil::write_atomic(&path, &bytes).map_err(|error| AgentError::Io { path, error })
    }

    /// Where log lines wait for the cloud.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

fn read_small(path: &Path) -> Result<Option<String>, AgentError> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(AgentError::Io {
                path: path.to_owned(),
                error,
            });
        }
    };
    let mut text = String::new();
    file.take(MAX_SMALL_FILE)
        .read_to_string(&mut text)
        .map_err(|error| AgentError::Io {
            path: path.to_owned(),
            error,
        })?;
    Ok(Some(text))
}

/// The fleet API as a device calls it.
pub struct Cloud {
    http: reqwest::Client,
    base: String,
}

/// What asking for the target gave.
pub enum Poll {
    /// The target is the one whose ETag was given.
    Unchanged,
    Changed(SavedTarget),
}

impl Cloud {
    pub fn new(base: &str) -> Result<Cloud, AgentError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(POLL_WAIT + REQUEST_SLACK)
            .user_agent(concat!("kelpd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AgentError::Cloud {
                url: base.to_owned(),
                message: format!("cannot make an HTTP client: {e}"),
            })?;
        Ok(Cloud {
            http,
            base: base.to_owned(),
        })
    }

    fn err(&self, path: &str, message: impl std::fmt::Display) -> AgentError {
        AgentError::Cloud {
            url: format!("{}{path}", self.base),
            message: message.to_string(),
        }
    }

    /// Registers `uuid` with the provisioning key; returns the device key.
    pub async fn register(
        &self,
        provisioning_key: &str,
        uuid: &str,
        name: Option<&str>,
    ) -> Result<RegisteredDevice, AgentError> {
        let path = "/device/v1/register";
        let body = Register {
            uuid: uuid.to_owned(),
            name: name.map(str::to_owned),
            arch: std::env::consts::ARCH.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(provisioning_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).map_err(|e| self.err(path, e))?)
            .send()
            .await
            .map_err(|e| self.err(path, e))?;
        let status = res.status();
        let bytes = self.read(path, res).await?;
        if !status.is_success() {
            return Err(self.err(path, refusal(status, &bytes)));
        }
        let registered: RegisteredDevice = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(path, format!("not a registration: {e}")))?;
        if registered.uuid != uuid || registered.device_key.is_empty() {
            return Err(self.err(path, "the answer is for another device"));
        }
        Ok(registered)
    }

    /// The device's target: held by the cloud up to `wait` while it is the
    /// one `etag` names.
    pub async fn target(
        &self,
        key: &str,
        etag: Option<&str>,
        wait: Duration,
    ) -> Result<Poll, AgentError> {
        let path = "/device/v1/state";
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(etag) = etag {
            req = req
                .header(reqwest::header::IF_NONE_MATCH, etag)
                .query(&[("wait", wait.as_secs())]);
        }
        let res = req.send().await.map_err(|e| self.err(path, e))?;
        let status = res.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Poll::Unchanged);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(AgentError::KeyRefused);
        }
        let etag = res
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = self.read(path, res).await?;
        if !status.is_success() {
            return Err(self.err(path, refusal(status, &bytes)));
        }
        let target: TargetState = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(path, format!("not a target state: {e}")))?;
        let etag = etag.ok_or_else(|| self.err(path, "the answer has no ETag"))?;
        Ok(Poll::Changed(SavedTarget { etag, target }))
    }

    /// Tells the cloud what changed on the device.
    pub async fn report(&self, key: &str, state: &CurrentState) -> Result<(), AgentError> {
        self.send(reqwest::Method::PATCH, "/device/v1/state", key, state)
            .await
    }

    /// Delivers a batch of log lines.
    pub async fn send_logs(
        &self,
        key: &str,
        lines: &[kelp_core::api::LogLine],
    ) -> Result<(), AgentError> {
        #[derive(Serialize)]
        struct Batch<'a> {
            lines: &'a [kelp_core::api::LogLine],
        }
        self.send(
            reqwest::Method::POST,
            "/device/v1/logs",
            key,
            &Batch { lines },
        )
        .await
    }

    /// Sends `body` as JSON with the device key, for an answer with none.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: &impl Serialize,
    ) -> Result<(), AgentError> {
        let res = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).map_err(|e| self.err(path, e))?)
            .send()
            .await
            .map_err(|e| self.err(path, e))?;
        let status = res.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(AgentError::KeyRefused);
        }
        let bytes = self.read(path, res).await?;
        let retry = matches!(
            status,
            reqwest::StatusCode::REQUEST_TIMEOUT | reqwest::StatusCode::TOO_MANY_REQUESTS
        );
        if status.is_client_error() && !retry {
            return Err(AgentError::Rejected {
                url: format!("{}{path}", self.base),
                message: refusal(status, &bytes),
            });
        }
        if !status.is_success() {
            return Err(self.err(path, refusal(status, &bytes)));
        }
        Ok(())
    }

    /// The body of an answer, refusing one larger than [`MAX_ANSWER`].
    async fn read(&self, path: &str, mut res: reqwest::Response) -> Result<Vec<u8>, AgentError> {
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| self.err(path, e))? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(self.err(path, format!("answer larger than {MAX_ANSWER} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A refused request's status and the cloud's reason, cut short.
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let reason = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    let reason: String = reason.trim().chars().take(300).collect();
    format!("{status}: {reason}")
}

/// The services of a target from the cloud, as the supervisor runs them.
/// Each service's `/data` is `data_root/<name>`. A service whose image is
/// not pinned by digest is returned apart, with why.
pub fn services(
    target: &TargetState,
    data_root: &Path,
) -> (Vec<TargetService>, BTreeMap<String, String>) {
    let mut services = Vec::new();
    let mut refused = BTreeMap::new();
    for (name, s) in &target.services {
        // Refused before its image is fetched; the supervisor would refuse
        // it after.
        if !kelp_core::valid_service_name(name) {
            refused.insert(name.clone(), "not a valid service name".to_owned());
            continue;
        }
        let image = match s.image.parse() {
            Ok(image) => image,
            Err(e) => {
                refused.insert(name.clone(), format!("{e}"));
                continue;
            }
        };
        services.push(TargetService {
            spec: ServiceSpec {
                name: name.clone(),
                module: PathBuf::new(),
                // The image names the version: a new image is a new version.
                version: Some(s.image.clone()),
                args: Vec::new(),
                env: s.env.clone(),
                restart: s.restart,
                memory_limit: s.memory,
                data_dir: Some(data_root.join(name)),
                stop_grace: DEFAULT_STOP_GRACE,
                grants: None,
                update: s.update_strategy,
            },
            image: Some(image),
            signer: s.signer.clone(),
        });
    }
    (services, refused)
}

/// What to tell the cloud about `services` given what it was told last:
/// only what changed, with `null` for a service no longer run.
pub fn changes(
    release: Option<&str>,
    services: &BTreeMap<String, ServiceReport>,
    told: &BTreeMap<String, ServiceReport>,
) -> CurrentState {
    let mut changed = BTreeMap::new();
    for (name, now) in services {
        let same = told.get(name).is_some_and(|t| {
            t.state == now.state
                && t.memory == now.memory
                && t.restarts == now.restarts
                && t.last_exit == now.last_exit
        });
        if !same {
            changed.insert(name.clone(), Some(now.clone()));
        }
    }
    for name in told.keys() {
        if !services.contains_key(name) {
            changed.insert(name.clone(), None);
        }
    }
    CurrentState {
        release: release.map(str::to_owned),
        services: changed,
        update: None,
    }
}

/// How long to wait before trying the cloud again after `failures` failed
/// tries in a row: doubling from one second to a minute, each wait a random
/// part of it, so a fleet that lost its cloud does not come back all at
/// once.
pub fn retry_after(failures: u32) -> Duration {
    let ceiling = Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60));
    let mut bytes = [0u8; 4];
    let fraction = match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 1.0,
    };
    ceiling.mul_f64(0.5 + fraction / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelp_core::ServiceState;

    #[test]
    fn reads_a_config_relative_to_its_file() {
        let config = Config::parse(
            r#"
            cloud = "http://127.0.0.1:8080/"
            provisioning-key = "kelp_pk_00"
            trusted-keys = ["keys/a.pub", "/etc/kelp/b.pub"]
            hardware = "sim"
            data-dir = "var"
            "#,
            Path::new("/etc/kelp/device.toml"),
        )
        .unwrap();
        assert_eq!(config.cloud, "http://127.0.0.1:8080");
        assert_eq!(config.registry().as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(
            config.trusted_keys,
            [
                PathBuf::from("/etc/kelp/keys/a.pub"),
                PathBuf::from("/etc/kelp/b.pub")
            ]
        );
        assert_eq!(config.hardware, Some(kelp_hostcalls::BackendKind::Sim));
        assert_eq!(config.data_dir, Some(PathBuf::from("/etc/kelp/var")));
    }

    #[test]
    fn a_bad_config_names_what_is_wrong() {
        let err = |text: &str| {
            Config::parse(text, Path::new("d.toml"))
                .unwrap_err()
                .to_string()
        };
        let e = err("cloud = \"ftp://x\"\n");
        assert!(e.contains("d.toml") && e.contains("not an http"), "{e}");
        let e = err("cloud = \"http://x\"\nprovisioning_key = \"k\"\n");
        assert!(e.contains("provisioning_key"), "{e}");
        let e = err("cloud = \"http://x\"\nhardware = \"gpio\"\n");
        assert!(e.contains("`hardware`") && e.contains("gpio"), "{e}");
        let e = err("provisioning-key = \"k\"\n");
        assert!(e.contains("cloud"), "{e}");
    }

    #[test]
    fn the_uuid_is_made_once_and_the_key_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let uuid = store.uuid().unwrap();
        assert_eq!(Store::open(dir.path()).unwrap().uuid().unwrap(), uuid);
        assert_eq!(store.key().unwrap(), None);
        store.save_key("kelp_dk_00").unwrap();
        assert_eq!(store.key().unwrap().as_deref(), Some("kelp_dk_00"));
        let mode = std::fs::metadata(dir.path().join("device/key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("device/uuid"), "../../etc\n").unwrap();
        let e = store.uuid().unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }

    #[test]
    fn only_changes_are_reported() {
        let report = |state| ServiceReport {
            state,
            memory: Some(1),
            restarts: 0,
            last_exit: None,
        };
        let told = BTreeMap::from([
            ("a".to_owned(), report(ServiceState::Running)),
            ("gone".to_owned(), report(ServiceState::Running)),
        ]);
        let now = BTreeMap::from([
            ("a".to_owned(), report(ServiceState::Running)),
            ("b".to_owned(), report(ServiceState::Starting)),
        ]);
        let state = changes(Some("r1"), &now, &told);
        assert_eq!(state.release.as_deref(), Some("r1"));
        assert_eq!(state.services.len(), 2);
        assert!(state.services["gone"].is_none());
        assert_eq!(
            state.services["b"].as_ref().unwrap().state,
            ServiceState::Starting
        );
    }

    #[test]
    fn a_target_becomes_service_specs_and_a_tag_is_refused() {
        let digest = kelp_registry::oci::digest_of(b"manifest");
        let text = format!(
            r#"{{"release":{{"id":"r1","version":"1.0"}},"services":{{
            "web":{{"image":"127.0.0.1:1/kelp/web@{digest}","env":{{"A":"1"}},"restart":"never",
              "memory":1048576,"grants":{{}},"update_strategy":"download-then-kill"}},
            "tagged":{{"image":"127.0.0.1:1/kelp/web:v1","env":{{}},"restart":"always",
              "memory":1048576,"grants":{{}},"update_strategy":"download-then-kill"}}}}}}"#
        );
        let target: TargetState = serde_json::from_str(&text).unwrap();
        let (services, refused) = services(&target, Path::new("/d"));
        assert_eq!(services.len(), 1);
        let web = &services[0];
        assert_eq!(web.spec.env["A"], "1");
        assert_eq!(web.spec.memory_limit, kelp_core::ByteSize::mib(1));
        assert_eq!(web.spec.data_dir.as_deref(), Some(Path::new("/d/web")));
        assert_eq!(web.image.as_ref().unwrap().digest(), digest);
        assert!(
            refused["tagged"].contains("pin it by digest"),
            "{refused:?}"
        );
    }

    #[test]
    fn retries_back_off_with_jitter_up_to_a_minute() {
        for failures in [0, 1, 5, 30] {
            let wait = retry_after(failures);
            let ceiling = Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60));
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{failures}: {wait:?}"
            );
        }
    }
}
