use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ByteSize, Digest};

/// When a service that stopped by itself is started again.
///
/// The names and meaning follow Docker's, since that is what people who run
/// fleets already know: `on-failure:3` restarts a failing service at most three
/// times (four runs in all) and then leaves it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Restart whenever it stops, whether it failed or not.
    #[default]
    Always,
    /// Restart only after a failure (non-zero exit, trap, memory limit), at
    /// most `max_restarts` times in a row.
    OnFailure { max_restarts: u32 },
    /// Never restart.
    Never,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("restart policy `{0}` is not one of `always`, `never`, `on-failure` or `on-failure:N`")]
pub struct RestartPolicyError(String);

impl FromStr for RestartPolicy {
    type Err = RestartPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(RestartPolicy::Always),
            "never" | "no" => Ok(RestartPolicy::Never),
            // Docker's bare `on-failure` retries forever; we give it a bound
            // so that a broken service cannot keep a device busy for ever.
            "on-failure" => Ok(RestartPolicy::OnFailure { max_restarts: 10 }),
            _ => s
                .strip_prefix("on-failure:")
                .and_then(|n| n.parse().ok())
                .map(|max_restarts| RestartPolicy::OnFailure { max_restarts })
                .ok_or_else(|| RestartPolicyError(s.to_owned())),
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::OnFailure { max_restarts } => write!(f, "on-failure:{max_restarts}"),
            RestartPolicy::Never => f.write_str("never"),
        }
    }
}

impl Serialize for RestartPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RestartPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for RestartPolicy {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^(always|never|no|on-failure(:[0-9]{1,9})?)$"))
            .description(Some(
                "When a service that stopped by itself is started again: `always`, \
                 `never` (or `no`), `on-failure` (at most 10 restarts in a row) or \
                 `on-failure:N`.",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for RestartPolicy {
    fn name() -> std::borrow::Cow<'static, str> {
        "RestartPolicy".into()
    }
}

/// Where a service is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ServiceState {
    /// Loading (compiling on a cache miss) and instantiating.
    Starting,
    Running,
    /// Waiting out a backoff before the next start.
    Restarting,
    /// Failed again and again without ever running long enough to count as
    /// healthy; restarts continue, with the longest backoff.
    CrashLooping,
    /// Asked to stop; waiting for it to exit within its grace period.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Ended by itself with success, and its policy does not restart it.
    Exited,
    /// Ended with a failure, and its policy does not restart it (any more).
    Failed,
}

impl ServiceState {
    /// True once the supervisor will do nothing more with the service unless
    /// asked.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ServiceState::Stopped | ServiceState::Exited | ServiceState::Failed
        )
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Restarting => "restarting",
            ServiceState::CrashLooping => "crash-looping",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
            ServiceState::Exited => "exited",
            ServiceState::Failed => "failed",
        })
    }
}

/// Why the last run of a service ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ExitReason {
    /// `main` returned, or the guest called `exit`.
    Exited { code: i32 },
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access).
    Trapped { message: String },
    /// The guest asked for more linear memory than its limit allows.
    MemoryLimit { limit: ByteSize },
    /// The guest did not exit within its stop grace period and was cancelled.
    Killed,
    /// The module could not be loaded or instantiated.
    StartFailed { message: String },
}

impl ExitReason {
    pub fn is_success(&self) -> bool {
        matches!(self, ExitReason::Exited { code: 0 })
    }

    /// The exit status a process running this service alone reports, as a
    /// shell sees it: the guest's own code, 1 for a failed start or a trap,
    /// and 137 (128 + SIGKILL) where the host ended it.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Exited { code } => *code,
            ExitReason::Trapped { .. } | ExitReason::StartFailed { .. } => 1,
            ExitReason::MemoryLimit { .. } | ExitReason::Killed => 137,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Exited { code } => write!(f, "exited with code {code}"),
            ExitReason::Trapped { message } => write!(f, "trapped: {message}"),
            ExitReason::MemoryLimit { limit } => write!(f, "memory limit {limit} exceeded"),
            ExitReason::Killed => f.write_str("killed after its stop grace period"),
            ExitReason::StartFailed { message } => write!(f, "failed to start: {message}"),
        }
    }
}

/// What a device says about one of its services.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// Digest of the module the service runs.
    pub digest: Option<Digest>,
    /// How many times the supervisor has started it again after it ended.
    pub restarts: u32,
    pub last_exit: Option<ExitReason>,
    /// Linear memory currently held by the running instance.
    pub memory_bytes: u64,
    pub memory_limit: ByteSize,
    /// Output lines lost because the service wrote faster than they were
    /// delivered.
    pub log_lines_dropped: u64,
    /// Milliseconds until the next start, while restarting or crash-looping.
    pub next_start_in_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_parse_and_print() {
        for text in ["always", "never", "on-failure:3", "on-failure:0"] {
            let p: RestartPolicy = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        assert_eq!(
            "on-failure".parse::<RestartPolicy>().unwrap(),
            RestartPolicy::OnFailure { max_restarts: 10 }
        );
        let err = "sometimes".parse::<RestartPolicy>().unwrap_err();
        assert!(err.to_string().contains("`sometimes`"));
        assert!("on-failure:x".parse::<RestartPolicy>().is_err());
    }

    #[test]
    fn exit_reasons_read_as_sentences() {
        let r = ExitReason::MemoryLimit {
            limit: ByteSize::mib(64),
        };
        assert_eq!(r.to_string(), "memory limit 64 MiB exceeded");
        assert_eq!(r.exit_code(), 137);
        assert!(ExitReason::Exited { code: 0 }.is_success());
        assert!(!ExitReason::Exited { code: 3 }.is_success());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["kind"], "memory-limit");
    }
}
