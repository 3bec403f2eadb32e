//! `kelpd --local`: a device without a cloud, driven by a file and signals.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kelp_tests::artifacts::{COUNTER, CRASHY, FETCHER, IDLE, REPORTER};
use kelp_tests::binary;

/// A running `kelpd`, killed when dropped, with its stdout collected.
pub(crate) struct Device {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    data: tempfile::TempDir,
    /// `--local` or `--config`, and the file it names.
    mode: &'static str,
    target: PathBuf,
    args: Vec<OsString>,
}

impl Device {
    pub(crate) fn start(target: &str) -> Device {
        Device::start_with(target, Vec::new())
    }

    /// Starts kelpd with more arguments.
    pub(crate) fn start_with(target: &str, args: Vec<OsString>) -> Device {
        let data = tempfile::tempdir().unwrap();
        let target_path = data.path().join("local.toml");
        std::fs::write(&target_path, target).unwrap();
        let (child, out, err) = spawn(data.path(), "--local", &target_path, &args);
        Device {
            child,
            out,
            err,
            data,
            mode: "--local",
            target: target_path,
            args,
        }
    }

    /// Starts kelpd as a device of a fleet, with this config file.
    pub(crate) fn start_in_fleet(config: &str) -> Device {
        let data = tempfile::tempdir().unwrap();
        let config_path = data.path().join("device.toml");
        std::fs::write(&config_path, config).unwrap();
        let (child, out, err) = spawn(data.path(), "--config", &config_path, &[]);
        Device {
            child,
            out,
            err,
            data,
            mode: "--config",
            target: config_path,
            args: Vec::new(),
        }
    }

    /// Kills kelpd, as a power cut would, and starts it again on the same
    /// data directory and target file.
    pub(crate) fn power_cycle(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.child, self.out, self.err) =
            spawn(self.data.path(), self.mode, &self.target, &self.args);
    }

    /// Sends SIGTERM and waits for kelpd to exit; returns how it exited and
    /// how long that took.
    pub(crate) fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        self.signal(libc::SIGTERM);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "kelpd ignored SIGTERM\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kelpd's data directory.
    pub(crate) fn var(&self) -> PathBuf {
        self.data.path().join("var")
    }

    pub(crate) fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub(crate) fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    pub(crate) fn lines_of(&self, service: &str, text: &str) -> usize {
        let needle = format!(" {service} | {text}");
        self.stdout()
            .lines()
            .filter(|l| l.ends_with(&needle))
            .count()
    }

    pub(crate) fn wait_until(&self, what: &str, mut ok: impl FnMut(&Device) -> bool) {
        let start = Instant::now();
        while !ok(self) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        let path = self.data.path().join("var/status.json");
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    pub(crate) fn service_state(&self, name: &str) -> Option<String> {
        let status = self.status();
        status["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["state"].as_str().map(str::to_owned))
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on a child we own.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0);
    }

    pub(crate) fn edit(&self, target: &str) {
        std::fs::write(&self.target, target).unwrap();
        self.signal(libc::SIGHUP);
    }
}

fn spawn(
    data: &Path,
    mode: &str,
    target: &Path,
    args: &[OsString],
) -> (Child, Arc<Mutex<String>>, Arc<Mutex<String>>) {
    let mut child = Command::new(binary("kelpd"))
        .arg(mode)
        .arg(target)
        .arg("--data-dir")
        .arg(data.join("var"))
        .args(args)
        .env("KELP_LOG", "info")
        .env_remove("KELP_REGISTRY_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    (child, out, err)
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let sink = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut b = sink.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    buf
}

fn service(name: &str, module: &str, extra: &str) -> String {
    format!("[services.{name}]\nmodule = {module:?}\nstop-grace = \"100ms\"\n{extra}\n")
}

#[test]
fn sighup_applies_an_edited_target_touching_only_what_changed() {
    let first = [
        service("a", IDLE, ""),
        service("b", IDLE, ""),
        service("c", IDLE, ""),
    ]
    .concat();
    let device = Device::start(&first);
    device.wait_until("a, b and c to start", |d| {
        ["a", "b", "c"]
            .iter()
            .all(|s| d.lines_of(s, "idle: ready") == 1)
    });
    device.wait_until("status to show them running", |d| {
        ["a", "b", "c"]
            .iter()
            .all(|s| d.service_state(s).as_deref() == Some("running"))
    });

    // Remove a, change b, keep c, add d.
    let second = [
        service("b", IDLE, "env = { MODE = \"changed\" }"),
        service("c", IDLE, ""),
        service("d", IDLE, ""),
    ]
    .concat();
    device.edit(&second);
    device.wait_until("d to start and b to restart", |d| {
        d.lines_of("d", "idle: ready") == 1 && d.lines_of("b", "idle: ready") == 2
    });
    device.wait_until("a to leave the status", |d| {
        d.service_state("a").is_none() && d.service_state("d").as_deref() == Some("running")
    });
    assert_eq!(device.lines_of("c", "idle: ready"), 1, "c was restarted");
    assert_eq!(device.lines_of("a", "idle: ready"), 1);

    // A broken edit is refused, and everything keeps running.
    device.edit("[services.x\nmodule = ");
    device.wait_until("the error to be logged", |d| {
        d.stderr().contains("not applying target file")
    });
    assert!(
        device.stderr().contains("local.toml"),
        "{}",
        device.stderr()
    );
    for s in ["b", "c", "d"] {
        assert_eq!(device.service_state(s).as_deref(), Some("running"), "{s}");
    }

    // SIGTERM stops everything and kelpd exits cleanly.
    device.signal(libc::SIGTERM);
    let mut device = device;
    let status = device.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    for s in ["b", "c", "d"] {
        assert_eq!(device.service_state(s).as_deref(), Some("stopped"), "{s}");
    }
}

#[test]
fn a_bad_service_fails_alone_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"MZ\x90\x00 not wasm").unwrap();
    let target = [
        service("good", IDLE, ""),
        service("bogus", bogus.to_str().unwrap(), ""),
        service(
            "crashy",
            CRASHY,
            "restart = \"on-failure:1\"\nenv = { CRASH_AFTER_MS = \"0\" }",
        ),
    ]
    .concat();
    let device = Device::start(&target);
    device.wait_until("states to settle", |d| {
        d.service_state("bogus").as_deref() == Some("failed")
            && d.service_state("crashy").as_deref() == Some("failed")
            && d.service_state("good").as_deref() == Some("running")
    });
    let status = device.status();
    let bogus_status = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "bogus")
        .unwrap()
        .clone();
    let reason = bogus_status["last_exit"]["message"].as_str().unwrap();
    assert!(
        reason.contains("bogus.wasm") && reason.contains("not a WebAssembly file"),
        "{reason}"
    );
    let crashy = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "crashy")
        .unwrap()
        .clone();
    assert_eq!(crashy["restarts"], 1);
    assert_eq!(crashy["last_exit"]["code"], 1);
    assert!(
        device.stdout().contains("bogus ! kelp: failed to start"),
        "{}",
        device.stdout()
    );
}

/// A field of a service in `status.json`.
fn field(device: &Device, service: &str, name: &str) -> serde_json::Value {
    device.status()["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == service))
        .map(|s| s[name].clone())
        .unwrap_or_default()
}

#[test]
fn restart_and_memory_come_from_the_target_else_the_manifest_else_the_default() {
    let dir = tempfile::tempdir().unwrap();
    // `crashy` with a manifest like `hello`'s kelp.toml: never restart, 16 MiB.
    let manifest = kelp_core::Manifest::from_toml(
        "name = \"crashy\"\nversion = \"0.1.0\"\nkind = \"component\"\nrestart = \"never\"\nmemory = \"16MiB\"\n",
    )
    .unwrap();
    let with_manifest = dir.path().join("crashy-manifest.wasm");
    std::fs::write(
        &with_manifest,
        kelp_core::embed(&std::fs::read(CRASHY).unwrap(), &manifest).unwrap(),
    )
    .unwrap();
    let with_manifest = with_manifest.to_str().unwrap();
    let fast = "env = { CRASH_AFTER_MS = \"0\" }";
    let target = [
        // The target names nothing: the manifest decides.
        service("by-manifest", with_manifest, fast),
        // The target names both: it wins over the manifest.
        service(
            "by-target",
            with_manifest,
            &format!("{fast}\nrestart = \"on-failure:2\"\nmemory = \"8MiB\""),
        ),
        // Neither names them: the defaults (always, 64 MiB).
        service("by-default", CRASHY, fast),
    ]
    .concat();
    let device = Device::start(&target);
    device.wait_until("the services to settle", |d| {
        d.service_state("by-manifest").as_deref() == Some("failed")
            && d.service_state("by-target").as_deref() == Some("failed")
            && field(d, "by-default", "restarts").as_u64() >= Some(3)
    });
    assert_eq!(field(&device, "by-manifest", "restarts"), 0);
    assert_eq!(field(&device, "by-manifest", "memory_limit"), 16 << 20);
    assert_eq!(field(&device, "by-target", "restarts"), 2);
    assert_eq!(field(&device, "by-target", "memory_limit"), 8 << 20);
    assert_eq!(field(&device, "by-default", "memory_limit"), 64 << 20);
}

#[test]
fn sigterm_while_modules_compile_starts_nothing() {
    // A fresh data directory has no compile cache: each module compiles,
    // which takes a debug-built kelpd most of a second.
    let target = [
        service("fetcher", FETCHER, ""),
        service("reporter", REPORTER, ""),
        service("counter", COUNTER, ""),
    ]
    .concat();
    let mut device = Device::start(&target);
    device.wait_until("the target to be applied", |d| {
        d.stderr().contains("applied target")
    });
    let (status, _) = device.terminate();
    assert!(status.success(), "{status:?}\n{}", device.stderr());
    for name in ["fetcher", "reporter", "counter"] {
        assert_eq!(
            field(&device, name, "state"),
            "stopped",
            "{name}: {}",
            device.stderr()
        );
        // Never ran: not even killed.
        assert_eq!(
            field(&device, name, "last_exit"),
            serde_json::Value::Null,
            "{name}: {}",
            device.stderr()
        );
    }
    // kelpd logs `started service=NAME` as each one runs.
    assert!(
        !device.stderr().contains("started service="),
        "{}",
        device.stderr()
    );
}

#[test]
fn an_unreadable_target_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("kelpd"))
        .args(["--local", "/nonexistent/local.toml", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read target file `/nonexistent/local.toml`"),
        "{err}"
    );
    let _ = Path::new("");
}
