//! `kelp demo`: a whole fleet on this machine, in one command.
//!
//! Starts `kelp-cloud` in a data directory, builds the sample services,
//! signs them with a key made for the demo, pushes them to the cloud's
//! registry as a release of fleet `demo`, and starts a device — `kelpd`
//! with simulated hardware — provisioned into that fleet. Both are real
//! processes, found next to this `kelp`, talking HTTP as they would across
//! a network. Everything lives in the data directory, so a second run
//! picks up the same cloud, token, key and device.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use kelp_client::{Client as Cloud, LogQuery, Scope};
use kelp_core::api::{DeviceView, NewRelease, ServiceSpec, StoredLogLine, UpdateStrategy};
use kelp_core::{Manifest, SecretKey};
use kelp_registry::{Client, ManifestRef, Reference, RepoName, Tag};
use sha2::Digest as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// Where the sample services' sources are when `kelp` runs from its
/// repository.
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sample-modules");

/// The fleet the demo device joins.
const FLEET: &str = "demo";

/// The samples the demo release runs, with the variables each starts with.
const SERVICES: &[(&str, &[(&str, &str)])] = &[
    ("blinky", &[("BLINK_MS", "1000")]),
    ("thermometer", &[("INTERVAL_MS", "2000")]),
];

/// How long the cloud may take to say where it listens. A fresh SQLite
/// database is migrated first; on a slow board that is a few seconds.
const CLOUD_START: Duration = Duration::from_secs(60);

/// How long the device may take to register and run the release: it
/// downloads and compiles every service first.
const DEVICE_START: Duration = Duration::from_secs(180);

/// How long each process gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// How often the terminal's log view asks the cloud for new lines.
const LOG_POLL: Duration = Duration::from_secs(1);

/// Run a cloud, a device with simulated hardware and the sample services,
/// all on this machine.
///
/// Prints the dashboard's address and the API token to sign in with, then
/// the device's log lines as they arrive. Ctrl-C stops everything; running
/// it again with the same --data reuses the cloud, the key and the device.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the cloud, the device and the demo's signing key keep their
    /// data.
    #[arg(long, value_name = "DIR", default_value = "kelp-demo")]
    data: PathBuf,

    /// Address the cloud (dashboard, API and registry) listens on; port 0
    /// picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// The sample services' sources [default: the sample-modules folder of
    /// the repository this kelp was built from].
    #[arg(long, value_name = "DIR", default_value = SAMPLES, hide_default_value = true)]
    samples: PathBuf,
}

impl DemoArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let kelp_cloud = sibling("kelp-cloud")?;
        let kelpd = sibling("kelpd")?;
        let samples = self.samples.clone();
        for (name, _) in SERVICES {
            if !samples.join(name).join("kelp.toml").exists() {
                bail!(
                    "no sample service `{name}` in `{}`: give the repository's sample-modules with --samples",
                    samples.display()
                );
            }
        }
        // The wasm targets the samples build for, before anything starts.
        for (name, _) in SERVICES {
            let manifest = kelp_core::read_manifest_file(&samples.join(name).join("kelp.toml"))?;
            crate::build::ensure_target(crate::build::target_for(manifest.kind))?;
        }
        std::fs::create_dir_all(&self.data)
            .with_context(|| format!("cannot create `{}`", self.data.display()))?;
        let data = std::fs::canonicalize(&self.data)
            .with_context(|| format!("cannot find `{}`", self.data.display()))?;

        let mut stop = Box::pin(stop_signal()?);
        let mut cloud_proc = Process::start(
            "kelp-cloud",
            Command::new(&kelp_cloud)
                .arg("serve")
                .arg("--data")
                .arg(data.join("cloud"))
                .arg("--listen")
                .arg(self.listen.to_string()),
            &data.join("cloud.log"),
        )?;
        let addr = tokio::select! {
            addr = cloud_proc.wait_for_address() => addr?,
            () = &mut stop => return Ok(stop_all(vec![cloud_proc]).await),
        };
        let url = format!("http://{addr}");
        let token = read_trimmed(&data.join("cloud/admin.token"))?;
        let cloud = Cloud::new(&url, token.clone())?;
        eprintln!(
            "cloud: listening on {url} (log: {})",
            data.join("cloud.log").display()
        );

        let setup = async {
            let key = demo_key(&data)?;
            let provisioning_key = fleet(&cloud, &data).await?;
            let map = samples.join("hardware-sim.toml");
            let map = std::fs::read_to_string(&map)
                .with_context(|| format!("cannot read `{}`", map.display()))?;
            cloud.set_hardware_map(Scope::Fleet(FLEET), &map).await?;
            let version = publish(&cloud, &url, &token, &key, &samples).await?;
            let config = device_config(&data, &url, &provisioning_key)?;
            anyhow::Ok((version, config))
        };
        let (version, config) = tokio::select! {
            done = setup => match done {
                Ok(done) => done,
                Err(e) => {
                    stop_all(vec![cloud_proc]).await;
                    return Err(e);
                }
            },
            () = &mut stop => return Ok(stop_all(vec![cloud_proc]).await),
        };
        let device_proc = Process::start(
            "kelpd",
            Command::new(&kelpd).arg("--config").arg(&config),
            &data.join("device.log"),
        )?;
        let mut procs = vec![cloud_proc, device_proc];
        let uuid = read_trimmed(&data.join("device/device/uuid")).ok();
        let ready = tokio::select! {
            ready = wait_for_device(&cloud, &data, &version) => ready,
            () = &mut stop => return Ok(stop_all(procs).await),
            ended = first_exit(&mut procs) => Err(ended),
        };
        let device = match ready {
            Ok(device) => device,
            Err(e) => {
                stop_all(procs).await;
                return Err(e);
            }
        };
        if uuid.is_some_and(|u| u == device.uuid) {
            eprintln!("device: {} again, from {}", device.name, data.display());
        }
        println!();
        println!(
            "Kelp is running: a cloud, and device `{}` in fleet `{FLEET}` running release {version}.",
            device.name
        );
        println!();
        println!("  dashboard   {url}/");
        println!("  API token   {token}");
        println!("  data        {}", data.display());
        println!();
        println!("Sign in with the token. The kelp CLI works too:");
        println!("  kelp login {url} --token {token}");
        println!("Ctrl-C stops everything; `kelp demo` again picks up where this left off.");
        println!();

        // The last few lines first, then each as it arrives.
        let mut after = 0;
        if let Ok(lines) = recent_lines(&cloud, &device.uuid).await {
            for l in lines {
                after = l.id;
                println!("{:<12} {}", l.service, l.line);
            }
        }
        let outcome = loop {
            tokio::select! {
                () = &mut stop => break Ok(()),
                ended = first_exit(&mut procs) => break Err(ended),
                () = tokio::time::sleep(LOG_POLL) => {
                    // The log view is a nicety: a missed poll is tried again.
                    if let Ok(lines) = new_lines(&cloud, &device.uuid, after).await {
                        for l in lines {
                            after = l.id;
                            println!("{:<12} {}", l.service, l.line);
                        }
                    }
                }
            }
        };
        stop_all(procs).await;
        outcome.map(|()| ExitCode::SUCCESS)
    }
}

/// A binary beside the running `kelp`.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running kelp")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "`{name}` is not next to kelp (looked for `{}`); build all three with \
             `cargo build --release -p kelp-cli -p kelp-cloud -p kelp-runtime`",
            path.display()
        );
    }
    Ok(path)
}

fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?
        .trim()
        .to_owned())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// A child process whose output goes to a log file.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(name: &'static str, cmd: &mut Command, log: &Path) -> anyhow::Result<Process> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open `{}`", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Process {
            name,
            child,
            log: log.to_owned(),
        })
    }

    /// The address the cloud prints once it listens.
    async fn wait_for_address(&mut self) -> anyhow::Result<String> {
        let Some(out) = self.child.stdout.take() else {
            bail!("{} has no output to read", self.name);
        };
        let mut lines = BufReader::new(out).lines();
        let found = tokio::time::timeout(CLOUD_START, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    return Some(addr.to_owned());
                }
            }
            None
        })
        .await;
        // The rest of its output is not needed; it must not block on a
        // full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        match found {
            Ok(Some(addr)) => Ok(addr),
            Ok(None) => bail!("{} stopped before it listened; {}", self.name, self.tail()),
            Err(_) => bail!(
                "{} did not listen within {CLOUD_START:?}; {}",
                self.name,
                self.tail()
            ),
        }
    }

    /// The end of its log, for an error.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        let lines: Vec<&str> = lines.into_iter().rev().collect();
        format!(
            "the end of `{}`:\n  {}",
            self.log.display(),
            lines.join("\n  ")
        )
    }

    /// Asks it to stop, and kills it if it has not within [`STOP_GRACE`].
    async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) only sends a signal; `pid` is our own child,
            // not yet reaped, so it names no other process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "{} did not stop within {STOP_GRACE:?}; killing it",
                    self.name
                );
                let _ = self.child.kill().await;
            }
        }
    }
}

/// Stops the processes, the last started first (the device before its
/// cloud, so its last words reach it).
async fn stop_all(procs: Vec<Process>) -> ExitCode {
    eprintln!("stopping (services get a few seconds to finish)");
    for p in procs.into_iter().rev() {
        p.stop().await;
    }
    eprintln!("stopped");
    ExitCode::SUCCESS
}

/// Resolves when any of the processes ends, saying which and why.
async fn first_exit(procs: &mut [Process]) -> anyhow::Error {
    let waits = procs.iter_mut().map(|p| {
        Box::pin(async move {
            let status = p.child.wait().await;
            anyhow::anyhow!(
                "{} stopped ({}); {}",
                p.name,
                status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                p.tail()
            )
        })
    });
    futures_util::future::select_all(waits).await.0
}

/// The demo's publisher key, made on the first run.
fn demo_key(data: &Path) -> anyhow::Result<SecretKey> {
    let secret = data.join("publisher.key");
    let public = data.join("publisher.pub");
    if secret.exists() {
        return super::key::read_secret_key(&secret);
    }
    let key = SecretKey::generate()?;
    super::key::write_new(&public, &key.public_key().to_bytes(), 0o644)?;
    super::key::write_new(&secret, &key.to_bytes(), 0o600)?;
    eprintln!(
        "key: made {} (key id {})",
        secret.display(),
        key.public_key().key_id()
    );
    Ok(key)
}

/// Makes fleet `demo` if need be; its provisioning key, kept in the data
/// directory (the cloud shows a key only when it makes one).
async fn fleet(cloud: &Cloud, data: &Path) -> anyhow::Result<String> {
    let kept = data.join("provisioning.key");
    let exists = match cloud.fleet(FLEET).await {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(e.into()),
    };
    if exists && let Ok(key) = read_trimmed(&kept) {
        return Ok(key);
    }
    let key = if exists {
        cloud.rotate_provisioning_key(FLEET).await?.provisioning_key
    } else {
        let made = cloud.create_fleet(FLEET).await?;
        eprintln!("fleet: made `{FLEET}`");
        made.provisioning_key
    };
    super::write_private(&kept, key.as_bytes())?;
    Ok(key)
}

/// Builds, signs and pushes the samples, and makes a release of them unless
/// the fleet has one of exactly these; the release's version.
async fn publish(
    cloud: &Cloud,
    url: &str,
    token: &str,
    key: &SecretKey,
    samples: &Path,
) -> anyhow::Result<String> {
    let registry = Client::new(url, Some(token.to_owned()))?;
    let mut services = std::collections::BTreeMap::new();
    for (name, env) in SERVICES {
        eprintln!("build: {name}");
        let built = crate::build::build_crate(&samples.join(name))?;
        let wasm = super::read_file(&built.wasm)?;
        let wasm = kelp_core::embed(&wasm, &built.manifest)
            .with_context(|| format!("cannot embed the manifest of `{name}`"))?;
        let wasm = kelp_core::sign(&wasm, key).with_context(|| format!("cannot sign `{name}`"))?;
        let repo = RepoName::parse(&format!("demo/{name}"))
            .context("a demo repository name is not valid")?;
        let tag = Tag::parse(&built.manifest.version)
            .with_context(|| format!("`{name}`'s version is not a tag"))?;
        let digest = registry.push_wasm(&repo, &tag, wasm.into()).await?;
        let image = Reference {
            registry: url.to_owned(),
            repo,
            reference: ManifestRef::Digest(digest),
        };
        services.insert(
            built.manifest.name.clone(),
            spec(&built.manifest, &image, env, key),
        );
    }
    // Named after what it runs: the same services make the same version,
    // and a second run finds it made.
    let mut hash = sha2::Sha256::new();
    for spec in services.values() {
        hash.update(spec.image.as_bytes());
    }
    let version = format!("demo-{}", &hex::encode(hash.finalize())[..8]);
    match cloud.release(FLEET, &version).await {
        Ok(_) => return Ok(version),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let release = NewRelease {
        version: version.clone(),
        services,
    };
    let made = cloud.create_release(FLEET, &release).await?;
    eprintln!("release: made {} of fleet `{FLEET}`", made.version);
    Ok(version)
}

fn spec(m: &Manifest, image: &Reference, env: &[(&str, &str)], key: &SecretKey) -> ServiceSpec {
    ServiceSpec {
        image: image.to_string(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        restart: m.restart,
        memory: m.memory,
        grants: m.grants.clone(),
        update_strategy: UpdateStrategy::default(),
        signer: Some(key.public_key().key_id().to_string()),
    }
}

/// Writes the device's config (again on each run: the cloud's address may
/// have changed); its path.
fn device_config(data: &Path, url: &str, provisioning_key: &str) -> anyhow::Result<PathBuf> {
    let dir = data.join("device");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let config = format!(
        "# Written by `kelp demo`.\n\
         cloud = {url:?}\n\
         provisioning-key = {provisioning_key:?}\n\
         fleet = {FLEET:?}\n\
         device-name = \"demo-device\"\n\
         trusted-keys = [{:?}]\n\
         hardware = \"sim\"\n\
         data-dir = {:?}\n",
        data.join("publisher.pub").display().to_string(),
        dir.display().to_string(),
    );
    let path = data.join("kelpd.toml");
    super::write_private(&path, config.as_bytes())?;
    Ok(path)
}

/// Waits until the device runs `version` with every service running.
async fn wait_for_device(cloud: &Cloud, data: &Path, version: &str) -> anyhow::Result<DeviceView> {
    let uuid_file = data.join("device/device/uuid");
    let deadline = tokio::time::Instant::now() + DEVICE_START;
    let mut said = String::new();
    loop {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the device did not run release {version} within {DEVICE_START:?}; see `{}`",
                data.join("device.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(uuid) = read_trimmed(&uuid_file) else {
            continue;
        };
        let Ok(device) = cloud.device(&uuid).await else {
            continue;
        };
        let running = SERVICES.iter().all(|(name, _)| {
            device
                .services
                .get(*name)
                .is_some_and(|s| s.state == "running")
        });
        let now = match (&device.current_release, running) {
            (Some(v), true) if v == version => return Ok(device),
            (Some(v), _) if v == version => "starting its services".to_owned(),
            _ => format!(
                "registered as `{}`, fetching release {version}",
                device.name
            ),
        };
        if now != said {
            eprintln!("device: {now}");
            said = now;
        }
    }
}

/// How many of the device's latest lines the log view starts with.
const RECENT_LINES: u32 = 10;

/// The device's latest lines, oldest first.
async fn recent_lines(cloud: &Cloud, uuid: &str) -> anyhow::Result<Vec<StoredLogLine>> {
    let q = LogQuery {
        limit: Some(RECENT_LINES),
        ..LogQuery::default()
    };
    Ok(cloud.logs(uuid, &q).await?)
}

/// The device's log lines after `after`.
async fn new_lines(cloud: &Cloud, uuid: &str, after: i64) -> anyhow::Result<Vec<StoredLogLine>> {
    let q = LogQuery {
        after: Some(after),
        limit: Some(200),
        ..LogQuery::default()
    };
    Ok(cloud.logs(uuid, &q).await?)
}
