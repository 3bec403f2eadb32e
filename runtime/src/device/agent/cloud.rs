//! The fleet API as a device calls it: register, long-poll the target,
//! report what changed, send logs; and how long to wait after a failure.

use std::collections::BTreeMap;
use std::time::Duration;

use kelp_core::api::{CurrentState, Register, RegisteredDevice, ServiceReport, TargetState};
use serde::{Deserialize, Serialize};

use super::error::AgentError;
use super::rollout::SavedTarget;

/// Largest answer read from the cloud: a target of 64 services with many
/// variables is well below it.
const MAX_ANSWER: usize = 16 << 20;
/// How long the cloud may hold a request for the target (its most).
pub const POLL_WAIT: Duration = Duration::from_secs(60);
/// Time a request may take beyond what the cloud holds it.
const REQUEST_SLACK: Duration = Duration::from_secs(30);

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
