//! A device's rollout: a new target from the cloud runs its health
//! window; whether it is healthy; and what the device keeps on disk to roll
//! back.
//!
//! A new target runs its health window (30 seconds unless the config file
//! says otherwise). If within it a service crash-loops, fails for good, or
//! does not start at all (its image refused, its module not loading), the
//! device goes back to the last target that ran its whole window, and does
//! not try the failed one again until the cloud's target changes. How a
//! target becomes running services is [`crate::device::target`]'s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kelp_core::api::{TargetState, UpdateReport, UpdateState};
use kelp_core::{ServiceState, ServiceStatus};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::disk::DeviceFiles;
use crate::device::node::{self, Node};
use crate::device::target;

/// How long a new target runs before it counts as healthy, unless the
/// config file says.
pub const DEFAULT_HEALTH_WINDOW: Duration = Duration::from_secs(30);

/// The last target applied, as kept on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedTarget {
    pub etag: String,
    pub target: TargetState,
}

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
pub struct RolloutState {
    /// The target the cloud last gave.
    pub target: Option<SavedTarget>,
    /// The last target that ran its whole health window.
    pub healthy: Option<SavedTarget>,
    /// The cloud's target, if it failed its health window.
    pub rejected: Option<Rejected>,
}

impl RolloutState {
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

/// The rollout as the device drives it: the state kept on disk, the
/// health window running now, and how the last update went.
pub struct Rollout {
    state: RolloutState,
    node: Arc<Node>,
    files: DeviceFiles,
    /// Each service's `/data` lives under here.
    services_dir: PathBuf,
    window: Duration,
    /// When the target on trial has proved itself.
    until: Option<Instant>,
    /// How the last update went, to tell the cloud and status.
    update: Option<UpdateReport>,
}

impl Rollout {
    /// Picks up where the last start left off: shows which release runs
    /// and how its update went, runs it again, and goes on with its health
    /// window if it was still on trial.
    pub async fn resume(
        node: Arc<Node>,
        files: DeviceFiles,
        services_dir: PathBuf,
        window: Duration,
    ) -> Rollout {
        // What ran last, from disk: the cloud may be out of reach for a while.
        let state = match files.state() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "not starting the last target");
                RolloutState::default()
            }
        };
        let mut rollout = Rollout {
            state,
            node,
            files,
            services_dir,
            window,
            until: None,
            update: None,
        };
        // Status says which release runs before its services come up, so
        // whoever sees them running sees the release too.
        let on_trial = rollout.state.on_trial();
        if on_trial {
            rollout.update = rollout.outcome(UpdateState::Applying, None);
        } else if rollout.state.target_rejected() {
            let state = if rollout.state.healthy.is_some() {
                UpdateState::RolledBack
            } else {
                UpdateState::Failed
            };
            let reason = rollout.state.rejected.as_ref().map(|r| r.reason.clone());
            rollout.update = rollout.outcome(state, reason);
        }
        rollout.show();
        if let Some(saved) = rollout.state.running() {
            tracing::info!(release = ?saved.target.release, "starting the last target applied");
            target::apply_cloud(&rollout.node, &saved.target, &rollout.services_dir).await;
        }
        if on_trial {
            rollout.start();
        }
        rollout.reclaim().await;
        rollout
    }

    /// When the health window running now ends, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        self.until
    }

    /// The ETag of the cloud's last target, to ask for a newer one.
    pub fn etag(&self) -> Option<String> {
        self.state.target.as_ref().map(|c| c.etag.clone())
    }

    /// Id of the release that runs.
    pub fn running_release(&self) -> Option<String> {
        self.state
            .running()
            .and_then(|c| c.target.release.as_ref())
            .map(|r| r.id.clone())
    }

    /// How the last update went, to tell the cloud.
    pub fn update(&self) -> Option<&UpdateReport> {
        self.update.as_ref()
    }

    /// Runs a new target from the cloud. One already proven healthy (or
    /// not a release at all) is healthy at once; any other goes on trial.
    pub async fn receive(&mut self, saved: SavedTarget) {
        tracing::info!(release = ?saved.target.release, "new target from the cloud");
        let proven = self
            .state
            .healthy
            .as_ref()
            .is_some_and(|h| h.etag == saved.etag);
        self.state.target = Some(saved.clone());
        self.state.rejected = None;
        self.save("cannot keep the target for the next start");
        target::apply_cloud(&self.node, &saved.target, &self.services_dir).await;
        if proven || saved.target.release.is_none() {
            self.until = None;
            self.state.healthy = Some(saved);
            self.update = self.outcome(UpdateState::Healthy, None);
            self.save("cannot keep the target for the next start");
        } else {
            self.start();
            // A service refused outright fails the trial at once.
            self.judge(false).await;
        }
        self.reclaim().await;
        self.show();
    }

    /// Judges the target on trial by how its services run now: a failure
    /// rolls back to the last healthy target at once; with `window_over`,
    /// no failure makes it healthy.
    pub async fn judge(&mut self, window_over: bool) {
        if self.until.is_none() {
            return;
        }
        let node = &self.node;
        let why = verdict(&node.supervisor.status(), &node.refused(), node.map_error());
        match why {
            None if !window_over => return,
            None => {
                tracing::info!(release = ?self.release_id(), "release healthy");
                self.state.healthy = self.state.target.clone();
                self.until = None;
                if let Some(u) = &mut self.update {
                    u.state = UpdateState::Healthy;
                }
            }
            Some(reason) => {
                self.until = None;
                let Some(target) = &self.state.target else {
                    return;
                };
                self.state.rejected = Some(Rejected {
                    etag: target.etag.clone(),
                    reason: reason.clone(),
                });
                let state = match &self.state.healthy {
                    Some(healthy) => {
                        tracing::error!(
                            release = ?target.target.release,
                            back_to = ?healthy.target.release,
                            %reason,
                            "release unhealthy: rolling back"
                        );
                        target::apply_cloud(&self.node, &healthy.target, &self.services_dir).await;
                        UpdateState::RolledBack
                    }
                    None => {
                        tracing::error!(
                            release = ?target.target.release,
                            %reason,
                            "release unhealthy, and no healthy release to go back to"
                        );
                        UpdateState::Failed
                    }
                };
                self.update = self.outcome(state, Some(reason));
            }
        }
        self.save("cannot keep the device's state for the next start");
        self.reclaim().await;
        self.show();
    }

    /// Keeps in the image store, and in the compile cache, only what the
    /// device may still run: the cloud's target, unless it was given up on,
    /// and the last healthy one (the one to roll back to). A target given up
    /// on is not tried again until the cloud's target changes, so what was
    /// fetched of it (a download cut short by a full disk, say) goes.
    async fn reclaim(&self) {
        let Some(store) = self.node.images() else {
            return;
        };
        let target = match self.state.target_rejected() {
            true => &None,
            false => &self.state.target,
        };
        let images: Vec<_> = [target, &self.state.healthy]
            .into_iter()
            .flatten()
            .flat_map(|saved| target::images_of(&saved.target))
            .collect();
        let modules = store.keep_only(&images.iter().collect::<Vec<_>>()).await;
        let compiled = self.node.supervisor.runtime().keep_compiled(&modules);
        if compiled > 0 {
            tracing::info!(
                modules = compiled,
                "compile cache: removed the code of modules gone from the store"
            );
        }
    }

    fn start(&mut self) {
        self.until = Some(Instant::now() + self.window);
        self.update = self.outcome(UpdateState::Applying, None);
    }

    fn save(&self, what: &str) {
        if let Err(e) = self.files.save_state(&self.state) {
            tracing::error!(error = %e, "{what}");
        }
    }

    /// How the update to the cloud's target went, to report.
    fn outcome(&self, state: UpdateState, reason: Option<String>) -> Option<UpdateReport> {
        self.release_id().map(|release| UpdateReport {
            state,
            release,
            reason,
        })
    }

    /// Id of the cloud's target release.
    fn release_id(&self) -> Option<String> {
        Some(
            self.state
                .target
                .as_ref()?
                .target
                .release
                .as_ref()?
                .id
                .clone(),
        )
    }

    /// Shows what runs, and how the update went, in status.
    fn show(&self) {
        let running = self.state.running().and_then(|s| s.target.release.clone());
        let version_of = |id: &str| {
            [&self.state.target, &self.state.healthy]
                .into_iter()
                .flatten()
                .filter_map(|s| s.target.release.as_ref())
                .find(|r| r.id == id)
                .map(|r| r.version.clone())
        };
        self.node.set_release(node::Release {
            version: running.as_ref().map(|r| r.version.clone()),
            id: running.map(|r| r.id),
            update: self.update.as_ref().map(|u| node::Update {
                state: u.state,
                release: version_of(&u.release),
                reason: u.reason.clone(),
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut r = RolloutState {
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
        let failed = RolloutState {
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
