//! The fleet API's request and response bodies, shared by the cloud that
//! serves them, the device agent and the CLI that send and read them.
//!
//! Requests refuse unknown fields, so a typo is an error rather than a
//! silently dropped setting; the cloud checks every value on top of what
//! the types say. Times are Unix seconds unless a name says otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ByteSize, DEFAULT_MEMORY, Grants, RestartPolicy, ServiceState};

/// Most log lines in one upload. With the body limit this bounds the work
/// one request makes the database do.
pub const MAX_LOG_BATCH: usize = 1000;
/// Longest log line, in bytes; a device splits or cuts longer ones.
pub const MAX_LOG_LINE: usize = 4096;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: String,
    pub name: String,
    /// The token itself, shown this once.
    pub token: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFleet {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetView {
    pub name: String,
    pub created_at: i64,
    /// The release the fleet is pinned to, or none when it tracks its latest.
    pub pinned_release: Option<String>,
    pub latest_release: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetCreated {
    #[serde(flatten)]
    pub fleet: FleetView,
    /// Shown this once.
    pub provisioning_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProvisioningKeyCreated {
    pub fleet: String,
    /// Shown this once; the previous key no longer works.
    pub provisioning_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub uuid: String,
    #[serde(default)]
    pub name: Option<String>,
    pub arch: String,
    pub agent_version: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisteredDevice {
    pub uuid: String,
    pub fleet: String,
    /// Shown this once; a key from an earlier registration no longer works.
    pub device_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceView {
    pub uuid: String,
    pub name: String,
    pub fleet: String,
    pub arch: String,
    pub agent_version: String,
    /// Whether the device asked for its target within two minutes.
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
    /// How the device's last update went, once it has said.
    #[serde(default)]
    pub update: Option<UpdateView>,
    /// The user's labels on the device.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The outcome of a device's last update, as the user API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateView {
    pub state: UpdateState,
    /// The version of the release the outcome is about.
    pub release: Option<String>,
    /// Why, for `rolled-back` and `failed`.
    pub reason: Option<String>,
    pub at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStatusView {
    pub state: String,
    /// Bytes of memory in use, when the device said.
    pub memory: Option<i64>,
    /// Times the device started it again after it ended.
    #[serde(default)]
    pub restarts: i64,
    /// Why its last run ended, when one has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    pub updated_at: i64,
}

/// One point of a service's history: what the device said at `at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSample {
    /// Seconds since the Unix epoch, by the cloud's clock.
    pub at: i64,
    /// Bytes of memory in use.
    pub memory: Option<i64>,
    pub restarts: i64,
}

/// `GET /api/v1/devices/{uuid}/samples`: each service's history, oldest
/// first.
pub type ServiceSamples = BTreeMap<String, Vec<ServiceSample>>;

/// `POST /api/v1/devices/{uuid}/services/{service}/restart`: the request
/// was stored; the device restarts the service when it next hears from the
/// cloud.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestartRequested {
    pub service: String,
    /// How many restarts of this service have been asked for, this one
    /// included.
    pub count: u64,
}

/// `PATCH /device/v1/state`: what changed on the device since it last
/// said. Absent fields keep their value.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrentState {
    /// Id of the release the device now runs.
    #[serde(default)]
    pub release: Option<String>,
    /// Services whose state changed; null for one it no longer runs.
    #[serde(default)]
    pub services: BTreeMap<String, Option<ServiceReport>>,
    /// How applying its target went, when that changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateReport>,
}

/// Where a device stands with the release it was last given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateState {
    /// Running it, within its health window.
    Applying,
    /// It ran its health window without a service failing.
    Healthy,
    /// A service failed within the window: the device went back to the
    /// last healthy release, and does not try this one again until its
    /// target changes.
    RolledBack,
    /// A service failed within the window and there was no healthy release
    /// to go back to.
    Failed,
}

impl std::fmt::Display for UpdateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpdateState::Applying => "applying",
            UpdateState::Healthy => "healthy",
            UpdateState::RolledBack => "rolled-back",
            UpdateState::Failed => "failed",
        })
    }
}

impl std::str::FromStr for UpdateState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "applying" => UpdateState::Applying,
            "healthy" => UpdateState::Healthy,
            "rolled-back" => UpdateState::RolledBack,
            "failed" => UpdateState::Failed,
            _ => return Err(format!("`{s}` is not an update state")),
        })
    }
}

/// `update` in a device's report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateReport {
    pub state: UpdateState,
    /// Id of the release the outcome is about (for a rollback, the release
    /// left, not the one gone back to).
    pub release: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceReport {
    pub state: ServiceState,
    /// Bytes of memory in use.
    #[serde(default)]
    pub memory: Option<u64>,
    /// Times the device started it again after it ended.
    #[serde(default)]
    pub restarts: u32,
    /// Why its last run ended, when one has; at most
    /// [`MAX_EXIT_REASON`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// Longest exit reason a device reports. A trap's message may carry a
/// whole backtrace; its first kilobyte says what happened.
pub const MAX_EXIT_REASON: usize = 1024;

impl ServiceReport {
    /// `reason` cut to [`MAX_EXIT_REASON`] bytes at a character boundary.
    pub fn exit_reason(reason: &str) -> String {
        let mut end = reason.len().min(MAX_EXIT_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason[..end].to_owned()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
}

/// `POST /device/v1/logs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogBatch {
    pub lines: Vec<LogLine>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// When the device wrote it, in milliseconds since the Unix epoch.
    pub time: i64,
    pub service: String,
    #[serde(default)]
    pub stream: LogStream,
    pub line: String,
}

/// A log line as the cloud keeps it: numbered, so that a reader following
/// the log asks for the lines after the last one it saw.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredLogLine {
    /// The line's number among its device's lines, in the order they
    /// arrived: a later line has a larger one.
    pub id: i64,
    /// When the device wrote it, in milliseconds since the Unix epoch.
    pub time: i64,
    pub service: String,
    pub stream: LogStream,
    pub line: String,
}

/// `PATCH /api/v1/devices/{uuid}`: what to change about a device. Absent
/// fields keep their value.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    /// The name people see; the uuid stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// How a device replaces a running service with its new version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    /// Fetch and load the new version, then stop the old one and start the
    /// new (a short gap; both are in memory for a moment).
    #[default]
    DownloadThenKill,
    /// Stop the old version first, then fetch and start the new (for a
    /// device short of memory or disk).
    KillThenDownload,
    /// Fetch the new version and start it beside the old, which stops once
    /// the new one runs (no gap; both run for a moment, so they must not
    /// need the same hardware line).
    HandOver,
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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRelease {
    pub version: String,
    pub services: BTreeMap<String, ServiceSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseView {
    pub id: String,
    pub fleet: String,
    pub version: String,
    pub created_at: i64,
    pub services: BTreeMap<String, ServiceSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// A release version of the fleet, or null to track the latest.
    pub release: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvValue {
    pub value: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvView {
    pub name: String,
    pub value: String,
}

/// What a device should run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetState {
    pub release: Option<ReleaseRef>,
    pub services: BTreeMap<String, TargetService>,
    /// The hardware map the cloud gives the device (its own, else its
    /// fleet's), as TOML; absent when it gives none and the device uses
    /// the map its config file names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_map: Option<String>,
    /// Restarts asked for, as a count per service: the device restarts a
    /// service when its count goes up. A count, not a one-off command, so
    /// that a device that missed a poll or restarted itself acts on each
    /// request at most once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restarts: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub id: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_state_reads_back_as_written_and_requests_refuse_unknown_fields() {
        let text = r#"{"release":{"id":"r1","version":"1.0"},"services":{"web":{
            "image":"example.com/web@sha256:00","env":{"A":"1"},"restart":"on-failure:3",
            "memory":1048576,"grants":{},"update_strategy":"kill-then-download"}}}"#;
        let state: TargetState = serde_json::from_str(text).unwrap();
        let web = &state.services["web"];
        assert_eq!(web.restart, RestartPolicy::OnFailure { max_restarts: 3 });
        assert_eq!(web.memory, ByteSize::mib(1));
        assert_eq!(web.update_strategy, UpdateStrategy::KillThenDownload);
        let again: TargetState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(again, state);

        let err = serde_json::from_str::<Register>(
            r#"{"uuid":"d","arch":"x86_64","agent_version":"1","fleet":"x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `fleet`"), "{err}");
    }
}
