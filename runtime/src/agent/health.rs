//! Whether a release just applied is healthy, and what the device keeps
//! on disk to roll back.
//!
//! A new target runs its health window (30 seconds unless the config file
//! says otherwise). If within it a service crash-loops, fails for good, or
//! does not start at all (its image refused, its module not loading), the
//! device goes back to the last target that ran its whole window, and does
//! not try the failed one again until the cloud's target changes.

use std::collections::BTreeMap;
use std::time::Duration;

use kelp_core::{ServiceState, ServiceStatus};
use serde::{Deserialize, Serialize};

use super::SavedTarget;

/// How long a new target runs before it counts as healthy, unless the
/// config file says.
pub const DEFAULT_HEALTH_WINDOW: Duration = Duration::from_secs(30);

/// A target given up on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The target's ETag: the same target is not tried again.
    pub etag: String,
    pub reason: String,
}

/// What a device keeps in `<data-dir>/device/state.json`, written whole on
/// every change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rollout {
    /// The target the cloud last gave.
    pub target: Option<SavedTarget>,
    /// The last target that ran its whole health window.
    pub healthy: Option<SavedTarget>,
    /// The cloud's target, if it failed its health window.
    pub rejected: Option<Rejected>,
}

impl Rollout {
    /// Whether the cloud's target failed and was given up on.
    pub fn target_rejected(&self) -> bool {
        match (&self.target, &self.rejected) {
            (Some(t), Some(r)) => t.etag == r.etag,
            _ => false,
        }
    }

    /// What the device runs: the cloud's target, unless it was given up on
    /// and there is a healthy one to run instead.
    pub fn running(&self) -> Option<&SavedTarget> {
        match &self.healthy {
            Some(healthy) if self.target_rejected() => Some(healthy),
            _ => self.target.as_ref(),
        }
    }

    /// Whether the cloud's target still has to prove itself.
    pub fn on_trial(&self) -> bool {
        match (&self.target, &self.healthy) {
            (Some(t), Some(h)) => t.etag != h.etag && !self.target_rejected(),
            (Some(_), None) => !self.target_rejected(),
            (None, _) => false,
        }
    }
}

/// Why the services of a target are not healthy, if they are not: the
/// first service (by name) that crash-loops, failed for good, or was
/// refused.
pub fn verdict(
    services: &[ServiceStatus],
    refused: &BTreeMap<String, String>,
    map_error: Option<String>,
) -> Option<String> {
    if map_error.is_some() {
        return map_error;
    }
    if let Some((name, why)) = refused.iter().next() {
        return Some(format!("service `{name}` did not start: {why}"));
    }
    for s in services {
        let last = s
            .last_exit
            .as_ref()
            .map(|e| format!(" (last exit: {e})"))
            .unwrap_or_default();
        match s.state {
            ServiceState::CrashLooping => {
                return Some(format!("service `{}` is crash-looping{last}", s.name));
            }
            ServiceState::Failed => {
                return Some(format!("service `{}` failed{last}", s.name));
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelp_core::api::TargetState;

    fn saved(etag: &str) -> SavedTarget {
        SavedTarget {
            etag: etag.to_owned(),
            target: TargetState {
                release: None,
                services: BTreeMap::new(),
                hardware_map: None,
                restarts: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn a_rejected_target_runs_the_healthy_one_until_the_target_changes() {
        let mut r = Rollout {
            target: Some(saved("v3")),
            healthy: Some(saved("v2")),
            rejected: None,
        };
        assert!(r.on_trial());
        assert_eq!(r.running().unwrap().etag, "v3");
        r.rejected = Some(Rejected {
            etag: "v3".to_owned(),
            reason: "crash".to_owned(),
        });
        assert!(!r.on_trial());
        assert_eq!(r.running().unwrap().etag, "v2");
        r.target = Some(saved("v4"));
        assert!(r.on_trial());
        assert_eq!(r.running().unwrap().etag, "v4");
        r.healthy = Some(saved("v4"));
        assert!(!r.on_trial());

        // Given up on with nothing healthy to go back to, the target stays
        // (its services restarting by their policy), across restarts too.
        let failed = Rollout {
            target: Some(saved("v1")),
            healthy: None,
            rejected: Some(Rejected {
                etag: "v1".to_owned(),
                reason: "crash".to_owned(),
            }),
        };
        assert_eq!(failed.running().unwrap().etag, "v1");
        assert!(!failed.on_trial());
    }

    #[test]
    fn the_verdict_names_the_service_and_why() {
        let status = |name: &str, state| ServiceStatus {
            name: name.to_owned(),
            state,
            digest: None,
            restarts: 3,
            last_exit: None,
            memory_bytes: 0,
            memory_limit: kelp_core::ByteSize::mib(1),
            log_lines_dropped: 0,
            next_start_in_ms: None,
        };
        let fine = [
            status("a", ServiceState::Running),
            status("b", ServiceState::Exited),
            status("c", ServiceState::Restarting),
        ];
        assert_eq!(verdict(&fine, &BTreeMap::new(), None), None);
        let looping = [
            status("a", ServiceState::Running),
            status("web", ServiceState::CrashLooping),
        ];
        let why = verdict(&looping, &BTreeMap::new(), None).unwrap();
        assert!(why.contains("`web` is crash-looping"), "{why}");
        let failed = [status("job", ServiceState::Failed)];
        assert!(
            verdict(&failed, &BTreeMap::new(), None)
                .unwrap()
                .contains("`job` failed")
        );
        let refused = BTreeMap::from([("x".to_owned(), "not signed".to_owned())]);
        let why = verdict(&fine, &refused, None).unwrap();
        assert!(why.contains("`x` did not start: not signed"), "{why}");
        let why = verdict(&fine, &BTreeMap::new(), Some("bad map".to_owned())).unwrap();
        assert_eq!(why, "bad map");
    }
}
