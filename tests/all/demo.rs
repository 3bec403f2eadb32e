//! `kelp demo` as a newcomer runs it: one command, a cloud and a device
//! with the sample services, stopped with Ctrl-C and started again on the
//! same data.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the demo may take to come up: it builds the samples (already
/// built by this crate's build script, so cargo only checks them), starts
/// the cloud, and the device compiles both services.
const START: Duration = Duration::from_secs(240);

struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(data: &std::path::Path) -> Demo {
        let mut cmd = Command::new(kelp_tests::binary("kelp"));
        cmd.args(["demo", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // The samples build in their own workspace, as the build script
        // built them: none of the test build's settings may reach it.
        for var in ["CARGO_TARGET_DIR", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().expect("start kelp demo");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line of output that `pick` accepts, read within `within`.
    fn wait_for<T>(&mut self, what: &str, within: Duration, pick: impl Fn(&str) -> Option<T>) -> T {
        if let Some(found) = self.seen.iter().find_map(|l| pick(l)) {
            return found;
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = pick(&line);
                    self.seen.push(line);
                    if let Some(found) = found {
                        return found;
                    }
                }
                Err(_) => panic!(
                    "kelp demo printed no {what} within {within:?}; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Ctrl-C, and its exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) sends a signal to our own child.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kelp demo did not stop on Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn get(url: &str, token: &str, path: &str) -> Value {
    block_on(async {
        let answer = reqwest::Client::new()
            .get(format!("{url}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
    })
}

/// Whether anything answers at `url`.
fn answers(url: &str) -> bool {
    block_on(async { reqwest::Client::new().get(url).send().await.is_ok() })
}

fn field(prefix: &'static str) -> impl Fn(&str) -> Option<String> {
    move |line: &str| {
        line.trim_start()
            .strip_prefix(prefix)
            .map(|v| v.trim().to_owned())
    }
}

#[test]
fn one_command_runs_a_cloud_and_a_device_and_a_second_picks_up_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");

    let mut demo = Demo::start(&data);
    let url = demo.wait_for("dashboard address", START, field("dashboard"));
    let url = url.trim_end_matches('/').to_owned();
    let token = demo.wait_for("token", Duration::from_secs(5), field("API token"));
    // The services' lines reach the terminal through the cloud.
    demo.wait_for("blinky toggling", Duration::from_secs(60), |l| {
        (l.starts_with("blinky") && l.ends_with("led on")).then_some(())
    });
    demo.wait_for("a temperature", Duration::from_secs(60), |l| {
        (l.starts_with("thermometer") && l.ends_with("temperature: 21.0 °C")).then_some(())
    });
    let devices = get(&url, &token, "/api/v1/devices?fleet=demo");
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    let device = &devices[0];
    assert_eq!(device["online"], true, "{device}");
    assert_eq!(device["services"]["blinky"]["state"], "running", "{device}");
    assert_eq!(
        device["services"]["thermometer"]["state"], "running",
        "{device}"
    );
    let uuid = device["uuid"].as_str().unwrap().to_owned();
    let release = device["current_release"].as_str().unwrap().to_owned();

    let status = demo.interrupt();
    assert!(status.success(), "kelp demo ended with {status}");
    // Everything it started stopped with it.
    assert!(
        !answers(&format!("{url}/api/v1/fleets")),
        "the cloud still answers after Ctrl-C"
    );
    assert!(
        !data.join("device/kelpd.sock").exists(),
        "kelpd did not stop cleanly"
    );

    // Again, on the same data: the same token, device and release.
    let mut demo = Demo::start(&data);
    let again = demo.wait_for("dashboard address", START, field("dashboard"));
    let again = again.trim_end_matches('/').to_owned();
    let token_again = demo.wait_for("token", Duration::from_secs(5), field("API token"));
    assert_eq!(token_again, token);
    let devices = get(&again, &token, "/api/v1/devices?fleet=demo");
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 1, "a second device: {devices:?}");
    assert_eq!(devices[0]["uuid"], uuid.as_str());
    // The cloud listens on a new port (0 was asked for), so the release
    // names its images there: a new release, unless the port came back.
    if again == url {
        assert_eq!(devices[0]["current_release"], release.as_str());
    }
    let status = demo.interrupt();
    assert!(status.success(), "kelp demo ended with {status}");
}

#[test]
fn without_the_samples_it_says_where_it_looked_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(kelp_tests::binary("kelp"))
        .args(["demo", "--listen", "127.0.0.1:0", "--samples"])
        .arg(dir.path().join("nowhere"))
        .arg("--data")
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no sample service `blinky`") && err.contains("nowhere"),
        "{err}"
    );
    assert!(
        !dir.path().join("demo").exists(),
        "it made a data directory"
    );
}
