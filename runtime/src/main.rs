//! `kelpd`, the Kelp device supervisor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kelp_core::api::ServiceReport;
use kelp_runtime::images::ImageStore;
use kelp_runtime::{
    AllocatorChoice, EngineConfig, LogEvent, Runtime, RuntimeConfig, ServiceHandle, Stream,
    Supervisor, agent, local,
};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};

/// Status is written at most this often, so a crash-looping service does not
/// wear out a device's flash.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(200);

/// The Kelp device supervisor: runs WebAssembly services side by side.
#[derive(Parser, Debug)]
#[command(name = "kelpd", version)]
struct Args {
    /// Run the services listed in this target file, without a cloud. Edit it
    /// and send SIGHUP to apply the change.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    local: Option<PathBuf>,

    /// Join a fleet: register with the cloud this file names and run what
    /// it says (see the format in kelpd's `agent` module documentation).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Where services keep their `/data`, the compile cache, and status.
    #[arg(long, env = "KELP_DATA_DIR", default_value = "/var/lib/kelp")]
    data_dir: PathBuf,

    /// Instance allocator: auto (pooling if the address space allows),
    /// pooling, or on-demand.
    #[arg(long, env = "KELP_ALLOCATOR", default_value = "auto")]
    allocator: AllocatorChoice,

    /// A publisher public key (wasmsign2's raw format, as `kelp key generate`
    /// writes it) this device trusts; repeat for several. When any are given,
    /// only modules one of them signed run. Services from a registry
    /// (`image =`) need at least one.
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,

    /// The device's hardware map: which GPIO line and I2C bus each label
    /// names, and what services may do with them. Without one, services
    /// are granted no hardware.
    #[arg(long, env = "KELP_HARDWARE_MAP", value_name = "FILE")]
    hardware_map: Option<PathBuf>,

    /// Hardware backend: linux (the kernel's GPIO character devices and
    /// i2c-dev) or sim (simulated lines and devices, for trying services
    /// without a board).
    #[arg(long, env = "KELP_HARDWARE", default_value = "linux")]
    hardware: kelp_hostcalls::BackendKind,

    /// Token for the registries `image =` services are pulled from, when
    /// they need one to pull (prefer the environment variable: arguments
    /// are visible to every user of the device).
    #[arg(long, env = "KELP_REGISTRY_TOKEN", hide_env_values = true)]
    registry_token: Option<String>,

    /// Services the pooling allocator makes room for.
    #[arg(long, env = "KELP_POOL_SLOTS", default_value_t = kelp_runtime::DEFAULT_POOL_SLOTS)]
    pool_slots: u32,
}

/// malloc arenas glibc may create. By default it makes up to eight per core,
/// one per thread that allocates, and each keeps memory of its own; a
/// supervisor is not allocation-bound, so two is plenty.
const MALLOC_ARENAS: libc::c_int = 2;

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
    init_tracing();
    let args = Args::parse();
    let rt = match kelp_runtime::executor(None).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KELP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => {
            let config = agent::Config::load(path)?;
            // The config file speaks for the device; flags fill in the rest.
            if let Some(dir) = &config.data_dir {
                args.data_dir = dir.clone();
            }
            args.trusted_keys
                .extend(config.trusted_keys.iter().cloned());
            if config.hardware_map.is_some() {
                args.hardware_map = config.hardware_map.clone();
            }
            if let Some(hardware) = config.hardware {
                args.hardware = hardware;
            }
            Some(config)
        }
        None => None,
    };
    let services_dir = args.data_dir.join("services");
    let cache_dir = args.data_dir.join("cache");
    std::fs::create_dir_all(&services_dir)
        .with_context(|| format!("cannot create data directory `{}`", services_dir.display()))?;
    let target = match &args.local {
        Some(path) => Some(local::load(path, &services_dir)?),
        None => None,
    };
    // Who the device is, before anything runs: a device that cannot
    // register says so at once.
    let fleet = match config {
        Some(config) => {
            let store = agent::Store::open(&args.data_dir)?;
            let uuid = store.uuid()?;
            if store.key()?.is_none() && config.provisioning_key.is_none() {
                return Err(agent::AgentError::NoProvisioningKey.into());
            }
            Some((config, store, uuid))
        }
        None => None,
    };
    let trusted_keys = args
        .trusted_keys
        .iter()
        .map(|path| read_public_key(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let device = Arc::new(Device {
        images: (!trusted_keys.is_empty())
            .then(|| ImageStore::new(args.data_dir.join("blobs"), args.registry_token.clone())),
        refused: Arc::default(),
    });
    if device.images.is_none() {
        tracing::warn!(
            "no --trusted-key given: module signatures are not checked, and services from a registry do not run"
        );
    }

    let hardware = match &args.hardware_map {
        Some(path) => {
            let map = kelp_hostcalls::HardwareMap::load(path)?;
            tracing::info!(
                map = %path.display(),
                gpio = map.gpio.len(),
                i2c = map.i2c.len(),
                backend = ?args.hardware,
                "hardware map loaded"
            );
            Some(kelp_hostcalls::Hardware::with_backend(args.hardware, map))
        }
        None => None,
    };

    let runtime = Runtime::new(RuntimeConfig {
        engine: EngineConfig {
            allocator: args.allocator,
            pool_slots: args.pool_slots,
            ..EngineConfig::default()
        },
        cache_dir: Some(cache_dir),
        trusted_keys,
        hardware,
    })?;
    match (&args.local, &fleet) {
        (Some(local), _) => {
            tracing::info!(allocator = %runtime.allocator(), local = %local.display(), "kelpd starting");
        }
        (None, Some((config, _, uuid))) => {
            tracing::info!(allocator = %runtime.allocator(), cloud = %config.cloud, %uuid, "kelpd starting");
        }
        (None, None) => {}
    }
    let supervisor = Arc::new(Supervisor::new(runtime).on_start(forward_logs));

    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let status_path = args.data_dir.join("status.json");
    let status_writer = tokio::spawn(write_status(
        supervisor.clone(),
        device.refused.clone(),
        status_path.clone(),
    ));

    let mut following = fleet.map(|(config, store, uuid)| {
        tokio::spawn(follow_cloud(Agent {
            config,
            store,
            uuid,
            supervisor: supervisor.clone(),
            device: device.clone(),
            services_dir: services_dir.clone(),
            status_path: status_path.clone(),
        }))
    });
    let mut next = target;
    let mut failed = None;
    loop {
        if let Some(target) = next.take() {
            // Fetching an image can take minutes on a slow link: a stop
            // request does not wait for it (a partial download resumes on
            // the next start).
            tokio::select! {
                () = device.apply(&supervisor, target) => {
                    save_status(&supervisor, &device.refused, &status_path);
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        tokio::select! {
            _ = hangup.recv() => {
                let Some(path) = &args.local else {
                    tracing::info!("SIGHUP: the cloud gives this device its target; nothing to reload");
                    continue;
                };
                match local::load(path, &services_dir) {
                    Ok(target) => next = Some(target),
                    // A broken edit must not take down what runs: keep the
                    // current set and say why.
                    Err(e) => tracing::error!(error = %e, "not applying target file"),
                }
            }
            ended = async {
                match following.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                following = None;
                failed = Some(match ended {
                    Ok(Ok(())) => anyhow::anyhow!("stopped following the cloud"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("the cloud agent failed: {e}"),
                });
                break;
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    if let Some(task) = following {
        task.abort();
        let _ = task.await;
    }
    tracing::info!("stopping services");
    supervisor.shutdown().await;
    status_writer.abort();
    save_status(&supervisor, &device.refused, &status_path);
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What the agent that follows the cloud works with.
struct Agent {
    config: agent::Config,
    store: agent::Store,
    uuid: String,
    supervisor: Arc<Supervisor>,
    device: Arc<Device>,
    services_dir: PathBuf,
    status_path: PathBuf,
}

/// Follows the cloud: registers if the device has no key yet, then runs
/// each new target the cloud gives and reports what runs. The cloud being
/// unreachable only delays this: services keep running, and it tries again
/// after a backoff. Returns only on an error no retry can fix.
async fn follow_cloud(agent: Agent) -> anyhow::Result<()> {
    let Agent {
        config,
        store,
        uuid,
        supervisor,
        device,
        services_dir,
        status_path,
    } = agent;
    let cloud = agent::Cloud::new(&config.cloud)?;
    // What ran last, from disk: the cloud may be out of reach for a while.
    let mut current = match store.target() {
        Ok(saved) => saved,
        Err(e) => {
            tracing::error!(error = %e, "not starting the last target");
            None
        }
    };
    if let Some(saved) = &current {
        tracing::info!(release = ?saved.target.release, "starting the last target applied");
        device
            .apply_cloud(&supervisor, &saved.target, &services_dir)
            .await;
        save_status(&supervisor, &device.refused, &status_path);
    }
    let mut key = store.key()?;
    let mut told = BTreeMap::new();
    let mut told_release: Option<String> = None;
    let mut failures = 0u32;
    let changes = supervisor.changes();
    loop {
        if failures > 0 {
            tokio::time::sleep(agent::retry_after(failures - 1)).await;
        }
        let device_key = match &key {
            Some(k) => k.clone(),
            None => {
                let Some(provisioning) = &config.provisioning_key else {
                    return Err(agent::AgentError::NoProvisioningKey.into());
                };
                match cloud
                    .register(provisioning, &uuid, config.device_name.as_deref())
                    .await
                {
                    Ok(registered) => {
                        if let Some(want) = &config.fleet
                            && *want != registered.fleet
                        {
                            return Err(agent::AgentError::WrongFleet {
                                want: want.clone(),
                                got: registered.fleet,
                            }
                            .into());
                        }
                        store.save_key(&registered.device_key)?;
                        tracing::info!(%uuid, fleet = %registered.fleet, "registered");
                        key = Some(registered.device_key.clone());
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
        let release = current
            .as_ref()
            .and_then(|c| c.target.release.as_ref())
            .map(|r| r.id.clone());
        let now: BTreeMap<String, ServiceReport> = supervisor
            .status()
            .into_iter()
            .map(|s| {
                let report = ServiceReport {
                    state: s.state,
                    memory: Some(s.memory_bytes),
                };
                (s.name, report)
            })
            .collect();
        let report = agent::changes(release.as_deref(), &now, &told);
        if !report.services.is_empty() || (release.is_some() && release != told_release) {
            match cloud.report(&device_key, &report).await {
                Ok(()) => {
                    told = now;
                    told_release = release;
                }
                Err(e) => {
                    failures += 1;
                    if matches!(e, agent::AgentError::KeyRefused) {
                        forget_key(&config, &mut key);
                    }
                    tracing::warn!(error = %e, "cannot report the device's state; trying again");
                    continue;
                }
            }
        }
        let etag = current.as_ref().map(|c| c.etag.clone());
        let poll = tokio::select! {
            poll = cloud.target(&device_key, etag.as_deref(), agent::POLL_WAIT) => poll,
            // A service changed: report it (a moment later, so a burst of
            // changes is one report), then ask again.
            () = changes.notified() => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match poll {
            Ok(agent::Poll::Unchanged) => failures = 0,
            Ok(agent::Poll::Changed(saved)) => {
                failures = 0;
                tracing::info!(release = ?saved.target.release, "new target from the cloud");
                device
                    .apply_cloud(&supervisor, &saved.target, &services_dir)
                    .await;
                save_status(&supervisor, &device.refused, &status_path);
                if let Err(e) = store.save_target(&saved) {
                    tracing::error!(error = %e, "cannot keep the target for the next start");
                }
                current = Some(saved);
            }
            Err(e) => {
                failures += 1;
                if matches!(e, agent::AgentError::KeyRefused) {
                    forget_key(&config, &mut key);
                }
                tracing::warn!(error = %e, "cannot get the target; trying again");
            }
        }
    }
}

/// After the cloud refused the device key: register again, if the config
/// gives a provisioning key to do it with.
fn forget_key(config: &agent::Config, key: &mut Option<String>) {
    if config.provisioning_key.is_some() {
        *key = None;
    }
}

/// Services of the target that do not run as it says, with why: for
/// status.json, beside the services that run.
type Refused = Arc<Mutex<BTreeMap<String, String>>>;

struct Device {
    /// `None` without a trusted key: such a device runs no images.
    images: Option<ImageStore>,
    refused: Refused,
}

impl Device {
    async fn apply(&self, supervisor: &Supervisor, target: Vec<local::TargetService>) {
        let (report, refused) = local::apply(supervisor, self.images.as_ref(), target).await;
        log_report(&report);
        // Rejected, kept on its old version, or its image refused.
        for (name, why) in &refused {
            tracing::error!(service = %name, %why, "refused");
        }
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = refused;
    }

    /// Applies a target from the cloud; services it names wrongly are
    /// refused, with why, beside those [`Device::apply`] refuses.
    async fn apply_cloud(
        &self,
        supervisor: &Supervisor,
        target: &kelp_core::api::TargetState,
        services_dir: &Path,
    ) {
        let (services, bad) = agent::services(target, services_dir);
        self.apply(supervisor, services).await;
        for (name, why) in &bad {
            tracing::error!(service = %name, %why, "refused");
        }
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(bad);
    }
}

fn read_public_key(path: &Path) -> anyhow::Result<kelp_core::PublicKey> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read trusted key `{}`", path.display()))?;
    let mut bytes = Vec::new();
    file.take(kelp_core::MAX_KEY_FILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read trusted key `{}`", path.display()))?;
    kelp_core::PublicKey::from_bytes(&bytes)
        .with_context(|| format!("trusted key `{}`", path.display()))
}

fn log_report(report: &kelp_runtime::ApplyReport) {
    tracing::info!(
        started = ?report.started,
        stopped = ?report.stopped,
        restarted = ?report.restarted,
        unchanged = ?report.unchanged,
        "applied target"
    );
}

/// Prints a service's output on kelpd's stdout, one line per line, as
/// `<time> <service> | <text>`.
fn forward_logs(service: &ServiceHandle) {
    let name = service.name().to_owned();
    let logs = service.logs();
    tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(events) = logs.next().await {
            let mut text = String::new();
            for event in events {
                match event {
                    LogEvent::Line(line) => {
                        let stamp = humantime::format_rfc3339_millis(line.at);
                        let mark = if line.stream == Stream::Stderr {
                            '!'
                        } else {
                            '|'
                        };
                        text.push_str(&format!("{stamp} {name} {mark} {}\n", line.text));
                    }
                    LogEvent::Dropped(n) => {
                        text.push_str(&format!(
                            "{name} ! kelp: {n} lines dropped (output faster than delivery)\n"
                        ));
                    }
                }
            }
            if out.write_all(text.as_bytes()).await.is_err() || out.flush().await.is_err() {
                return;
            }
        }
    });
}

async fn write_status(supervisor: Arc<Supervisor>, refused: Refused, path: PathBuf) {
    let changes = supervisor.changes();
    loop {
        changes.notified().await;
        tokio::time::sleep(STATUS_DEBOUNCE).await;
        save_status(&supervisor, &refused, &path);
    }
}

fn save_status(supervisor: &Supervisor, refused: &Refused, path: &Path) {
    let refused: Vec<serde_json::Value> = refused
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(name, reason)| serde_json::json!({ "name": name, "reason": reason }))
        .collect();
    let status = serde_json::json!({
        "allocator": supervisor.runtime().allocator(),
        "services": supervisor.status(),
        "refused": refused,
    });
    let result = serde_json::to_vec_pretty(&status)
        .map_err(std::io::Error::other)
        .and_then(|bytes| kelp_core::fsutil::write_atomic(path, &bytes));
    if let Err(error) = result {
        tracing::warn!(%error, path = %path.display(), "cannot write status");
    }
}
