//! `kelpd --config`: a device of a fleet, following a real `kelp-cloud`:
//! it registers, runs each release the cloud gives it, says so, and runs
//! the last one again when it starts without the cloud.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kelp_tests::artifacts::{HELLO, IDLE};
use kelp_tests::binary;
use serde_json::{Value, json};

use crate::images::{Publisher, push};
use crate::kelpd::Device;
use crate::registry::{TestCloud, text};

pub(crate) const GREETING: &str = "Hello, world! Greetings from a WebAssembly component.";

/// One fleet API request as the admin; the status and the JSON answer.
pub(crate) fn api(
    cloud: &TestCloud,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    crate::fleet_cli::api(cloud, &cloud.token, method, path, body)
}

/// Makes release `version` of fleet `garden`; the release as answered.
pub(crate) fn release(cloud: &TestCloud, version: &str, services: Value) -> Value {
    let (status, answer) = api(
        cloud,
        reqwest::Method::POST,
        "/api/v1/fleets/garden/releases",
        Some(json!({ "version": version, "services": services })),
    );
    assert_eq!(status, 201, "{answer}");
    answer
}

/// Makes fleet `name`; its provisioning key.
pub(crate) fn create_fleet(cloud: &TestCloud, name: &str) -> String {
    let (status, fleet) = api(
        cloud,
        reqwest::Method::POST,
        "/api/v1/fleets",
        Some(json!({ "name": name })),
    );
    assert_eq!(status, 201, "{fleet}");
    fleet["provisioning_key"].as_str().unwrap().to_owned()
}

/// Waits until the cloud's view of device `uuid` passes `ok`.
pub(crate) fn wait_for_cloud(
    cloud: &TestCloud,
    uuid: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) {
    let start = Instant::now();
    loop {
        let (status, device) = api(
            cloud,
            reqwest::Method::GET,
            &format!("/api/v1/devices/{uuid}"),
            None,
        );
        if status == 200 && ok(&device) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for the cloud to show {what}; it shows {status} {device}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_device_joins_its_fleet_follows_its_releases_and_boots_without_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    // Pulls need a token: the device pulls with its device key.
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let publisher = Publisher::new();
    let idle = push(
        &cloud,
        &publisher.sign(Path::new(IDLE), "idle.wasm"),
        "kelp/idle",
    );
    let hello = push(
        &cloud,
        &publisher.sign(Path::new(HELLO), "hello.wasm"),
        "kelp/hello",
    );
    let provisioning_key = create_fleet(&cloud, "garden");
    release(&cloud, "1.0", json!({ "idle": { "image": idle } }));

    let config = format!(
        "cloud = \"http://{}\"\nprovisioning-key = {provisioning_key:?}\nfleet = \"garden\"\n\
         device-name = \"pump-1\"\ntrusted-keys = [{:?}]\nhardware = \"sim\"\n\
         health-window = \"1s\"\n",
        cloud.addr,
        publisher.public()
    );
    let mut device = Device::start_in_fleet(&config);
    device.wait_until("release 1.0 to run", |d| {
        d.lines_of("idle", "idle: ready") == 1
    });
    let uuid = std::fs::read_to_string(device.var().join("device/uuid"))
        .unwrap()
        .trim()
        .to_owned();
    wait_for_cloud(&cloud, &uuid, "release 1.0 running", |d| {
        d["current_release"] == "1.0" && d["services"]["idle"]["state"] == "running"
    });
    let (_, view) = api(
        &cloud,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{uuid}"),
        None,
    );
    assert_eq!(
        (&view["name"], &view["fleet"]),
        (&json!("pump-1"), &json!("garden"))
    );
    // The device key is the device's secret alone.
    use std::os::unix::fs::PermissionsExt as _;
    let key = std::fs::metadata(device.var().join("device/key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    // A new release reaches the device while it waits on its long poll.
    let asked = Instant::now();
    release(
        &cloud,
        "2.0",
        json!({
            "idle": { "image": idle },
            "hello": { "image": hello, "restart": "never" },
        }),
    );
    device.wait_until("release 2.0 to run", |d| d.lines_of("hello", GREETING) == 1);
    assert!(
        asked.elapsed() < Duration::from_secs(60),
        "release 2.0 took {:?}",
        asked.elapsed()
    );
    wait_for_cloud(&cloud, &uuid, "release 2.0", |d| {
        d["current_release"] == "2.0" && d["services"]["hello"]["state"] == "exited"
    });
    // What did not change kept running.
    assert_eq!(device.lines_of("idle", "idle: ready"), 1);

    // 2.0 proves itself healthy: the release to go back to.
    wait_for_cloud(&cloud, &uuid, "release 2.0 healthy", |d| {
        d["current_release"] == "2.0"
            && d["update"]["release"] == "2.0"
            && d["update"]["state"] == "healthy"
    });
    // A release whose image another key signed, by its own word, is
    // refused before it runs, and the device stays on 2.0.
    release(
        &cloud,
        "2.1",
        json!({
            "idle": { "image": idle },
            "hello": { "image": hello, "restart": "never", "signer": "0".repeat(24) },
        }),
    );
    wait_for_cloud(&cloud, &uuid, "2.1 refused", |d| {
        d["update"]["state"] == "rolled-back"
            && d["update"]["release"] == "2.1"
            && d["current_release"] == "2.0"
            && d["update"]["reason"].as_str().is_some_and(|r| {
                r.contains(&format!("key {} signed it", "0".repeat(24)))
                    && r.contains("does not trust that key")
            })
    });
    // Naming the key that did sign it is fine.
    release(
        &cloud,
        "2.2",
        json!({
            "idle": { "image": idle },
            "hello": { "image": hello, "restart": "never", "signer": publisher.key_id },
        }),
    );
    wait_for_cloud(&cloud, &uuid, "2.2 running", |d| {
        d["current_release"] == "2.2" && d["update"]["release"] == "2.2"
    });

    // Without the cloud, a restart runs release 2.2 from disk.
    drop(cloud);
    device.power_cycle();
    device.wait_until("release 2.2 to run again, offline", |d| {
        d.lines_of("idle", "idle: ready") == 1
            && d.lines_of("hello", GREETING) == 1
            && d.service_state("idle").as_deref() == Some("running")
    });
}

#[test]
fn an_unregistered_device_without_a_provisioning_key_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("device.toml");
    std::fs::write(&config, "cloud = \"http://127.0.0.1:9\"\n").unwrap();
    let out = Command::new(binary("kelpd"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("var"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("provisioning-key"), "{err}");

    let out = Command::new(binary("kelpd"))
        .args(["--config", "a.toml", "--local", "b.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
}
