//! The set of services on a device, and moving it to a new set.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kelp_core::api::UpdateStrategy;
use kelp_core::{Digest, ServiceState, ServiceStatus};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Runtime;
use crate::program::Program;
use crate::service::{Backoff, ServiceHandle, ServiceSpec, Shared, supervise};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("a service named `{0}` is already running")]
    Duplicate(String),
    #[error("no service named `{0}`")]
    Unknown(String),
    #[error(
        "service name `{0}` must be 1 to 63 characters of lowercase letters, digits, `-` and `_`, starting with a letter or digit"
    )]
    BadName(String),
    #[error(
        "service `{name}` asks for {asked} of memory; this device allows at most {max} per service"
    )]
    MemoryTooLarge {
        name: String,
        asked: kelp_core::ByteSize,
        max: kelp_core::ByteSize,
    },
}

/// What [`Supervisor::apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
    /// Services left out of the new set, with the reason.
    pub rejected: Vec<(String, String)>,
    /// Changed services whose new module did not load (unreadable, invalid,
    /// not signed by a trusted key), with the reason. Their running version
    /// was not touched.
    pub kept: Vec<(String, String)>,
}

struct Entry {
    handle: ServiceHandle,
    /// Digest of the module file when the service was started, to notice a
    /// file replaced in place.
    module_digest: Option<Digest>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The program loaded before the service started, held so the
    /// service's own load finds it in memory instead of loading it again.
    _program: Option<Arc<Program>>,
}

/// Longest a handed-over service's old version waits for the new one to
/// start.
const HAND_OVER_WAIT: Duration = Duration::from_secs(30);

/// Runs services side by side on one [`Runtime`].
pub struct Supervisor {
    runtime: Runtime,
    backoff: Backoff,
    services: Mutex<BTreeMap<String, Entry>>,
    changed: Arc<watch::Sender<u64>>,
    on_start: Option<OnStart>,
}

/// Called with each service as it is started, to attach log readers.
pub type OnStart = Arc<dyn Fn(&ServiceHandle) + Send + Sync>;

impl Supervisor {
    pub fn new(runtime: Runtime) -> Self {
        Supervisor::with_backoff(runtime, Backoff::default())
    }

    pub fn with_backoff(runtime: Runtime, backoff: Backoff) -> Self {
        Supervisor {
            runtime,
            backoff,
            services: Mutex::default(),
            changed: Arc::new(watch::Sender::new(0)),
            on_start: None,
        }
    }

    /// Calls `f` with every service this supervisor starts from now on.
    pub fn on_start(mut self, f: impl Fn(&ServiceHandle) + Send + Sync + 'static) -> Self {
        self.on_start = Some(Arc::new(f));
        self
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes whenever any service's status changes (or services are
    /// added): each receiver sees every change, however many there are.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn check(&self, spec: &ServiceSpec) -> Result<(), SupervisorError> {
        if !kelp_core::valid_service_name(&spec.name) {
            return Err(SupervisorError::BadName(spec.name.clone()));
        }
        let max = self.runtime.max_service_memory();
        if spec.memory_limit > max {
            return Err(SupervisorError::MemoryTooLarge {
                name: spec.name.clone(),
                asked: spec.memory_limit,
                max,
            });
        }
        Ok(())
    }

    /// Starts a service. It runs in the background; the handle tells how it
    /// goes.
    pub fn start(&self, spec: ServiceSpec) -> Result<ServiceHandle, SupervisorError> {
        self.start_loaded(spec, None)
    }

    fn start_loaded(
        &self,
        spec: ServiceSpec,
        program: Option<Arc<Program>>,
    ) -> Result<ServiceHandle, SupervisorError> {
        self.check(&spec)?;
        let mut services = self.lock();
        // A service whose run is over (its final state published, its
        // store and hardware already released) may be started again even
        // while its task is still returning.
        if services
            .get(&spec.name)
            .is_some_and(|e| !e.task.is_finished() && !e.handle.status().state.is_final())
        {
            return Err(SupervisorError::Duplicate(spec.name));
        }
        let entry = self.spawn(spec, program);
        let handle = entry.handle.clone();
        if let Some(f) = &self.on_start {
            f(&handle);
        }
        services.insert(handle.name().to_owned(), entry);
        Ok(handle)
    }

    fn spawn(&self, spec: ServiceSpec, program: Option<Arc<Program>>) -> Entry {
        // A loaded program is the file's digest already.
        let module_digest = match &program {
            Some(p) => Some(p.digest()),
            None => file_digest(&spec),
        };
        if let Some(dir) = &spec.data_dir
            && let Err(error) = create_private_dir(dir)
        {
            tracing::warn!(service = %spec.name, %error, dir = %dir.display(), "cannot create data directory");
        }
        let spec = Arc::new(spec);
        let shared = Shared::new(&spec, self.changed.clone());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            self.runtime.clone(),
            spec.clone(),
            shared.clone(),
            self.backoff,
            stop_rx,
        ));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        Entry {
            handle: ServiceHandle { spec, shared },
            module_digest,
            stop,
            task,
            _program: program,
        }
    }

    pub fn service(&self, name: &str) -> Option<ServiceHandle> {
        self.lock().get(name).map(|e| e.handle.clone())
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        self.lock().values().map(|e| e.handle.status()).collect()
    }

    /// Stops a service: its stdin closes, it has its grace period to exit,
    /// then it is cancelled. Returns its final status.
    pub async fn stop(&self, name: &str) -> Result<ServiceStatus, SupervisorError> {
        let entry = self
            .lock()
            .remove(name)
            .ok_or_else(|| SupervisorError::Unknown(name.to_owned()))?;
        Ok(stop_entry(entry).await)
    }

    /// Stops a service and starts it again from the same spec.
    pub async fn restart(&self, name: &str) -> Result<ServiceHandle, SupervisorError> {
        let entry = self
            .lock()
            .remove(name)
            .ok_or_else(|| SupervisorError::Unknown(name.to_owned()))?;
        let spec = (*entry.handle.spec).clone();
        stop_entry(entry).await;
        self.start(spec)
    }

    /// Moves the running set to `specs`: new names start, missing names stop,
    /// changed specs (or module files whose contents changed) restart, and the
    /// rest are left alone. A changed service restarts only once its new
    /// module has loaded; if it does not load, the running version is left
    /// alone and the reason is in [`ApplyReport::kept`].
    pub async fn apply(&self, specs: Vec<ServiceSpec>) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut wanted = BTreeMap::new();
        for spec in specs {
            match self.check(&spec) {
                Ok(()) => {
                    wanted.insert(spec.name.clone(), spec);
                }
                Err(e) => report.rejected.push((spec.name.clone(), e.to_string())),
            }
        }
        // The module files of services that run now are read and hashed
        // before the lock is taken: status readers and starts must not wait
        // on the disk.
        let running: Vec<String> = self
            .lock()
            .keys()
            .filter(|name| wanted.contains_key(*name))
            .cloned()
            .collect();
        let digests: BTreeMap<String, Option<Digest>> = running
            .into_iter()
            .map(|name| {
                let digest = file_digest(&wanted[&name]);
                (name, digest)
            })
            .collect();
        // First decide, touching nothing.
        let mut gone = Vec::new();
        let mut changed = Vec::new();
        let mut new = Vec::new();
        {
            let services = self.lock();
            gone.extend(
                services
                    .keys()
                    .filter(|name| !wanted.contains_key(*name))
                    .cloned(),
            );
            for (name, spec) in wanted {
                match services.get(&name) {
                    None => new.push(spec),
                    Some(e)
                        if *e.handle.spec == spec
                            && digests.get(&name).is_some_and(|d| e.module_digest == *d) =>
                    {
                        report.unchanged.push(name);
                    }
                    Some(_) => changed.push(spec),
                }
            }
        }
        // Then load what replaces a running service, while it still runs.
        let mut replacing = Vec::new();
        for spec in changed {
            match self.runtime.load_file(&spec.module).await {
                Ok(program) => replacing.push((spec, program)),
                Err(e) => {
                    tracing::warn!(service = %spec.name, error = %e, "new version refused; the running one stays");
                    report.kept.push((spec.name, e.to_string()));
                }
            }
        }
        let mut to_stop = Vec::new();
        let mut to_start = Vec::new();
        let mut hand_overs = Vec::new();
        {
            let mut services = self.lock();
            for name in gone {
                if let Some(entry) = services.remove(&name) {
                    to_stop.push(entry);
                    report.stopped.push(name);
                }
            }
            for (spec, program) in replacing {
                report.restarted.push(spec.name.clone());
                let old = services.remove(&spec.name);
                match old {
                    Some(old) if spec.update == UpdateStrategy::HandOver => {
                        hand_overs.push((spec, program, old));
                    }
                    old => {
                        to_stop.extend(old);
                        to_start.push((spec, Some(program)));
                    }
                }
            }
        }
        for spec in new {
            report.started.push(spec.name.clone());
            to_start.push((spec, None));
        }
        futures_join(to_stop.into_iter().map(stop_entry)).await;
        for (spec, program) in to_start {
            if let Err(e) = self.start_loaded(spec.clone(), program) {
                report.rejected.push((spec.name, e.to_string()));
            }
        }
        // The new version starts beside the old, which stops once the new
        // one runs (or has ended, or has had its time to start).
        for (spec, program, old) in hand_overs {
            match self.start_loaded(spec.clone(), Some(program)) {
                Ok(new) => {
                    let started = new.wait_for(|s| s.state != ServiceState::Starting);
                    if tokio::time::timeout(HAND_OVER_WAIT, started).await.is_err() {
                        tracing::warn!(service = %spec.name, "new version still starting; stopping the old one anyway");
                    }
                }
                Err(e) => report.rejected.push((spec.name, e.to_string())),
            }
            stop_entry(old).await;
        }
        report
    }

    /// Stops every service, each with its grace period, all at once. They
    /// stay listed, stopped, so their final status can still be read.
    pub async fn shutdown(&self) {
        let mut entries = std::mem::take(&mut *self.lock());
        // Every stop is sent before any is awaited, so the grace periods run
        // side by side; the tasks stay in their entries, finished.
        for entry in entries.values() {
            let _ = entry.stop.send(true);
        }
        for entry in entries.values_mut() {
            let _ = (&mut entry.task).await;
            entry.handle.shared.logs.close();
        }
        self.lock().extend(entries);
    }
}

async fn stop_entry(entry: Entry) -> ServiceStatus {
    let _ = entry.stop.send(true);
    let _ = entry.task.await;
    entry.handle.shared.logs.close();
    entry.handle.status()
}

async fn futures_join<F: std::future::Future<Output = ServiceStatus> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    for task in tasks {
        let _ = task.await;
    }
}

fn file_digest(spec: &ServiceSpec) -> Option<Digest> {
    let bytes = std::fs::read(&spec.module).ok()?;
    Some(Digest::from_bytes(Sha256::digest(&bytes).into()))
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
