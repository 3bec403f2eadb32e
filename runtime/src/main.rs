//! `kelpd`, the Kelp device supervisor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kelp_runtime::images::ImageStore;
use kelp_runtime::{
    AllocatorChoice, EngineConfig, LogEvent, Runtime, RuntimeConfig, ServiceHandle, Stream,
    Supervisor, local,
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
    #[arg(long, value_name = "FILE")]
    local: PathBuf,

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

async fn run(args: Args) -> anyhow::Result<()> {
    let services_dir = args.data_dir.join("services");
    let cache_dir = args.data_dir.join("cache");
    std::fs::create_dir_all(&services_dir)
        .with_context(|| format!("cannot create data directory `{}`", services_dir.display()))?;
    let target = local::load(&args.local, &services_dir)?;
    let trusted_keys = args
        .trusted_keys
        .iter()
        .map(|path| read_public_key(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let device = Device {
        images: (!trusted_keys.is_empty())
            .then(|| ImageStore::new(args.data_dir.join("blobs"), args.registry_token.clone())),
        refused: Arc::default(),
    };
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
    tracing::info!(allocator = %runtime.allocator(), local = %args.local.display(), "kelpd starting");
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

    let mut next = Some(target);
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
                match local::load(&args.local, &services_dir) {
                    Ok(target) => next = Some(target),
                    // A broken edit must not take down what runs: keep the
                    // current set and say why.
                    Err(e) => tracing::error!(error = %e, "not applying target file"),
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("stopping services");
    supervisor.shutdown().await;
    status_writer.abort();
    save_status(&supervisor, &device.refused, &status_path);
    Ok(())
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
