//! `kelpd` running services from a registry, pinned by digest: fetched from
//! a real `kelp-cloud serve`, checked against their digest and the device's
//! trusted keys, and refused with the reason (while the version already
//! running runs on) when either check fails.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kelp_tests::artifacts::{HELLO, IDLE};

use crate::kelpd::Device;
use crate::registry::{TestCloud, kelp, pushed_digest, sha256, text, wasm_manifest};

/// A key pair from `kelp key generate`, and files signed with it.
pub(crate) struct Publisher {
    dir: tempfile::TempDir,
    pub(crate) key_id: String,
}

impl Publisher {
    pub(crate) fn new() -> Publisher {
        let dir = tempfile::tempdir().unwrap();
        let out = kelp(
            &["key", "generate", "-o", dir.path().to_str().unwrap()],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let key_id = text(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("key id:"))
            .unwrap()
            .trim()
            .to_owned();
        Publisher { dir, key_id }
    }

    pub(crate) fn secret(&self) -> PathBuf {
        self.dir.path().join("kelp.key")
    }

    pub(crate) fn public(&self) -> PathBuf {
        self.dir.path().join("kelp.pub")
    }

    /// A scratch directory beside the keys.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `input` with `manifest` embedded, signed with this key, as a new
    /// file named `name`.
    pub(crate) fn sign_with(&self, input: &Path, manifest: &Path, name: &str) -> PathBuf {
        let out_path = self.dir.path().join(name);
        let out = kelp(
            &[
                "sign",
                "--key",
                self.secret().to_str().unwrap(),
                "--manifest",
                manifest.to_str().unwrap(),
                input.to_str().unwrap(),
                "-o",
                out_path.to_str().unwrap(),
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        out_path
    }

    /// `input` signed with this key, as a new file named `name`.
    pub(crate) fn sign(&self, input: &Path, name: &str) -> PathBuf {
        let out_path = self.dir.path().join(name);
        let out = kelp(
            &[
                "sign",
                "--key",
                self.dir.path().join("kelp.key").to_str().unwrap(),
                input.to_str().unwrap(),
                "-o",
                out_path.to_str().unwrap(),
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        out_path
    }
}

/// Pushes `file` to `repo:v1` and returns the image pinned by digest.
pub(crate) fn push(cloud: &TestCloud, file: &Path, repo: &str) -> String {
    let to = format!("{}/{repo}:v1", cloud.addr);
    let out = kelp(
        &["push", file.to_str().unwrap(), "--to", &to],
        Some(&cloud.token),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    format!("{}/{repo}@{}", cloud.addr, pushed_digest(&out))
}

fn service(name: &str, image: &str) -> String {
    format!("[services.{name}]\nimage = {image:?}\nstop-grace = \"100ms\"\n")
}

fn device_args(keys: &[&Publisher], token: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--registry-token".into(), token.into()];
    for k in keys {
        args.extend(["--trusted-key".into(), k.public().into()]);
    }
    args
}

/// The reason status.json gives for refusing `name`, if it does.
fn refusal(device: &Device, name: &str) -> Option<String> {
    device.status()["refused"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["reason"].as_str().map(str::to_owned))
}

fn service_field(device: &Device, name: &str, field: &str) -> serde_json::Value {
    device.status()["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .map(|s| s[field].clone())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn kelpd_runs_a_signed_image_pulled_by_digest_and_boots_without_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let publisher = Publisher::new();
    let signed = publisher.sign(Path::new(HELLO), "hello.wasm");
    let image = push(&cloud, &signed, "kelp/hello");

    let target = format!("{}restart = \"never\"\n", service("hello", &image));
    let mut device = Device::start_with(&target, device_args(&[&publisher], &cloud.token));
    let greeting = "Hello, world! Greetings from a WebAssembly component.";
    device.wait_until("hello to run and exit", |d| {
        d.lines_of("hello", greeting) == 1 && d.service_state("hello").as_deref() == Some("exited")
    });
    let wasm = std::fs::read(&signed).unwrap();
    assert_eq!(service_field(&device, "hello", "digest"), sha256(&wasm));
    assert_eq!(device.status()["refused"], serde_json::json!([]));
    // The module sits in the device's store under its digest.
    let stored = device
        .var()
        .join("blobs/sha256")
        .join(sha256(&wasm).trim_start_matches("sha256:"));
    assert_eq!(std::fs::read(&stored).unwrap(), wasm);

    // With the registry gone, a reboot runs the image from the store.
    drop(cloud);
    device.power_cycle();
    device.wait_until("hello to run again, offline", |d| {
        d.lines_of("hello", greeting) == 1
    });
    assert!(
        !device.stderr().contains("image refused"),
        "{}",
        device.stderr()
    );
}

/// A registry that answers every manifest request with `manifest` and every
/// blob request with `blob`, whatever was asked: one that lies about a
/// blob's content. Stops when dropped.
struct LyingRegistry {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl LyingRegistry {
    fn start(manifest: Vec<u8>, blob: Vec<u8>) -> LyingRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut request = String::new();
                let mut reader = BufReader::new(&conn);
                reader.read_line(&mut request).unwrap();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                }
                let body = if request.contains("/manifests/") {
                    &manifest
                } else {
                    &blob
                };
                let mut conn = &conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(body);
            }
        });
        LyingRegistry { addr, stop }
    }
}

impl Drop for LyingRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_bad_image_is_refused_with_its_reason_and_the_running_version_stays() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let (publisher, stranger) = (Publisher::new(), Publisher::new());
    let good = publisher.sign(Path::new(IDLE), "idle.wasm");
    let good_image = push(&cloud, &good, "kelp/idle");
    let unsigned_image = push(&cloud, Path::new(IDLE), "kelp/unsigned");

    // `fresh` had no version running: it fails to start, as a bad module
    // file does, and says why.
    let target = [
        service("svc", &good_image),
        service("fresh", &unsigned_image),
    ]
    .concat();
    let device = Device::start_with(&target, device_args(&[&publisher], &cloud.token));
    device.wait_until("svc to run and fresh to fail", |d| {
        d.service_state("svc").as_deref() == Some("running")
            && d.lines_of("svc", "idle: ready") == 1
            && d.service_state("fresh").as_deref() == Some("failed")
    });
    let reason = service_field(&device, "fresh", "last_exit")["message"].clone();
    assert!(
        reason
            .as_str()
            .unwrap()
            .contains("is not signed by a trusted key: no signature section"),
        "{reason}"
    );
    assert!(device.stdout().contains("fresh ! kelp: failed to start"));
    let running_digest = service_field(&device, "svc", "digest");
    assert_eq!(running_digest, sha256(&std::fs::read(&good).unwrap()));

    // Signed by a key the device does not trust.
    let stranger_image = push(
        &cloud,
        &stranger.sign(Path::new(IDLE), "idle.wasm"),
        "kelp/stranger",
    );
    // Changed after signing: one byte in the middle, pushed as what it is,
    // so its digest is right and only the signature can tell.
    let mut altered = std::fs::read(&good).unwrap();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x01;
    let altered_path = dir.path().join("altered.wasm");
    std::fs::write(&altered_path, &altered).unwrap();
    let altered_image = push(&cloud, &altered_path, "kelp/altered");
    // Damaged on the registry's disk after it was pushed.
    let damaged = publisher.sign(Path::new(HELLO), "hello.wasm");
    let damaged_image = push(&cloud, &damaged, "kelp/damaged");
    let damaged_digest = sha256(&std::fs::read(&damaged).unwrap());
    let on_server = cloud
        .data
        .join("registry/blobs/sha256")
        .join(damaged_digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&on_server).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&on_server, &bytes).unwrap();
    // Served with other bytes than its digest names, by a registry that
    // does not check what it serves.
    let real = std::fs::read(&damaged).unwrap();
    let mut lie = real.clone();
    lie[200] ^= 0x01;
    let manifest = wasm_manifest(&real);
    let liar = LyingRegistry::start(manifest.clone(), lie.clone());
    let lying_image = format!("{}/kelp/lie@{}", liar.addr, sha256(&manifest));

    let cases = [
        (
            "unsigned",
            unsigned_image,
            vec!["is not signed by a trusted key: no signature section".to_owned()],
        ),
        (
            "signed by an unknown key",
            stranger_image,
            vec![
                "not signed by any of the given public keys".to_owned(),
                stranger.key_id.clone(),
            ],
        ),
        (
            "altered after signing",
            altered_image,
            vec!["does not verify: the file was changed after it was signed".to_owned()],
        ),
        (
            "damaged on the registry",
            damaged_image,
            vec![
                format!("pulling blob {damaged_digest}"),
                "BLOB_UNKNOWN".to_owned(),
            ],
        ),
        (
            "served with the wrong bytes",
            lying_image,
            vec![format!(
                "the content has digest {}, not {}",
                sha256(&lie),
                sha256(&real)
            )],
        ),
    ];
    for (what, image, needles) in cases {
        device.edit(&service("svc", &image));
        device.wait_until(&format!("the {what} image to be refused"), |d| {
            refusal(d, "svc").is_some_and(|r| needles.iter().all(|n| r.contains(n.as_str())))
        });
        assert!(
            refusal(&device, "svc").unwrap().contains(&image),
            "{what}: the reason does not name the image"
        );
        // The running version was not touched.
        assert_eq!(
            device.service_state("svc").as_deref(),
            Some("running"),
            "{what}"
        );
        assert_eq!(
            service_field(&device, "svc", "digest"),
            running_digest,
            "{what}"
        );
        assert_eq!(service_field(&device, "svc", "restarts"), 0, "{what}");
        assert_eq!(device.lines_of("svc", "idle: ready"), 1, "{what}");
        assert!(
            device
                .stderr()
                .contains(&format!("refused service=svc why=image {image}")),
            "{what}: {}",
            device.stderr()
        );
    }
    // Nothing that failed its digest was kept.
    let store = device.var().join("blobs/sha256");
    for digest in [&damaged_digest, &sha256(&lie)] {
        let name = digest.trim_start_matches("sha256:");
        assert!(!store.join(name).exists(), "{digest} was kept");
        assert!(!store.join(format!("{name}.partial")).exists());
    }

    // A good new version replaces the running one: here the same module
    // with a second signature beside the trusted one.
    let v2 = stranger.sign(&good, "idle-v2.wasm");
    let v2_image = push(&cloud, &v2, "kelp/idle");
    device.edit(&service("svc", &v2_image));
    device.wait_until("svc to restart on v2", |d| {
        d.lines_of("svc", "idle: ready") == 2
            && service_field(d, "svc", "digest") == sha256(&std::fs::read(&v2).unwrap())
    });
    assert_eq!(device.status()["refused"], serde_json::json!([]));
}

#[test]
fn without_a_trusted_key_kelpd_fetches_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let publisher = Publisher::new();
    let image = push(
        &cloud,
        &publisher.sign(Path::new(IDLE), "idle.wasm"),
        "kelp/idle",
    );
    let target = [
        service("remote", &image),
        format!("[services.local]\nmodule = {IDLE:?}\n"),
    ]
    .concat();
    let device = Device::start_with(&target, device_args(&[], &cloud.token));
    device.wait_until("remote to be refused and local to run", |d| {
        refusal(d, "remote").is_some() && d.service_state("local").as_deref() == Some("running")
    });
    let reason = refusal(&device, "remote").unwrap();
    assert!(
        reason.contains("trusts no publisher key (--trusted-key)") && reason.contains(&image),
        "{reason}"
    );
    assert!(device.stderr().contains("no --trusted-key given"));
    assert!(!device.var().join("blobs/sha256").exists());
}

#[test]
fn sigterm_does_not_wait_for_a_stalled_fetch() {
    // A registry that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let publisher = Publisher::new();
    let image = format!(
        "{}/kelp/stalled@{}",
        silent.local_addr().unwrap(),
        sha256(b"never served")
    );
    let target = [
        service("stalled", &image),
        format!("[services.local]\nmodule = {IDLE:?}\nstop-grace = \"100ms\"\n"),
    ]
    .concat();
    let mut device = Device::start_with(&target, device_args(&[&publisher], "t"));
    device.wait_until("kelpd to start fetching", |d| {
        d.stderr().contains("kelpd starting")
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = device.terminate();
    assert!(status.success(), "{status:?}\n{}", device.stderr());
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn kill_then_download_stops_the_old_version_before_fetching_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let publisher = Publisher::new();
    let idle = push(
        &cloud,
        &publisher.sign(Path::new(IDLE), "idle.wasm"),
        "kelp/idle",
    );
    let missing = format!("{}/kelp/idle@sha256:{}", cloud.addr, "0".repeat(64));
    let target = |image: &str, update: &str| {
        format!(
            "{}update = \"{update}\"\n{}update = \"{update}\"\n",
            service("first", image),
            service("second", &idle)
        )
    };
    let device = Device::start_with(
        &target(&idle, "kill-then-download"),
        device_args(&[&publisher], &cloud.token),
    );
    device.wait_until("idle to run", |d| {
        d.service_state("first").as_deref() == Some("running")
    });
    // A version that cannot be fetched: asked to make room first, the
    // device has already stopped the old one.
    device.edit(&target(&missing, "kill-then-download"));
    device.wait_until("the new version to be refused", |d| {
        refusal(d, "first").is_some()
    });
    assert_eq!(device.service_state("first"), None, "{}", device.status());
    assert_eq!(device.service_state("second").as_deref(), Some("running"));

    // The default keeps the old version until the new one is in hand.
    device.edit(&target(&idle, "download-then-kill"));
    device.wait_until("idle to run again", |d| {
        d.service_state("first").as_deref() == Some("running")
    });
    device.edit(&target(&missing, "download-then-kill"));
    device.wait_until("the new version to be refused", |d| {
        refusal(d, "first").is_some()
    });
    assert_eq!(device.service_state("first").as_deref(), Some("running"));
}
