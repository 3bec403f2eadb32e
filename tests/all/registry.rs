//! The registry as users and other software meet it: `kelp-cloud serve` on a
//! free port, `kelp push` and `kelp pull`, raw HTTP, skopeo, and Kelp's client
//! against the reference registry (Debian's `docker-registry`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kelp_tests::artifacts::HELLO;
use kelp_tests::binary;
use sha2::{Digest as _, Sha256};

use crate::support::free_port;

/// `kelp-cloud serve` on a free port, killed when dropped.
pub(crate) struct TestCloud {
    child: Child,
    pub(crate) addr: String,
    pub(crate) token: String,
    pub(crate) data: PathBuf,
}

impl TestCloud {
    pub(crate) fn start(data: &Path, args: &[&str]) -> TestCloud {
        TestCloud::start_at(data, "127.0.0.1:0", args)
    }

    /// Starts `kelp-cloud serve` listening on `addr` (a cloud coming back
    /// where its devices look for it).
    pub(crate) fn start_at(data: &Path, addr: &str, args: &[&str]) -> TestCloud {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .unwrap();
        let mut child = Command::new(binary("kelp-cloud"))
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", addr])
            .args(args)
            .env("KELP_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut token = std::fs::read_to_string(data.join("admin.token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        let mut addr = String::new();
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("admin token: ") {
                let (t, saved) = rest.split_once(", saved in ").unwrap();
                assert_eq!(Path::new(saved), data.join("admin.token"));
                token = t.to_owned();
            }
            if let Some(a) = line.strip_prefix("listening on http://") {
                addr = a.to_owned();
                break;
            }
        }
        assert!(
            !addr.is_empty(),
            "kelp-cloud did not start: {}",
            std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
        );
        TestCloud {
            child,
            addr,
            token,
            data: data.to_owned(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestCloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn kelp(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(binary("kelp"));
    cmd.args(args)
        .env_remove("KELP_LOG")
        .env_remove("KELP_TOKEN");
    if let Some(t) = token {
        cmd.env("KELP_TOKEN", t);
    }
    cmd.output().unwrap()
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The manifest digest a successful `kelp push` printed
/// (`pushed <registry>/<repo>@sha256:…`).
pub(crate) fn pushed_digest(out: &Output) -> String {
    let pushed = text(&out.stdout);
    let (_, digest) = pushed.trim().rsplit_once('@').unwrap();
    assert!(digest.starts_with("sha256:"), "{pushed}");
    digest.to_owned()
}

/// The path of a tool the test needs; a missing tool fails the test and says
/// how to install it.
fn require(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = Path::new(dir).join(tool);
        if path.exists() {
            return path;
        }
    }
    panic!(
        "`{tool}` is not installed; this test needs it: `apt-get install -y {package}` (as .ci/run does)"
    );
}

/// The status of a HEAD request, over a bare socket.
fn head_status(addr: &str, path: &str, token: &str) -> u16 {
    let mut conn = TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).unwrap();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

async fn error_code(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    (
        status,
        body["errors"][0]["code"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn kelp_push_then_kelp_pull_gives_back_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let saved = std::fs::read_to_string(cloud.data.join("admin.token")).unwrap();
    assert_eq!(saved.trim(), cloud.token);

    let to = format!("{}/kelp/hello:v1", cloud.addr);
    let out = kelp(&["push", HELLO, "--to", &to], Some(&cloud.token));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Into a pipe: the warning and the result, no progress bar.
    assert_eq!(
        text(&out.stderr),
        "warning: pushing unsigned (no --key); devices that pin keys will refuse it\n"
    );
    let digest = pushed_digest(&out);

    let wasm = std::fs::read(HELLO).unwrap();
    for reference in [to.clone(), format!("{}/kelp/hello@{digest}", cloud.addr)] {
        let dest = dir.path().join("pulled.wasm");
        let out = kelp(
            &["pull", &reference, "-o", dest.to_str().unwrap()],
            Some(&cloud.token),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stderr), "");
        assert!(
            text(&out.stdout).contains(&sha256(&wasm)),
            "{}",
            text(&out.stdout)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), wasm);
        std::fs::remove_file(&dest).unwrap();
    }

    // Pulls need the token unless the registry allows anonymous pulls.
    let dest = dir.path().join("anon.wasm");
    let out = kelp(&["pull", &to, "-o", dest.to_str().unwrap()], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("UNAUTHORIZED"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dest.exists());

    // A restart keeps the token and the data, and does not print the token.
    let data = cloud.data.clone();
    let token = cloud.token.clone();
    drop(cloud);
    let cloud = TestCloud::start(&data, &["--pull", "anonymous"]);
    assert_eq!(cloud.token, token);
    let to = format!("{}/kelp/hello:v1", cloud.addr);
    let out = kelp(&["pull", &to, "-o", dest.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&dest).unwrap(), wasm);
}

/// Runs `kelp` with stderr on a pseudo-terminal, as in a shell; returns its
/// exit status, stdout, and everything it drew on the terminal.
fn kelp_on_a_terminal(args: &[&str], token: &str) -> (std::process::ExitStatus, String, String) {
    use std::os::fd::FromRawFd as _;
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors into the two integers; the
    // name and termios pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let reader = std::thread::spawn(move || {
        let mut drawn = Vec::new();
        // Ends with EIO once every copy of the other side is closed.
        let _ = std::io::Read::read_to_end(&mut &master, &mut drawn);
        String::from_utf8_lossy(&drawn).into_owned()
    });
    let child = Command::new(binary("kelp"))
        .args(args)
        .env_remove("KELP_LOG")
        .env("KELP_TOKEN", token)
        .env("TERM", "xterm")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status, text(&out.stdout), reader.join().unwrap())
}

#[test]
fn on_a_terminal_push_and_pull_show_progress_bars() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let file = dir.path().join("big.wasm");
    let bytes: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let layer = sha256(&bytes);
    let short = &layer["sha256:".len().."sha256:".len() + 12];

    let to = format!("{}/kelp/big:v1", cloud.addr);
    let (status, stdout, drawn) =
        kelp_on_a_terminal(&["push", file.to_str().unwrap(), "--to", &to], &cloud.token);
    assert!(status.success(), "{drawn}");
    assert!(stdout.starts_with("pushed "), "{stdout}");
    assert!(
        drawn.contains(&format!("pushing sha256:{short}")),
        "{drawn:?}"
    );
    assert!(drawn.contains("MiB"), "{drawn:?}");

    let dest = dir.path().join("pulled.wasm");
    let (status, stdout, drawn) =
        kelp_on_a_terminal(&["pull", &to, "-o", dest.to_str().unwrap()], &cloud.token);
    assert!(status.success(), "{drawn}");
    assert!(stdout.starts_with("pulled "), "{stdout}");
    assert!(
        drawn.contains(&format!("pulling sha256:{short}")),
        "{drawn:?}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}

#[test]
fn kelp_push_streams_a_file_instead_of_reading_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let file = dir.path().join("huge.wasm");
    let size: usize = 96 << 20;
    let bytes: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    drop(bytes);

    let mut child = Command::new(binary("kelp"))
        .args(["push", file.to_str().unwrap(), "--to"])
        .arg(format!("{}/kelp/huge:v1", cloud.addr))
        .env_remove("KELP_LOG")
        .env("KELP_TOKEN", &cloud.token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The kernel's high-water mark of the child's own memory, read until it
    // exits. (wait4's ru_maxrss would count this test process's memory,
    // which a forked child starts with.)
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let hwm = std::fs::read_to_string(&status_file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        peak_kib = peak_kib.max(hwm);
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "{status}");
    let peak = peak_kib as usize * 1024;
    assert!(
        peak > 0 && peak < size / 2,
        "kelp push of a {} MiB file peaked at {} MiB",
        size >> 20,
        peak >> 20
    );
    let stored = cloud.data.join("registry/blobs/sha256");
    let blobs: Vec<u64> = std::fs::read_dir(stored)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert!(blobs.contains(&(size as u64)), "{blobs:?}");
}

#[tokio::test]
async fn bad_requests_get_the_right_status_and_error_code() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", cloud.token);

    // A digest that does not match the content.
    let res = http
        .post(cloud.url(&format!("/v2/x/blobs/uploads/?digest={}", sha256(b"other"))))
        .header("authorization", &auth)
        .body("content")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, (400, "DIGEST_INVALID".to_owned()));

    // A blob nobody pushed.
    let res = http
        .get(cloud.url(&format!("/v2/x/blobs/{}", sha256(b"never"))))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, (404, "BLOB_UNKNOWN".to_owned()));

    // A name outside the spec's grammar.
    let res = http
        .get(cloud.url("/v2/Not..Valid/tags/list"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, (400, "NAME_INVALID".to_owned()));

    // No token, and a wrong one.
    for header in [None, Some("Bearer wrong")] {
        let mut req = http.post(cloud.url("/v2/x/blobs/uploads/"));
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        let res = req.send().await.unwrap();
        assert_eq!(error_code(res).await, (401, "UNAUTHORIZED".to_owned()));
    }
    let out = kelp(
        &["push", HELLO, "--to", &format!("{}/x:v1", cloud.addr)],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pushing needs a token"),
        "{}",
        text(&out.stderr)
    );

    // A body over the limit is refused before it is read.
    let mut conn = TcpStream::connect(&cloud.addr).unwrap();
    write!(
        conn,
        "POST /v2/x/blobs/uploads/?digest={} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
        sha256(b"x"),
        cloud.addr,
        kelp_registry::MAX_BLOB_SIZE * 2
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
}

#[test]
fn a_killed_upload_leaves_no_visible_blob() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let digest = sha256(&blob);
    let blob_file = cloud
        .data
        .join("registry/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let uploads = cloud.data.join("registry/uploads");

    let half_upload = |addr: &str, token: &str| {
        let mut conn = TcpStream::connect(addr).unwrap();
        write!(
            conn,
            "POST /v2/x/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
            blob.len()
        )
        .unwrap();
        conn.write_all(&blob[..50_000]).unwrap();
        conn.flush().unwrap();
        conn
    };

    // The client dies half-way: nothing visible, and the upload file goes.
    let conn = half_upload(&cloud.addr, &cloud.token);
    std::thread::sleep(Duration::from_millis(300));
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&uploads).unwrap().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned upload file stayed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!blob_file.exists());

    // The server dies half-way: after a restart nothing is visible either.
    let _conn = half_upload(&cloud.addr, &cloud.token);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&uploads).unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    cloud.child.kill().unwrap();
    cloud.child.wait().unwrap();
    assert!(!blob_file.exists());
    let data = cloud.data.clone();
    drop(cloud);
    let cloud = TestCloud::start(&data, &[]);
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    let status = head_status(&cloud.addr, &format!("/v2/x/blobs/{digest}"), &cloud.token);
    assert_eq!(status, 404);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let pid = i32::try_from(cloud.child.id()).unwrap();
    // SAFETY: signalling a child process this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = cloud.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "kelp-cloud ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The config blob of a Wasm artifact, as [`wasm_manifest`] names it.
const WASM_CONFIG: &[u8] = br#"{"architecture":"wasm","os":"wasip2"}"#;

/// The manifest of a Wasm artifact holding `wasm` (and [`WASM_CONFIG`]),
/// in the layout `kelp push` writes, but written by hand from the image spec
/// (not by Kelp's code).
pub(crate) fn wasm_manifest(wasm: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.wasm.config.v0+json","config":{{"mediaType":"application/vnd.wasm.config.v0+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/wasm","digest":"{}","size":{}}}]}}"#,
        sha256(WASM_CONFIG),
        WASM_CONFIG.len(),
        sha256(wasm),
        wasm.len()
    )
    .into_bytes()
}

/// An OCI image layout holding `wasm` as a Wasm artifact tagged `v1`.
fn oci_layout(dir: &Path, wasm: &[u8]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha256(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    put(WASM_CONFIG);
    put(wasm);
    let manifest = wasm_manifest(wasm);
    let manifest_digest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#,
            manifest.len()
        ),
    )
    .unwrap();
    manifest_digest
}

#[test]
fn skopeo_pushes_a_wasm_artifact_to_kelp_and_pulls_it_back() {
    let skopeo = require("skopeo", "skopeo");
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let wasm = std::fs::read(HELLO).unwrap();
    let layout = dir.path().join("layout");
    let manifest_digest = oci_layout(&layout, &wasm);
    let creds = format!("kelp:{}", cloud.token);
    let remote = format!("docker://{}/interop/hello:v1", cloud.addr);

    let out = Command::new(&skopeo)
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
        ])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(&remote)
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo push: {}", text(&out.stderr));

    // Kelp's own pull reads what skopeo pushed, manifest bytes unchanged.
    let dest = dir.path().join("by-kelp.wasm");
    let out = kelp(
        &[
            "pull",
            &format!("{}/interop/hello@{manifest_digest}", cloud.addr),
            "-o",
            dest.to_str().unwrap(),
        ],
        Some(&cloud.token),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&dest).unwrap(), wasm);

    // And skopeo pulls it back byte-identical.
    let back = dir.path().join("back");
    let out = Command::new(&skopeo)
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
        ])
        .arg(&remote)
        .arg(format!("oci:{}:v1", back.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo pull: {}", text(&out.stderr));
    let layer = back
        .join("blobs/sha256")
        .join(sha256(&wasm).trim_start_matches("sha256:"));
    assert_eq!(std::fs::read(layer).unwrap(), wasm);
    let manifest = back
        .join("blobs/sha256")
        .join(manifest_digest.trim_start_matches("sha256:"));
    assert!(manifest.exists(), "skopeo changed the manifest");

    // Without credentials skopeo is refused.
    let out = Command::new(&skopeo)
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}/interop/other:v1", cloud.addr))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Debian's `docker-registry` (the reference distribution server) on a free
/// port with its own storage, killed when dropped.
struct ReferenceRegistry {
    child: Child,
    addr: String,
}

impl ReferenceRegistry {
    fn start(dir: &Path) -> ReferenceRegistry {
        let bin = require("docker-registry", "docker-registry");
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let mut registry = ReferenceRegistry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&registry.addr).is_err() {
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!(
                    "docker-registry exited ({status}): {}",
                    std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for ReferenceRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kelp_pushes_to_and_pulls_from_the_reference_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(dir.path());
    let wasm = std::fs::read(HELLO).unwrap();
    let to = format!("{}/kelp/hello:v1", registry.addr);
    let out = kelp(&["push", HELLO, "--to", &to], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let digest = pushed_digest(&out);

    for reference in [to.clone(), format!("{}/kelp/hello@{digest}", registry.addr)] {
        let dest = dir.path().join("pulled.wasm");
        let out = kelp(&["pull", &reference, "-o", dest.to_str().unwrap()], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(std::fs::read(&dest).unwrap(), wasm);
        std::fs::remove_file(&dest).unwrap();
    }

    // The reference registry kept the artifact type and layer type.
    let manifest = head_body(&registry.addr, "/v2/kelp/hello/manifests/v1");
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
}

/// The body of a GET over a bare socket (the reference registry speaks
/// plain HTTP/1.1 here).
fn head_body(addr: &str, path: &str) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    std::io::Read::read_to_string(&mut conn, &mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The publishing flow as the README shows it: push the `hello` crate (built,
/// manifest embedded, signed), pull it back, and run it only if the
/// publisher's key signed it.
#[test]
fn a_pushed_crate_is_built_signed_and_runs_verified_after_pulling() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let keys = dir.path().join("keys");
    let out = kelp(&["key", "generate", "-o", keys.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (secret, public) = (keys.join("kelp.key"), keys.join("kelp.pub"));

    let crate_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sample-modules/hello");
    let to = format!("{}/kelp/hello:v1", cloud.addr);
    let out = kelp(
        &[
            "push",
            crate_dir,
            "--key",
            secret.to_str().unwrap(),
            "--to",
            &to,
        ],
        Some(&cloud.token),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("signed with key id"),
        "{}",
        text(&out.stderr)
    );
    let digest = pushed_digest(&out);

    let pulled = dir.path().join("hello.wasm");
    let reference = format!("{}/kelp/hello@{digest}", cloud.addr);
    let out = kelp(
        &["pull", &reference, "-o", pulled.to_str().unwrap()],
        Some(&cloud.token),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The pulled file carries its manifest and signature.
    let out = kelp(
        &["inspect", pulled.to_str().unwrap(), "--output", "json"],
        None,
    );
    let inspection: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspection["manifest"]["name"], "hello", "{inspection}");

    let out = kelp(
        &[
            "run",
            "--public-key",
            public.to_str().unwrap(),
            pulled.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("Hello, world!"));

    // An unsigned push of the same program is refused by that key.
    let out = kelp(
        &[
            "push",
            HELLO,
            "--to",
            &format!("{}/kelp/raw:v1", cloud.addr),
        ],
        Some(&cloud.token),
    );
    assert!(
        text(&out.stderr).contains("pushing unsigned"),
        "{}",
        text(&out.stderr)
    );
    let raw = dir.path().join("raw.wasm");
    let out = kelp(
        &[
            "pull",
            &format!("{}/kelp/raw:v1", cloud.addr),
            "-o",
            raw.to_str().unwrap(),
        ],
        Some(&cloud.token),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = kelp(
        &[
            "run",
            "--public-key",
            public.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not signed by a trusted key"),
        "{}",
        text(&out.stderr)
    );
}
