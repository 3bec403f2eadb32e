//! The agent's loop: register, follow the cloud's target (each new one
//! goes to the [`rollout`](super::rollout), which judges it and rolls back),
//! report what changed, and send the logs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kelp_core::api::{ServiceReport, UpdateReport};
use tokio::sync::watch;
use tokio::time::Instant;

use super::cloud::{Cloud, POLL_WAIT, Poll, changes, retry_after};
use super::config::Config;
use super::disk::DeviceFiles;
use super::error::AgentError;
use super::outbox::Outbox;
use super::rollout::{Rollout, SavedTarget};
use crate::device::node::Node;
use crate::device::target;

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
    pub files: DeviceFiles,
    pub uuid: String,
    pub node: Arc<Node>,
    /// Each service's `/data` lives under here.
    pub services_dir: PathBuf,
    pub outbox: Arc<Outbox>,
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
            files,
            uuid,
            node,
            services_dir,
            outbox,
        } = self;
        let cloud = Arc::new(Cloud::new(&config.cloud)?);
        node.allow_registries(config.registries.clone());
        let rollout = Rollout::resume(
            node.clone(),
            files.clone(),
            services_dir,
            config.health_window,
        )
        .await;
        let key = files.key()?;
        let (key_tx, key_rx) = watch::channel(key.clone());
        let shipping = tokio::spawn(ship_logs(cloud.clone(), outbox, key_rx));
        let result = Follow {
            home: config.registry(),
            config,
            files,
            uuid,
            node,
            cloud,
            key,
            key_tx,
            rollout,
            told: Told::default(),
        }
        .run()
        .await;
        shipping.abort();
        result
    }
}

/// What the cloud was last told.
#[derive(Default)]
struct Told {
    services: BTreeMap<String, ServiceReport>,
    release: Option<String>,
    update: Option<UpdateReport>,
}

/// The loop's parts.
struct Follow {
    config: Config,
    files: DeviceFiles,
    uuid: String,
    node: Arc<Node>,
    cloud: Arc<Cloud>,
    /// The cloud's registry (it takes the device key for pulls).
    home: Option<String>,
    key: Option<String>,
    /// The device key for the log shipper, as it changes.
    key_tx: watch::Sender<Option<String>>,
    rollout: Rollout,
    told: Told,
}

/// What one step of the loop asks of the next.
enum Step {
    /// Go on at once.
    Next,
    /// The cloud failed: wait before trying again.
    Failed,
}

impl Follow {
    async fn run(mut self) -> Result<(), AgentError> {
        if let (Some(home), Some(k)) = (&self.home, &self.key) {
            self.node.set_home_registry(home, k);
        }
        let mut failures = 0u32;
        let mut changes = self.node.supervisor.changes();
        loop {
            if failures > 0 {
                let wait = retry_after(failures - 1);
                // A health window ends on time even while the cloud is away.
                match self.rollout.deadline() {
                    Some(until) if Instant::now() + wait >= until => {
                        tokio::time::sleep_until(until).await;
                        self.rollout.judge(true).await;
                        continue;
                    }
                    _ => tokio::time::sleep(wait).await,
                }
            }
            let step = match self.device_key().await? {
                Some(device_key) => match self.report(&device_key).await {
                    Step::Next => self.poll(&device_key, &mut changes, &mut failures).await,
                    Step::Failed => Step::Failed,
                },
                None => Step::Failed,
            };
            if let Step::Failed = step {
                failures += 1;
            }
        }
    }

    /// The device key, registering with the provisioning key first if the
    /// device has none; `None` when the cloud cannot be reached for that.
    async fn device_key(&mut self) -> Result<Option<String>, AgentError> {
        if let Some(k) = &self.key {
            return Ok(Some(k.clone()));
        }
        let Some(provisioning) = &self.config.provisioning_key else {
            return Err(AgentError::NoProvisioningKey);
        };
        let registered = match self
            .cloud
            .register(provisioning, &self.uuid, self.config.device_name.as_deref())
            .await
        {
            Ok(registered) => registered,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register; trying again");
                return Ok(None);
            }
        };
        if let Some(want) = &self.config.fleet
            && *want != registered.fleet
        {
            return Err(AgentError::WrongFleet {
                want: want.clone(),
                got: registered.fleet,
            });
        }
        self.files.save_key(&registered.device_key)?;
        tracing::info!(uuid = %self.uuid, fleet = %registered.fleet, "registered");
        self.key = Some(registered.device_key.clone());
        self.key_tx.send_replace(self.key.clone());
        if let Some(home) = &self.home {
            self.node.set_home_registry(home, &registered.device_key);
        }
        Ok(Some(registered.device_key))
    }

    /// Says what changed since the last report, if anything did.
    async fn report(&mut self, device_key: &str) -> Step {
        let release = self.rollout.running_release();
        let now: BTreeMap<String, ServiceReport> = self
            .node
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
        let update = self.rollout.update().cloned();
        let mut report = changes(release.as_deref(), &now, &self.told.services);
        if update != self.told.update {
            report.update = update.clone();
        }
        if report.services.is_empty()
            && report.update.is_none()
            && (release.is_none() || release == self.told.release)
        {
            return Step::Next;
        }
        match self.cloud.report(device_key, &report).await {
            Ok(()) => {
                self.told = Told {
                    services: now,
                    release,
                    update,
                };
                Step::Next
            }
            Err(e) => {
                if matches!(e, AgentError::KeyRefused) {
                    self.forget_key();
                }
                tracing::warn!(error = %e, "cannot report the device's state; trying again");
                Step::Failed
            }
        }
    }

    /// Waits for a new target (handing it to the rollout), a service's
    /// change, the health window's end, or memory that moved.
    async fn poll(
        &mut self,
        device_key: &str,
        changes: &mut watch::Receiver<u64>,
        failures: &mut u32,
    ) -> Step {
        let etag = self.rollout.etag();
        let deadline = self.rollout.deadline();
        let window = async {
            match deadline {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        let poll = tokio::select! {
            poll = self.cloud.target(device_key, etag.as_deref(), POLL_WAIT) => poll,
            // A service changed: judge it, report it (a moment later, so a
            // burst of changes is one report), then ask again.
            _ = changes.changed() => {
                tokio::time::sleep(REPORT_DEBOUNCE).await;
                changes.mark_unchanged();
                self.rollout.judge(false).await;
                return Step::Next;
            }
            () = window => {
                self.rollout.judge(true).await;
                return Step::Next;
            }
            // Memory moved: report it (the poll is asked again).
            () = memory_moved(&self.node, &self.told.services) => return Step::Next,
        };
        match poll {
            Ok(Poll::Unchanged) => {
                *failures = 0;
                Step::Next
            }
            Ok(Poll::Changed(saved)) => {
                *failures = 0;
                let saved = self.fetch_newest(device_key, saved).await;
                self.rollout.receive(saved).await;
                Step::Next
            }
            Err(e) => {
                if matches!(e, AgentError::KeyRefused) {
                    self.forget_key();
                }
                tracing::warn!(error = %e, "cannot get the target; trying again");
                Step::Failed
            }
        }
    }

    /// Fetches the images `saved` needs while still following the cloud,
    /// and returns the target to switch to once they are in: a newer target
    /// that comes meanwhile takes the place of the one being fetched (whose
    /// download stops there), and a health window under way still ends on
    /// time. However slow a registry is, the device keeps up with its
    /// newest target.
    async fn fetch_newest(&mut self, device_key: &str, mut saved: SavedTarget) -> SavedTarget {
        loop {
            // Leaving this block drops `fetch`, which is what stops it; it
            // must be gone before the rollout runs, since the rollout may
            // fetch too and the store fetches one at a time.
            let newer = {
                let node = self.node.clone();
                let target = saved.target.clone();
                let fetch = async move { target::fetch_cloud(&node, &target).await };
                tokio::pin!(fetch);
                let deadline = self.rollout.deadline();
                let window = async {
                    match deadline {
                        Some(until) => tokio::time::sleep_until(until).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(window);
                loop {
                    let cloud = self.cloud.clone();
                    let etag = saved.etag.clone();
                    let ask = async move {
                        match cloud.target(device_key, Some(&etag), POLL_WAIT).await {
                            Ok(Poll::Changed(newer)) => Some(newer),
                            Ok(Poll::Unchanged) => None,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot ask for a newer target while fetching; trying again");
                                tokio::time::sleep(retry_after(3)).await;
                                None
                            }
                        }
                    };
                    tokio::select! {
                        () = &mut fetch => return saved,
                        () = &mut window => break None,
                        newer = ask => if let Some(newer) = newer { break Some(newer) },
                    }
                }
            };
            match newer {
                Some(newer) => {
                    tracing::info!(
                        fetching = ?saved.target.release,
                        newer = ?newer.target.release,
                        "a newer target came while fetching: fetching that one instead"
                    );
                    saved = newer;
                }
                None => self.rollout.judge(true).await,
            }
        }
    }

    /// After the cloud refused the device key: register again, if the
    /// config gives a provisioning key to do it with.
    fn forget_key(&mut self) {
        if self.config.provisioning_key.is_some() {
            self.key = None;
            self.key_tx.send_replace(None);
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
                tokio::time::sleep(retry_after(6)).await;
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
                tokio::time::sleep(retry_after(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}
