//! `kelp run`: one service, locally, on the same engine a device uses.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use kelp_core::{ByteSize, Grants, RestartPolicy};
use kelp_hostcalls::sim::Simulator;
use kelp_hostcalls::{
    BackendKind, GpioBinding, Hardware, HardwareMap, I2cBinding, LineId, SafeLevel,
};
use kelp_runtime::{
    AllocatorChoice, EngineConfig, LogEvent, Runtime, RuntimeConfig, ServiceSpec, Stream,
    Supervisor,
};

/// Run a service locally and print its output; exit with its status.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The service: a `.wasm` component (wasm32-wasip2) or core module
    /// (wasm32-wasip1).
    file: PathBuf,

    /// Set an environment variable for the service (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,

    /// Pass an argument to the service (repeatable); arguments after `--`
    /// are passed too.
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    arg: Vec<String>,

    /// Memory limit, e.g. 64MiB.
    #[arg(long, default_value = "64MiB")]
    memory: ByteSize,

    /// always, never, or on-failure:N.
    #[arg(long, default_value = "never")]
    restart: RestartPolicy,

    /// Host directory to mount at /data (kept after the run). Without it the
    /// service gets a fresh, empty /data that is removed afterwards.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// Service name (defaults to the file name).
    #[arg(long)]
    name: Option<String>,

    /// Where compiled code is cached.
    #[arg(long, env = "KELP_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Run the file only if this publisher key signed it (repeatable).
    #[arg(long = "public-key", value_name = "FILE")]
    public_keys: Vec<PathBuf>,

    /// Take the service's grants (hardware and network) from this
    /// `kelp.toml` instead of the manifest embedded in the file.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,

    /// Hardware backend: sim (simulated lines and devices; outputs are
    /// printed, inputs read from --sim-set and standard input) or linux.
    #[arg(long, default_value = "sim")]
    hardware: BackendKind,

    /// Which line and bus each label names. With `sim` and no map, each
    /// granted GPIO label gets a simulated line and each I2C label an empty
    /// bus.
    #[arg(long, value_name = "FILE")]
    hardware_map: Option<PathBuf>,

    /// For a service that answers HTTP: serve it on this address (e.g.
    /// 127.0.0.1:8080), as the map's `[http.NAME] listen = ADDR` would.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,

    /// Set a simulated input or device before the service starts:
    /// LABEL=1|0|- or BUS/ADDRESS/PROPERTY=VALUE (e.g.
    /// sensors/0x48/temperature=23.5). Repeatable; lines of the same form
    /// on standard input apply while it runs.
    #[arg(long = "sim-set", value_name = "SETTING")]
    sim_set: Vec<String>,

    /// Instance allocator: auto, pooling or on-demand.
    #[arg(long, env = "KELP_ALLOCATOR", default_value = "auto")]
    allocator: AllocatorChoice,

    /// Arguments for the service.
    #[arg(last = true)]
    rest: Vec<String>,
}

impl RunArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let env = parse_env(&self.env)?;
        let name = match self.name {
            Some(n) => n,
            None => default_name(&self.file),
        };
        let grants = match &self.manifest {
            Some(path) => Some(kelp_core::read_manifest_file(path)?.grants),
            None => None,
        };
        // Read once: the embedded manifest's grants shape a simulated
        // device, and the same bytes are then loaded.
        let bytes = kelp_runtime::read_module(&self.file).await?;
        let manifest_grants = match &grants {
            Some(g) => g.clone(),
            // A file that is not Wasm gets its clear error from the loader.
            None => kelp_core::extract(&bytes)
                .ok()
                .flatten()
                .map(|m| m.grants)
                .unwrap_or_default(),
        };
        let hardware = match &self.hardware_map {
            Some(path) => HardwareMap::load(path)?,
            None if self.hardware == BackendKind::Sim => sim_map(&manifest_grants),
            None => bail!(
                "--hardware linux needs --hardware-map FILE: which line and bus each label names"
            ),
        };
        let mut hardware = hardware;
        if let Some(addr) = self.listen {
            hardware.http.insert(
                name.clone(),
                kelp_core::hardware_map::HttpBinding::Listen(addr),
            );
        }
        let hardware = Hardware::with_backend(self.hardware, hardware);
        if !self.sim_set.is_empty() && hardware.simulator().is_none() {
            bail!("--sim-set needs --hardware sim");
        }
        if let Some(sim) = hardware.simulator() {
            for setting in &self.sim_set {
                sim.set(setting)
                    .map_err(|e| anyhow::anyhow!("--sim-set {e}"))?;
            }
        }
        let runtime = Runtime::new(RuntimeConfig {
            engine: EngineConfig {
                allocator: self.allocator,
                // One service: a slot for it, or, for a service that
                // answers HTTP, one per request it may handle at once.
                pool_slots: u32::try_from(kelp_runtime::MAX_CONCURRENT_REQUESTS + 1)
                    .unwrap_or(u32::MAX),
                ..EngineConfig::default()
            },
            cache_dir: self.cache_dir.or_else(default_cache_dir),
            trusted_keys: self
                .public_keys
                .iter()
                .map(|p| super::key::read_public_key(p))
                .collect::<anyhow::Result<_>>()?,
            hardware: Some(hardware.clone()),
        })?;
        // Load first, so a bad file is one clear error rather than a service
        // that fails to start.
        // Held for the whole run, so the service's own load finds it ready.
        let _program = runtime
            .load_bytes(&self.file.display().to_string(), bytes)
            .await?;

        let scratch;
        let data_dir = match self.data {
            Some(dir) => dir,
            None => {
                scratch = tempfile::Builder::new()
                    .prefix("kelp-run-")
                    .tempdir()
                    .context("cannot create a temporary /data directory")?;
                scratch.path().to_owned()
            }
        };
        let mut args = self.arg;
        args.extend(self.rest);
        let spec = ServiceSpec {
            args,
            env,
            restart: self.restart,
            memory_limit: self.memory,
            data_dir: Some(data_dir),
            grants,
            ..ServiceSpec::new(name, &self.file)
        };
        if let Some(sim) = hardware.simulator() {
            print_outputs(sim);
            read_settings(sim.clone());
        }
        let supervisor = Supervisor::new(runtime);
        let service = supervisor.start(spec)?;
        let logs = service.logs();
        let printer = tokio::spawn(async move {
            while let Some(events) = logs.next().await {
                print_events(&events);
            }
        });
        let status = tokio::select! {
            status = service.wait_final() => status,
            _ = tokio::signal::ctrl_c() => supervisor.stop(service.name()).await?,
        };
        service.logs().close();
        let _ = printer.await;
        let Some(exit) = status.last_exit else {
            return Ok(ExitCode::FAILURE);
        };
        if !exit.is_success() {
            eprintln!("kelp: `{}` {exit}", status.name);
        }
        Ok(ExitCode::from(
            u8::try_from(exit.exit_code() & 0xff).unwrap_or(1),
        ))
    }
}

/// A simulated line for each granted GPIO label and an empty bus for each
/// I2C label, allowing what the grants ask.
fn sim_map(grants: &Grants) -> HardwareMap {
    let mut map = HardwareMap::default();
    for (offset, (label, grant)) in (0u32..).zip(&grants.gpio) {
        map.gpio.insert(
            label.clone(),
            GpioBinding {
                line: LineId {
                    chip: "/dev/gpiochip0".into(),
                    line: offset,
                },
                modes: grant.modes.clone(),
                safe: SafeLevel::Low,
            },
        );
    }
    for (n, (label, grant)) in grants.i2c.iter().enumerate() {
        map.i2c.insert(
            label.clone(),
            I2cBinding {
                bus: format!("/dev/i2c-{n}").into(),
                addresses: Some(grant.addresses.clone()),
            },
        );
    }
    map
}

/// Prints each change of a simulated line: `kelp: sim led = 1`.
fn print_outputs(sim: &Simulator) {
    for (label, line) in sim.lines() {
        let (label, mut events) = (label.to_owned(), line.subscribe());
        tokio::spawn(async move {
            let mut level = events.borrow_and_update().high;
            while events.changed().await.is_ok() {
                let now = events.borrow_and_update().high;
                if now != level {
                    level = now;
                    eprintln!("kelp: sim {label} = {}", u8::from(now));
                }
            }
        });
    }
}

/// Applies `--sim-set` style lines typed on standard input. A plain thread:
/// a read blocked on a terminal must not keep the executor from shutting
/// down when the service ends.
fn read_settings(sim: Arc<Simulator>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Err(e) = sim.set(line) {
                eprintln!("kelp: sim: {e}");
            }
        }
    });
}

fn print_events(events: &[LogEvent]) {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for event in events {
        // A closed pipe (`kelp run x | head`) is the reader's choice, not an
        // error worth a panic.
        let _ = match event {
            LogEvent::Line(line) if line.stream == Stream::Stdout => writeln!(out, "{}", line.text),
            LogEvent::Line(line) => writeln!(err, "{}", line.text),
            LogEvent::Dropped(n) => writeln!(err, "kelp: {n} lines of output dropped"),
        };
    }
    let _ = out.flush();
}

fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env `{pair}` must be KEY=VALUE");
        };
        if key.is_empty() {
            bail!("--env `{pair}` has an empty name");
        }
        env.insert(key.to_owned(), value.to_owned());
    }
    Ok(env)
}

/// A service name from a file name: `Hello_World.wasm` → `hello_world`.
fn default_name(file: &std::path::Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(63)
        .collect();
    if name.is_empty() {
        "service".to_owned()
    } else {
        name
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("kelp").join("compiled"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_need_a_name_and_an_equals_sign() {
        let env = parse_env(&["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["C"], "");
        assert!(
            parse_env(&["NOEQUALS".into()])
                .unwrap_err()
                .to_string()
                .contains("NOEQUALS")
        );
        assert!(parse_env(&["=1".into()]).is_err());
    }

    #[test]
    fn names_come_from_file_names() {
        assert_eq!(default_name("x/hello-p1.wasm".as_ref()), "hello-p1");
        assert_eq!(default_name("My Service.wasm".as_ref()), "my-service");
        assert_eq!(default_name("..wasm".as_ref()), "service");
    }
}
