//! The agent's loop: register, follow the cloud's target, prove each new
//! one healthy or roll back, report, and send the logs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kelp_core::api::{ServiceReport, UpdateReport, UpdateState};
use tokio::sync::watch;
use tokio::time::Instant;

use super::health::{self, Rejected, Rollout};
use super::outbox::Outbox;
use super::{AgentError, Cloud, Config, Poll, Store};
use crate::node::{self, Node};

/// A burst of service changes is one report, this long after the first.
const REPORT_DEBOUNCE: Duration = Duration::from_secs(1);

/// How often the memory services hold is compared with what the cloud was
/// last told. A change of state is reported at once; memory moves without
/// one (a service grows after it starts), and is reported within this.
const MEMORY_CHECK: Duration = Duration::from_secs(10);
/// Lines are gathered this long before a batch goes, so a chatty service
/// costs a request per this, not per line.
const LOG_GATHER: Duration = Duration::from_millis(250);

/// What the agent works with.
pub struct Agent {
    pub config: Config,
    pub store: Store,
    pub uuid: String,
    pub node: Arc<Node>,
    /// Each service's `/data` lives under here.
    pub services_dir: PathBuf,
    pub outbox: Arc<Outbox>,
}

/// The rollout as the agent drives it: what is persisted, and the health
/// window running now.
struct Trial {
    rollout: Rollout,
    /// When the target on trial has proved itself.
    until: Option<Instant>,
    /// How the last update went, to tell the cloud and status.
    update: Option<UpdateReport>,
}

impl Agent {
    /// Follows the cloud: registers if the device has no key yet, then runs
    /// each new target the cloud gives, rolls back one that fails its
    /// health window, and reports what runs. The cloud being unreachable
    /// only delays this: services keep running, and it tries again after a
    /// backoff. Returns only on an error no retry can fix.
    pub async fn run(self) -> Result<(), AgentError> {
        let Agent {
            config,
            store,
            uuid,
            node,
            services_dir,
            outbox,
        } = self;
        let cloud = Arc::new(Cloud::new(&config.cloud)?);
        // What ran last, from disk: the cloud may be out of reach for a while.
        let rollout = match store.rollout() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "not starting the last target");
                Rollout::default()
            }
        };
        let mut trial = Trial {
            rollout,
            until: None,
            update: None,
        };
        // Status says which release runs before its services come up, so
        // whoever sees them running sees the release too.
        let on_trial = trial.rollout.on_trial();
        if on_trial {
            trial.update = trial.outcome(UpdateState::Applying, None);
        } else if trial.rollout.target_rejected() {
            let state = if trial.rollout.healthy.is_some() {
                UpdateState::RolledBack
            } else {
                UpdateState::Failed
            };
            let reason = trial.rollout.rejected.as_ref().map(|r| r.reason.clone());
            trial.update = trial.outcome(state, reason);
        }
        trial.show(&node);
        if let Some(saved) = trial.rollout.running() {
            tracing::info!(release = ?saved.target.release, "starting the last target applied");
            node.apply_cloud(&saved.target, &services_dir).await;
        }
        if on_trial {
            trial.start(config.health_window);
        }

        let (key_tx, key_rx) = watch::channel(store.key()?);
        let shipping = tokio::spawn(ship_logs(cloud.clone(), outbox, key_rx));
        let result = follow(
            &config,
            &store,
            &uuid,
            &node,
            &services_dir,
            &cloud,
            &key_tx,
            &mut trial,
        )
        .await;
        shipping.abort();
        result
    }
}

impl Trial {
    fn start(&mut self, window: Duration) {
        self.until = Some(Instant::now() + window);
        self.update = self.outcome(UpdateState::Applying, None);
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
            self.rollout
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
    fn show(&self, node: &Node) {
        let running = self
            .rollout
            .running()
            .and_then(|s| s.target.release.clone());
        let version_of = |id: &str| {
            [&self.rollout.target, &self.rollout.healthy]
                .into_iter()
                .flatten()
                .filter_map(|s| s.target.release.as_ref())
                .find(|r| r.id == id)
                .map(|r| r.version.clone())
        };
        node.set_release(node::Release {
            version: running.as_ref().map(|r| r.version.clone()),
            id: running.map(|r| r.id),
            update: self.update.as_ref().map(|u| node::Update {
                state: u.state,
                release: version_of(&u.release),
                reason: u.reason.clone(),
            }),
        });
    }

    /// Ends the window: healthy, or given up on with why.
    async fn judge(
        &mut self,
        node: &Node,
        store: &Store,
        services_dir: &std::path::Path,
        window_over: bool,
    ) {
        if self.until.is_none() {
            return;
        }
        let why = health::verdict(&node.supervisor.status(), &node.refused(), node.map_error());
        match why {
            None if !window_over => return,
            None => {
                tracing::info!(release = ?self.release_id(), "release healthy");
                self.rollout.healthy = self.rollout.target.clone();
                self.until = None;
                if let Some(u) = &mut self.update {
                    u.state = UpdateState::Healthy;
                }
            }
            Some(reason) => {
                self.until = None;
                let Some(target) = &self.rollout.target else {
                    return;
                };
                self.rollout.rejected = Some(Rejected {
                    etag: target.etag.clone(),
                    reason: reason.clone(),
                });
                let state = match &self.rollout.healthy {
                    Some(healthy) => {
                        tracing::error!(
                            release = ?target.target.release,
                            back_to = ?healthy.target.release,
                            %reason,
                            "release unhealthy: rolling back"
                        );
                        node.apply_cloud(&healthy.target, services_dir).await;
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
        if let Err(e) = store.save_rollout(&self.rollout) {
            tracing::error!(error = %e, "cannot keep the device's state for the next start");
        }
        self.show(node);
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the agent's parts, lent to its loop"
)]
async fn follow(
    config: &Config,
    store: &Store,
    uuid: &str,
    node: &Node,
    services_dir: &std::path::Path,
    cloud: &Cloud,
    key_tx: &watch::Sender<Option<String>>,
    trial: &mut Trial,
) -> Result<(), AgentError> {
    let mut key = key_tx.borrow().clone();
    // The cloud's registry takes the device key for pulls.
    let home = config.registry();
    if let (Some(home), Some(k)) = (&home, &key) {
        node.set_home_registry(home, k);
    }
    let mut told = BTreeMap::new();
    let mut told_release: Option<String> = None;
    let mut told_update: Option<UpdateReport> = None;
    let mut failures = 0u32;
    let mut changes = node.supervisor.changes();
    loop {
        if failures > 0 {
            let wait = super::retry_after(failures - 1);
            // A health window ends on time even while the cloud is away.
            match trial.until {
                Some(until) if Instant::now() + wait >= until => {
                    tokio::time::sleep_until(until).await;
                    trial.judge(node, store, services_dir, true).await;
                    continue;
                }
                _ => tokio::time::sleep(wait).await,
            }
        }
        let device_key = match &key {
            Some(k) => k.clone(),
            None => {
                let Some(provisioning) = &config.provisioning_key else {
                    return Err(AgentError::NoProvisioningKey);
                };
                match cloud
                    .register(provisioning, uuid, config.device_name.as_deref())
                    .await
                {
                    Ok(registered) => {
                        if let Some(want) = &config.fleet
                            && *want != registered.fleet
                        {
                            return Err(AgentError::WrongFleet {
                                want: want.clone(),
                                got: registered.fleet,
                            });
                        }
                        store.save_key(&registered.device_key)?;
                        tracing::info!(%uuid, fleet = %registered.fleet, "registered");
                        key = Some(registered.device_key.clone());
                        key_tx.send_replace(key.clone());
                        if let Some(home) = &home {
                            node.set_home_registry(home, &registered.device_key);
                        }
                        registered.device_key
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "cannot register; trying again");
                        continue;
                    }
                }
            }
        };
        // Say what changed since the last report.
        let release = trial
            .rollout
            .running()
            .and_then(|c| c.target.release.as_ref())
            .map(|r| r.id.clone());
        let now: BTreeMap<String, ServiceReport> = node
            .supervisor
            .status()
            .into_iter()
            .map(|s| {
                let report = ServiceReport {
                    state: s.state,
                    memory: Some(s.memory_bytes),
                    restarts: s.restarts,
                    last_exit: s
                        .last_exit
                        .map(|e| ServiceReport::exit_reason(&e.to_string())),
                };
                (s.name, report)
            })
            .collect();
        let mut report = super::changes(release.as_deref(), &now, &told);
        if trial.update != told_update {
            report.update = trial.update.clone();
        }
        if !report.services.is_empty()
            || report.update.is_some()
            || (release.is_some() && release != told_release)
        {
            match cloud.report(&device_key, &report).await {
                Ok(()) => {
                    told = now;
                    told_release = release;
                    told_update = trial.update.clone();
                }
                Err(e) => {
                    failures += 1;
                    if matches!(e, AgentError::KeyRefused) {
                        forget_key(config, &mut key, key_tx);
                    }
                    tracing::warn!(error = %e, "cannot report the device's state; trying again");
                    continue;
                }
            }
        }
        let etag = trial.rollout.target.as_ref().map(|c| c.etag.clone());
        let window = async {
            match trial.until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        let poll = tokio::select! {
            poll = cloud.target(&device_key, etag.as_deref(), super::POLL_WAIT) => poll,
            // A service changed: judge it, report it (a moment later, so a
            // burst of changes is one report), then ask again.
            _ = changes.changed() => {
                tokio::time::sleep(REPORT_DEBOUNCE).await;
                changes.mark_unchanged();
                trial.judge(node, store, services_dir, false).await;
                continue;
            }
            () = window => {
                trial.judge(node, store, services_dir, true).await;
                continue;
            }
            // Memory moved: report it (the poll is asked again).
            () = memory_moved(node, &told) => continue,
        };
        match poll {
            Ok(Poll::Unchanged) => failures = 0,
            Ok(Poll::Changed(saved)) => {
                failures = 0;
                tracing::info!(release = ?saved.target.release, "new target from the cloud");
                let proven = trial
                    .rollout
                    .healthy
                    .as_ref()
                    .is_some_and(|h| h.etag == saved.etag);
                trial.rollout.target = Some(saved.clone());
                trial.rollout.rejected = None;
                if let Err(e) = store.save_rollout(&trial.rollout) {
                    tracing::error!(error = %e, "cannot keep the target for the next start");
                }
                node.apply_cloud(&saved.target, services_dir).await;
                if proven || saved.target.release.is_none() {
                    trial.until = None;
                    trial.rollout.healthy = Some(saved);
                    trial.update = trial.outcome(UpdateState::Healthy, None);
                    if let Err(e) = store.save_rollout(&trial.rollout) {
                        tracing::error!(error = %e, "cannot keep the target for the next start");
                    }
                } else {
                    trial.start(config.health_window);
                    // A service refused outright fails the trial at once.
                    trial.judge(node, store, services_dir, false).await;
                }
                trial.show(node);
            }
            Err(e) => {
                failures += 1;
                if matches!(e, AgentError::KeyRefused) {
                    forget_key(config, &mut key, key_tx);
                }
                tracing::warn!(error = %e, "cannot get the target; trying again");
            }
        }
    }
}

/// Resolves once a service's memory differs from what the cloud was told.
async fn memory_moved(node: &Node, told: &BTreeMap<String, ServiceReport>) {
    loop {
        tokio::time::sleep(MEMORY_CHECK).await;
        let moved = node.supervisor.status().into_iter().any(|s| {
            told.get(&s.name)
                .is_some_and(|t| t.memory != Some(s.memory_bytes))
        });
        if moved {
            return;
        }
    }
}

/// After the cloud refused the device key: register again, if the config
/// gives a provisioning key to do it with.
fn forget_key(config: &Config, key: &mut Option<String>, key_tx: &watch::Sender<Option<String>>) {
    if config.provisioning_key.is_some() {
        *key = None;
        key_tx.send_replace(None);
    }
}

/// Sends what waits in the outbox, oldest first, batch by batch; waits
/// with backoff while the cloud is away, and for a key while the device
/// has none.
async fn ship_logs(
    cloud: Arc<Cloud>,
    outbox: Arc<Outbox>,
    mut key: watch::Receiver<Option<String>>,
) {
    let mut failures = 0u32;
    loop {
        if !outbox.pending() {
            outbox.wait().await;
            tokio::time::sleep(LOG_GATHER).await;
            continue;
        }
        let Some(device_key) = key.borrow_and_update().clone() else {
            if key.changed().await.is_err() {
                return;
            }
            continue;
        };
        let batch = match outbox.batch() {
            Ok(b) => b,
            Err(error) => {
                tracing::error!(%error, "cannot read the log outbox");
                tokio::time::sleep(super::retry_after(6)).await;
                continue;
            }
        };
        if batch.lines.is_empty() {
            // Only damaged lines: step past them.
            if let Err(error) = outbox.delivered(&batch) {
                tracing::error!(%error, "cannot update the log outbox");
            }
            continue;
        }
        match cloud.send_logs(&device_key, &batch.lines).await {
            Ok(()) => {
                failures = 0;
                if let Err(error) = outbox.delivered(&batch) {
                    tracing::error!(%error, "cannot update the log outbox");
                }
            }
            Err(AgentError::KeyRefused) => {
                // The loop registers again; wait for the new key.
                let _ = key.changed().await;
            }
            Err(e @ AgentError::Rejected { .. }) => {
                // Sending it again would be refused again: it must not
                // hold up the lines behind it.
                tracing::error!(error = %e, lines = batch.lines.len(), "log lines dropped");
                if let Err(error) = outbox.delivered(&batch) {
                    tracing::error!(%error, "cannot update the log outbox");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot send logs; trying again");
                tokio::time::sleep(super::retry_after(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}
