//! The fleet API's request and response bodies, and the checks every
//! client-supplied name and value passes before it is stored.

use std::collections::BTreeMap;

use kelp_core::{
    ByteSize, DEFAULT_MEMORY, Grants, MAX_I2C_ADDRESS, RestartPolicy, ServiceState, valid_label,
};
use kelp_registry::{ManifestRef, Reference};
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// Most services in one release: far more than one device runs, few enough
/// that a target state stays small to send and to hash.
pub const MAX_SERVICES: usize = 64;
/// Most variables one service's `env` may set in a release.
pub const MAX_ENV_VARS: usize = 256;
/// Longest variable name.
pub const MAX_ENV_NAME: usize = 128;
/// Longest variable value: room for a certificate, not for a file system.
pub const MAX_ENV_VALUE: usize = 16 << 10;
/// Longest free-form name (device, token) and version string.
pub const MAX_TEXT: usize = 64;
/// Most log lines in one upload. With the body limit this bounds the work
/// one request makes the database do.
pub const MAX_LOG_BATCH: usize = 1000;
/// Longest log line, in bytes; a device splits or cuts longer ones.
pub const MAX_LOG_LINE: usize = 4096;
/// Most log lines one read returns, and how many it returns by default.
pub const MAX_LOG_READ: i64 = 1000;
pub const DEFAULT_LOG_READ: i64 = 100;
/// Largest memory limit: a 32-bit linear memory cannot grow past 4 GiB.
pub const MAX_MEMORY: ByteSize = ByteSize::mib(4096);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
}

#[derive(Serialize)]
pub struct TokenCreated {
    pub id: String,
    pub name: String,
    /// The token itself, shown this once.
    pub token: String,
    pub created_at: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFleet {
    pub name: String,
}

#[derive(Serialize)]
pub struct FleetView {
    pub name: String,
    pub created_at: i64,
    /// The release the fleet is pinned to, or none when it tracks its latest.
    pub pinned_release: Option<String>,
    pub latest_release: Option<String>,
}

#[derive(Serialize)]
pub struct FleetCreated {
    #[serde(flatten)]
    pub fleet: FleetView,
    /// Shown this once.
    pub provisioning_key: String,
}

#[derive(Serialize)]
pub struct ProvisioningKeyCreated {
    pub fleet: String,
    /// Shown this once; the previous key no longer works.
    pub provisioning_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub uuid: String,
    #[serde(default)]
    pub name: Option<String>,
    pub arch: String,
    pub agent_version: String,
}

#[derive(Serialize)]
pub struct RegisteredDevice {
    pub uuid: String,
    pub fleet: String,
    /// Shown this once; a key from an earlier registration no longer works.
    pub device_key: String,
}

#[derive(Serialize)]
pub struct DeviceView {
    pub uuid: String,
    pub name: String,
    pub fleet: String,
    pub arch: String,
    pub agent_version: String,
    /// Whether the device asked for its target within [`super::ONLINE_WINDOW`].
    pub online: bool,
    pub last_seen: i64,
    pub created_at: i64,
    /// The release this device is pinned to, or none when it follows its
    /// fleet.
    pub pinned_release: Option<String>,
    /// The release it should be running.
    pub target_release: Option<String>,
    /// The release it last said it runs.
    pub current_release: Option<String>,
    /// Each service as the device last reported it.
    pub services: BTreeMap<String, ServiceStatusView>,
}

#[derive(Serialize)]
pub struct ServiceStatusView {
    pub state: String,
    /// Bytes of memory in use, when the device said.
    pub memory: Option<i64>,
    pub updated_at: i64,
}

/// `PATCH /device/v1/state`: what changed on the device since it last
/// said. Absent fields keep their value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrentState {
    /// Id of the release the device now runs.
    #[serde(default)]
    pub release: Option<String>,
    /// Services whose state changed; null for one it no longer runs.
    #[serde(default)]
    pub services: BTreeMap<String, Option<ServiceReport>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceReport {
    pub state: ServiceState,
    /// Bytes of memory in use.
    #[serde(default)]
    pub memory: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
}

/// `POST /device/v1/logs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogBatch {
    pub lines: Vec<LogLine>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// When the device wrote it, in milliseconds since the Unix epoch.
    pub time: i64,
    pub service: String,
    #[serde(default)]
    pub stream: LogStream,
    pub line: String,
}

/// How a device replaces a running service with its new version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    /// Fetch and load the new version, then stop the old one (the shortest
    /// gap; both are in memory for a moment).
    #[default]
    DownloadThenKill,
    /// Stop the old version first (for a device short of memory).
    KillThenDownload,
}

/// One service of a release, as created and as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `REGISTRY/REPO@sha256:…`: pinned, so a device runs exactly this file.
    pub image: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    #[serde(default)]
    pub grants: Grants,
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
    /// Key id (24 hex digits) of the publisher key expected to have signed
    /// the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

fn default_memory() -> ByteSize {
    DEFAULT_MEMORY
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRelease {
    pub version: String,
    pub services: BTreeMap<String, ServiceSpec>,
}

#[derive(Serialize)]
pub struct ReleaseView {
    pub id: String,
    pub fleet: String,
    pub version: String,
    pub created_at: i64,
    pub services: BTreeMap<String, ServiceSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// A release version of the fleet, or null to track the latest.
    pub release: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvValue {
    pub value: String,
}

#[derive(Serialize)]
pub struct EnvView {
    pub name: String,
    pub value: String,
}

/// What a device should run.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct TargetState {
    pub release: Option<ReleaseRef>,
    pub services: BTreeMap<String, TargetService>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct ReleaseRef {
    pub id: String,
    pub version: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct TargetService {
    pub image: String,
    /// The release's env with fleet and device variables applied.
    pub env: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    pub memory: ByteSize,
    pub grants: Grants,
    pub update_strategy: UpdateStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// A fleet name: a DNS label (lowercase letters, digits, `-` inside), since
/// it ends up in URLs and host names.
pub fn check_fleet_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "fleet name `{}` is not 1 to 63 lowercase letters, digits and inner `-`",
                shown(name)
            ),
        ))
    }
}

/// A device uuid: what the device chose, 1 to 64 letters, digits, `-`, `_`.
pub fn check_uuid(field: &str, uuid: &str) -> Result<(), ApiError> {
    let ok = !uuid.is_empty()
        && uuid.len() <= 64
        && uuid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "device uuid `{}` is not 1 to 64 letters, digits, `-` and `_`",
                shown(uuid)
            ),
        ))
    }
}

/// An id the server made (a token's, a release's): a UUID, so anything
/// else names nothing and is refused before it reaches the database.
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!("`{}` is not an id this server made", shown(id)),
        ))
    }
}

/// Free text shown to people (a device or token name): 1 to [`MAX_TEXT`]
/// characters, none of them control characters.
pub fn check_text(field: &str, text: &str) -> Result<(), ApiError> {
    let n = text.chars().count();
    if n == 0 || n > MAX_TEXT || text.chars().any(char::is_control) {
        return Err(ApiError::field(
            field,
            format!("`{field}` must be 1 to {MAX_TEXT} characters with no control characters"),
        ));
    }
    Ok(())
}

/// A word that appears in URLs (a version, an architecture): 1 to
/// [`MAX_TEXT`] of letters, digits, `.`, `_`, `+`, `-`.
pub fn check_word(field: &str, word: &str) -> Result<(), ApiError> {
    let ok = !word.is_empty()
        && word.len() <= MAX_TEXT
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "`{}` is not 1 to {MAX_TEXT} letters, digits, `.`, `_`, `+` and `-`",
                shown(word)
            ),
        ))
    }
}

/// A service name, as a manifest spells it: lowercase letters, digits, `-`
/// and `_`, at most 63.
pub fn check_service_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "service name `{}` is not 1 to 63 lowercase letters, digits, `-` and `_`",
                shown(name)
            ),
        ))
    }
}

/// An environment variable name as POSIX shells accept it.
pub fn check_env_name(field: &str, name: &str) -> Result<(), ApiError> {
    let mut bytes = name.bytes();
    let ok = name.len() <= MAX_ENV_NAME
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "variable name `{}` is not a letter or `_` then letters, digits and `_` \
                 (at most {MAX_ENV_NAME})",
                shown(name)
            ),
        ))
    }
}

pub fn check_env_value(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_ENV_VALUE || value.contains('\0') {
        return Err(ApiError::field(
            field,
            format!("a variable's value must be at most {MAX_ENV_VALUE} bytes, without NUL"),
        ));
    }
    Ok(())
}

/// The first 64 characters of a client's string, to quote it in an error
/// without echoing a megabyte back.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

impl NewRelease {
    /// Checks every field, naming the first at fault.
    pub fn check(&self) -> Result<(), ApiError> {
        check_word("version", &self.version)?;
        if self.services.len() > MAX_SERVICES {
            return Err(ApiError::field(
                "services",
                format!("a release has at most {MAX_SERVICES} services"),
            ));
        }
        for (name, spec) in &self.services {
            let at = format!("services.{}", shown(name));
            check_service_name(&at, name)?;
            spec.check(&at)?;
        }
        Ok(())
    }
}

impl ServiceSpec {
    fn check(&self, at: &str) -> Result<(), ApiError> {
        let field = format!("{at}.image");
        let reference: Reference = self.image.parse().map_err(|_| {
            ApiError::field(
                &field,
                format!(
                    "image `{}` is not REGISTRY/REPOSITORY@sha256:DIGEST",
                    shown(&self.image)
                ),
            )
        })?;
        if !matches!(reference.reference, ManifestRef::Digest(_)) {
            return Err(ApiError::field(
                &field,
                format!(
                    "image `{}` names a tag; pin it by digest (REPOSITORY@sha256:…) so every \
                     device runs the same file",
                    shown(&self.image)
                ),
            ));
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(ApiError::field(
                format!("{at}.env"),
                format!("a service sets at most {MAX_ENV_VARS} variables"),
            ));
        }
        for (name, value) in &self.env {
            let field = format!("{at}.env.{}", shown(name));
            check_env_name(&field, name)?;
            check_env_value(&field, value)?;
        }
        if self.memory.bytes() == 0 || self.memory > MAX_MEMORY {
            return Err(ApiError::field(
                format!("{at}.memory"),
                format!("memory must be more than 0 and at most {MAX_MEMORY}"),
            ));
        }
        self.check_grants(&format!("{at}.grants"))?;
        if let Some(signer) = &self.signer {
            let ok = signer.len() == 24
                && signer
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(ApiError::field(
                    format!("{at}.signer"),
                    format!(
                        "signer `{}` is not a key id (24 lowercase hex digits)",
                        shown(signer)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_grants(&self, at: &str) -> Result<(), ApiError> {
        let g = &self.grants;
        for (kind, label) in g
            .gpio
            .keys()
            .map(|l| ("gpio", l))
            .chain(g.i2c.keys().map(|l| ("i2c", l)))
            .chain(g.network.keys().map(|l| ("network", l)))
        {
            if !valid_label(label) {
                return Err(ApiError::field(
                    format!("{at}.{kind}"),
                    format!(
                        "label `{}` is not 1 to 63 letters, digits, `-` and `_`",
                        shown(label)
                    ),
                ));
            }
        }
        for (label, grant) in &g.gpio {
            if grant.modes.is_empty() {
                return Err(ApiError::field(
                    format!("{at}.gpio.{label}.modes"),
                    "a GPIO grant names at least one mode",
                ));
            }
        }
        for (label, grant) in &g.i2c {
            if grant.addresses.is_empty() {
                return Err(ApiError::field(
                    format!("{at}.i2c.{label}.addresses"),
                    "an I2C grant names at least one address",
                ));
            }
            if let Some(a) = grant.addresses.iter().find(|&&a| a > MAX_I2C_ADDRESS) {
                return Err(ApiError::field(
                    format!("{at}.i2c.{label}.addresses"),
                    format!("I2C address {a:#x} is above {MAX_I2C_ADDRESS:#x}"),
                ));
            }
        }
        Ok(())
    }
}
