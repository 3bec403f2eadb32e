//! `kelpd`, the Kelp device supervisor.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use kelp_runtime::device::{self, agent};
use kelp_runtime::{AllocatorChoice, EngineConfig, Runtime, RuntimeConfig};

/// mimalloc rather than the C library's allocator: serving HTTP allocates
/// and frees a store, an instance's bookkeeping and a request's resources
/// for every request, across threads. `benches/http.rs` went from 30,600 to
/// 41,000 requests/s with it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
#[cfg(all(target_os = "linux", target_env = "gnu"))]
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
    let fleet = match &args.config {
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
    let trusted_keys = args
        .trusted_keys
        .iter()
        .map(|path| read_public_key(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
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
        // A device of a fleet may be given a map by its cloud: it needs
        // its backend ready, granting nothing until then.
        None if fleet.is_some() => Some(kelp_hostcalls::Hardware::with_backend(
            args.hardware,
            kelp_hostcalls::HardwareMap::default(),
        )),
        None => None,
    };
    let runtime = Runtime::new(RuntimeConfig {
        engine: EngineConfig {
            allocator: args.allocator,
            pool_slots: args.pool_slots,
            ..EngineConfig::default()
        },
        cache_dir: Some(args.data_dir.join("cache")),
        trusted_keys,
        hardware,
    })?;
    device::run(
        runtime,
        device::Setup {
            local: args.local,
            fleet,
            data_dir: args.data_dir,
            registry_token: args.registry_token,
        },
    )
    .await
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
