//! A service and its life: start, run, end, and by its restart policy start
//! again after a backoff, until stopped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kelp_core::api::UpdateStrategy;
use kelp_core::{ByteSize, Digest, ExitReason, RestartPolicy, ServiceState, ServiceStatus};
use tokio::sync::watch;

use crate::Runtime;
use crate::instance;
use crate::limits::MemoryMeter;
use crate::logs::{LogBuffer, StopSignal, Stream};
use crate::store::InstanceIo;

/// Memory a service may use unless its spec says otherwise.
pub const DEFAULT_MEMORY_LIMIT: ByteSize = ByteSize::mib(64);

/// How long a service asked to stop has to exit by itself before it is
/// cancelled. Docker's default, which fleet operators know.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// What the supervisor needs to know to run a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// The `.wasm` file: a component or a WASI preview 1 core module.
    pub module: PathBuf,
    pub version: Option<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    pub memory_limit: ByteSize,
    /// Host directory preopened at `/data`. It outlives every run of the
    /// service. `None` for no `/data` at all.
    pub data_dir: Option<PathBuf>,
    pub stop_grace: Duration,
    /// Hardware grants to ask for instead of those in the module's
    /// manifest: for running an unsigned module during development
    /// (`kelp run --manifest`). `None` uses the manifest's.
    pub grants: Option<kelp_core::Grants>,
    /// How a new version of it replaces a running one.
    pub update: UpdateStrategy,
}

impl ServiceSpec {
    /// A spec with the defaults: restart always, 64 MiB, no `/data`.
    pub fn new(name: impl Into<String>, module: impl Into<PathBuf>) -> Self {
        ServiceSpec {
            name: name.into(),
            module: module.into(),
            version: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            restart: RestartPolicy::Always,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            data_dir: None,
            stop_grace: DEFAULT_STOP_GRACE,
            grants: None,
            update: UpdateStrategy::DownloadThenKill,
        }
    }
}

/// How restarts are paced.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Wait before the first restart.
    pub initial: Duration,
    /// The wait doubles after each quick end, up to this.
    pub max: Duration,
    /// A run at least this long counts as healthy: the wait and the
    /// crash-loop count start over.
    pub healthy_after: Duration,
    /// Failures in a row, each before `healthy_after`, that make a service
    /// crash-looping.
    pub crash_loop_after: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(10),
            crash_loop_after: 3,
        }
    }
}

/// State shared between a service's task and those who ask about it.
pub(crate) struct Shared {
    status: watch::Sender<ServiceStatus>,
    pub(crate) logs: Arc<LogBuffer>,
    meter: Arc<MemoryMeter>,
    next_start: Mutex<Option<Instant>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Shared {
    pub(crate) fn new(spec: &ServiceSpec, changed: Arc<watch::Sender<u64>>) -> Arc<Self> {
        let status = ServiceStatus {
            name: spec.name.clone(),
            state: ServiceState::Starting,
            digest: None,
            restarts: 0,
            last_exit: None,
            memory_bytes: 0,
            memory_limit: spec.memory_limit,
            log_lines_dropped: 0,
            next_start_in_ms: None,
        };
        Arc::new(Shared {
            status: watch::channel(status).0,
            logs: LogBuffer::new(),
            meter: Arc::new(MemoryMeter::default()),
            next_start: Mutex::new(None),
            changed,
        })
    }

    fn update(&self, f: impl FnOnce(&mut ServiceStatus)) {
        self.status.send_modify(f);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn set_next_start(&self, at: Option<Instant>) {
        *self.next_start.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    pub(crate) fn snapshot(&self) -> ServiceStatus {
        let mut status = self.status.borrow().clone();
        status.memory_bytes = self.meter.in_use();
        status.log_lines_dropped = self.logs.dropped();
        let next = *self.next_start.lock().unwrap_or_else(|p| p.into_inner());
        status.next_start_in_ms = next.map(|at| {
            u64::try_from(at.saturating_duration_since(Instant::now()).as_millis())
                .unwrap_or(u64::MAX)
        });
        status
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<ServiceStatus> {
        self.status.subscribe()
    }
}

/// A running (or finished) service, as seen from outside.
#[derive(Clone)]
pub struct ServiceHandle {
    pub(crate) spec: Arc<ServiceSpec>,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle")
            .field("name", &self.spec.name)
            .field("state", &self.shared.status.borrow().state)
            .finish()
    }
}

impl ServiceHandle {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// The service's status now, with live memory use.
    pub fn status(&self) -> ServiceStatus {
        self.shared.snapshot()
    }

    /// Its output.
    pub fn logs(&self) -> Arc<LogBuffer> {
        self.shared.logs.clone()
    }

    /// Waits until the status satisfies `done`, and returns that status.
    pub async fn wait_for(&self, mut done: impl FnMut(&ServiceStatus) -> bool) -> ServiceStatus {
        let mut rx = self.shared.subscribe();
        let found = match rx.wait_for(|s| done(s)).await {
            Ok(s) => Some(s.clone()),
            Err(_) => None,
        };
        // The sender lives as long as `self`, so `None` cannot happen; the
        // latest status is the best answer if it did.
        let found = found.unwrap_or_else(|| rx.borrow().clone());
        let mut status = self.shared.snapshot();
        status.state = found.state;
        status.restarts = found.restarts;
        status.last_exit = found.last_exit;
        status
    }

    /// Waits until the supervisor is done with the service (exited, failed,
    /// or stopped).
    pub async fn wait_final(&self) -> ServiceStatus {
        self.wait_for(|s| s.state.is_final()).await
    }
}

/// The task that runs one service until it ends for good or `stop` says so.
pub(crate) async fn supervise(
    runtime: Runtime,
    spec: Arc<ServiceSpec>,
    shared: Arc<Shared>,
    backoff: Backoff,
    mut stop: watch::Receiver<bool>,
) {
    let env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut failures: u32 = 0;
    let mut quick_failures: u32 = 0;
    let mut delay = backoff.initial;
    shared.update(|s| s.state = ServiceState::Starting);
    // Loaded once: restarts reuse it. A changed file is a changed service,
    // which the supervisor replaces as a whole.
    // A service that answers HTTP but is not to be served here is not
    // started at all: no restart would change that (a new map or grant is a
    // new start).
    // A stop that comes while the module is still loading (compiling can
    // take seconds on a small board) starts nothing.
    let load = tokio::select! {
        load = runtime.load_file(&spec.module) => load,
        () = stopped(&mut stop) => {
            tracing::info!(service = %spec.name, "stopped while loading: not run");
            shared.update(|s| s.state = ServiceState::Stopped);
            return;
        }
    };
    let loaded = match load {
        Ok(p) => {
            match crate::serve::unserved(&p, &spec.name, spec.grants.as_ref(), runtime.hardware()) {
                Some(why) => Err(why),
                None => Ok(p),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    let program = match loaded {
        Ok(p) => p,
        Err(message) => {
            tracing::error!(service = %spec.name, error = %message, "cannot start");
            let reason = ExitReason::StartFailed { message };
            shared
                .logs
                .write(Stream::Stderr, format!("kelp: {reason}\n").as_bytes());
            shared.update(|s| {
                s.state = ServiceState::Failed;
                s.last_exit = Some(reason);
            });
            return;
        }
    };
    loop {
        shared.set_next_start(None);
        shared.update(|s| s.state = ServiceState::Starting);
        // A stop that came before this start runs nothing. Checked before
        // the service is said to run: once it is, a stop always reaches the
        // running instance and gives it its grace.
        if *stop.borrow() {
            shared.update(|s| s.state = ServiceState::Stopped);
            break;
        }
        let digest: Digest = program.digest();
        shared.update(|s| {
            s.digest = Some(digest);
            s.state = ServiceState::Running;
        });
        tracing::info!(service = %spec.name, %digest, "started");

        let (stop_tx, stop_signal) = StopSignal::new();
        let started = Instant::now();
        let run = instance::run(
            runtime.engine(),
            &program,
            InstanceIo {
                name: &spec.name,
                hardware: runtime.hardware(),
                grants: spec.grants.as_ref(),
                args: &spec.args,
                env: &env,
                data_dir: spec.data_dir.as_deref(),
                memory_limit: spec.memory_limit,
                logs: &shared.logs,
                meter: &shared.meter,
                stop: stop_signal,
            },
        );
        tokio::pin!(run);
        let mut stopping = false;
        let exit = tokio::select! {
            exit = &mut run => exit,
            () = stopped(&mut stop) => {
                stopping = true;
                shared.update(|s| s.state = ServiceState::Stopping);
                let _ = stop_tx.send(true);
                match tokio::time::timeout(spec.stop_grace, &mut run).await {
                    Ok(exit) => exit,
                    Err(_) => ExitReason::Killed,
                }
            }
        };
        let ran = started.elapsed();
        // A cancelled run never reached its own cleanup.
        shared.meter.reset();
        shared.logs.flush();
        tracing::info!(service = %spec.name, reason = %exit, ran_ms = ran.as_millis() as u64, "ended");
        let success = exit.is_success();
        shared.update(|s| s.last_exit = Some(exit));

        if stopping {
            shared.update(|s| s.state = ServiceState::Stopped);
            break;
        }
        if !success {
            failures += 1;
        }
        let restart = match spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure { max_restarts } => !success && failures <= max_restarts,
        };
        if !restart {
            shared.update(|s| {
                s.state = if success {
                    ServiceState::Exited
                } else {
                    ServiceState::Failed
                }
            });
            break;
        }

        if ran >= backoff.healthy_after {
            delay = backoff.initial;
            quick_failures = 0;
        } else if !success {
            quick_failures += 1;
        }
        let state = if quick_failures >= backoff.crash_loop_after {
            ServiceState::CrashLooping
        } else {
            ServiceState::Restarting
        };
        if state == ServiceState::CrashLooping {
            tracing::warn!(service = %spec.name, failures = quick_failures, wait_ms = delay.as_millis() as u64, "crash-looping");
        }
        shared.set_next_start(Some(Instant::now() + delay));
        shared.update(|s| s.state = state);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut stop) => {
                shared.set_next_start(None);
                shared.update(|s| s.state = ServiceState::Stopped);
                break;
            }
        }
        if ran < backoff.healthy_after {
            delay = (delay * 2).min(backoff.max);
        }
        shared.update(|s| s.restarts += 1);
    }
    shared.set_next_start(None);
}

/// Resolves once a stop is asked for. A supervisor that is gone (the
/// sender dropped) counts as a stop: nothing is left to run the service for.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
