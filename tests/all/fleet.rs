//! The balena loop with real processes: one `kelp-cloud`, three `kelpd`
//! devices in one fleet. Releases reach every device; one whose service
//! crashes at start is rolled back everywhere, with why; the devices ride
//! out the cloud's absence and a power cut, and catch up when it returns.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use kelp_tests::artifacts::{CRASHY, HELLO, IDLE};
use serde_json::{Value, json};

use crate::agent::{api, create_fleet, release, wait_for_cloud};
use crate::images::{Publisher, push};
use crate::kelpd::Device;
use crate::registry::{TestCloud, text};

const DEVICES: usize = 3;

fn greeting(name: &str) -> String {
    format!("Hello, {name}! Greetings from a WebAssembly component.")
}

/// `file` signed with a manifest of this name and version: a distinct
/// artifact per version.
fn sign_as(publisher: &Publisher, file: &str, version: &str, restart: &str) -> std::path::PathBuf {
    let manifest = publisher.dir().join(format!("{version}.toml"));
    std::fs::write(
        &manifest,
        format!(
            "name = \"hello\"\nversion = \"{version}\"\nkind = \"component\"\nrestart = \"{restart}\"\n"
        ),
    )
    .unwrap();
    publisher.sign_with(Path::new(file), &manifest, &format!("hello-{version}.wasm"))
}

/// The cloud's log lines of device `uuid` that are exactly `line`.
fn cloud_lines(cloud: &TestCloud, uuid: &str, line: &str) -> usize {
    let (status, logs) = api(
        cloud,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{uuid}/logs?limit=1000"),
        None,
    );
    assert_eq!(status, 200, "{logs}");
    logs.as_array()
        .unwrap_or_else(|| panic!("not a list of lines: {logs}"))
        .iter()
        .filter(|l| l["line"] == line)
        .count()
}

fn uuid_of(device: &Device) -> String {
    device.wait_until("the device to have a uuid", |d| {
        d.var().join("device/uuid").exists()
    });
    std::fs::read_to_string(device.var().join("device/uuid"))
        .unwrap()
        .trim()
        .to_owned()
}

/// One request to a device's local API on its Unix socket.
fn local_api(device: &Device, method: &str, path: &str) -> (u16, Value) {
    let mut stream = UnixStream::connect(device.var().join("kelpd.sock")).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: kelpd\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn three_devices_follow_releases_roll_back_a_bad_one_and_ride_out_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let cloud_dir = dir.path().join("cloud");
    let cloud = TestCloud::start(&cloud_dir, &[]);
    let publisher = Publisher::new();
    let idle = push(
        &cloud,
        &publisher.sign(Path::new(IDLE), "idle.wasm"),
        "kelp/idle",
    );
    let v1 = push(
        &cloud,
        &sign_as(&publisher, HELLO, "1.0.0", "never"),
        "kelp/hello",
    );
    let v2 = push(
        &cloud,
        &sign_as(&publisher, HELLO, "2.0.0", "never"),
        "kelp/hello",
    );
    let v3 = push(
        &cloud,
        &sign_as(&publisher, CRASHY, "3.0.0", "always"),
        "kelp/hello",
    );
    assert!(v1 != v2 && v2 != v3, "each version is its own artifact");
    let provisioning_key = create_fleet(&cloud, "garden");

    let config = format!(
        "cloud = \"http://{}\"\nprovisioning-key = {provisioning_key:?}\nfleet = \"garden\"\n\
         trusted-keys = [{:?}]\nhardware = \"sim\"\nhealth-window = \"4s\"\n",
        cloud.addr,
        publisher.public()
    );
    let mut devices: Vec<Device> = (0..DEVICES)
        .map(|_| Device::start_in_fleet(&config))
        .collect();
    let uuids: Vec<String> = devices.iter().map(uuid_of).collect();

    let hello = |image: &str, name: &str| json!({ "image": image, "restart": "never", "env": { "NAME": name } });
    // v1 everywhere, proved healthy.
    release(
        &cloud,
        "1.0",
        json!({ "idle": { "image": idle }, "hello": hello(&v1, "v1") }),
    );
    for (device, uuid) in devices.iter().zip(&uuids) {
        device.wait_until("v1 to run", |d| d.lines_of("hello", &greeting("v1")) == 1);
        wait_for_cloud(&cloud, uuid, "v1 healthy", |d| {
            d["current_release"] == "1.0"
                && d["update"]["state"] == "healthy"
                && d["services"]["idle"]["state"] == "running"
                && d["services"]["hello"]["last_exit"] == "exited with code 0"
        });
    }

    // The local API on the device itself: status, logs, a restart.
    let (status, local) = local_api(&devices[0], "GET", "/v1/status");
    assert_eq!(status, 200, "{local}");
    assert_eq!(local["release"]["version"], "1.0", "{local}");
    let (status, logs) = local_api(&devices[0], "GET", "/v1/services/hello/logs?lines=10");
    assert_eq!(status, 200);
    assert_eq!(logs["lines"][0]["line"], greeting("v1"), "{logs}");
    let (status, _) = local_api(&devices[0], "POST", "/v1/services/idle/restart");
    assert_eq!(status, 200);
    devices[0].wait_until("idle to restart", |d| {
        d.lines_of("idle", "idle: ready") == 2
    });
    let (status, err) = local_api(&devices[0], "POST", "/v1/services/nope/restart");
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("no service named `nope`"))
    );

    // v2 everywhere.
    release(
        &cloud,
        "2.0",
        json!({ "idle": { "image": idle }, "hello": hello(&v2, "v2") }),
    );
    for (device, uuid) in devices.iter().zip(&uuids) {
        device.wait_until("v2 to run", |d| d.lines_of("hello", &greeting("v2")) == 1);
        wait_for_cloud(&cloud, uuid, "v2 healthy", |d| {
            d["current_release"] == "2.0" && d["update"]["state"] == "healthy"
        });
    }

    // A variable reaches the service within one long poll.
    let set = Instant::now();
    let (status, answer) = api(
        &cloud,
        reqwest::Method::PUT,
        "/api/v1/fleets/garden/env/NAME?service=hello",
        Some(json!({ "value": "garden" })),
    );
    assert_eq!(status, 200, "{answer}");
    for device in &devices {
        device.wait_until("the variable to arrive", |d| {
            d.lines_of("hello", &greeting("garden")) == 1
        });
    }
    assert!(
        set.elapsed() < Duration::from_secs(30),
        "the variable took {:?}",
        set.elapsed()
    );
    // The cloud shows `healthy` for release 2.0 from before the variable
    // too: let the new target's health window (4 s) run out first.
    std::thread::sleep(Duration::from_secs(5));
    for (device, uuid) in devices.iter().zip(&uuids) {
        wait_for_cloud(&cloud, uuid, "the new variable healthy", |d| {
            d["update"]["state"] == "healthy"
        });
        assert_eq!(
            device.lines_of("idle", "idle: ready"),
            if uuid == &uuids[0] { 2 } else { 1 }
        );
    }

    // A restart asked from the cloud restarts that service on that device.
    let asked = std::process::Command::new(kelp_tests::binary("kelp"))
        .args(["device", "restart", &uuids[1], "idle"])
        .env("KELP_URL", cloud.url(""))
        .env("KELP_TOKEN", &cloud.token)
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .unwrap();
    assert!(asked.status.success(), "{}", text(&asked.stderr));
    assert_eq!(
        text(&asked.stdout).trim(),
        format!("asked device {} to restart idle (restart #1)", uuids[1])
    );
    devices[1].wait_until("idle to restart from the cloud", |d| {
        d.lines_of("idle", "idle: ready") == 2
    });
    assert_eq!(devices[2].lines_of("idle", "idle: ready"), 1);
    // Its memory reaches the cloud, and its history, though no state
    // changed after it grew.
    wait_for_cloud(&cloud, &uuids[1], "idle's memory", |d| {
        d["services"]["idle"]["memory"]
            .as_i64()
            .is_some_and(|m| m > 0)
    });
    let (status, samples) = api(
        &cloud,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{}/samples", uuids[1]),
        None,
    );
    assert_eq!(status, 200, "{samples}");
    let grew = samples["idle"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["memory"].as_i64().is_some_and(|m| m > 0));
    assert!(grew, "{samples}");

    // v3 crashes at start: every device goes back to v2 and says why.
    release(
        &cloud,
        "3.0",
        json!({ "idle": { "image": idle }, "hello": { "image": v3, "env": { "CRASH_AFTER_MS": "10" } } }),
    );
    for (device, uuid) in devices.iter().zip(&uuids) {
        wait_for_cloud(&cloud, uuid, "v3 rolled back", |d| {
            d["update"]["state"] == "rolled-back"
                && d["update"]["release"] == "3.0"
                && d["current_release"] == "2.0"
                && d["update"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("`hello` is crash-looping"))
        });
        device.wait_until("v2 to run again", |d| {
            d.lines_of("hello", &greeting("garden")) == 2
        });
        assert!(device.lines_of("hello", "crashy: up, failing in 10 ms") >= 3);
    }
    // The user sees it with the CLI.
    let shown = std::process::Command::new(kelp_tests::binary("kelp"))
        .args(["device", "show", &uuids[1]])
        .env("KELP_URL", cloud.url(""))
        .env("KELP_TOKEN", &cloud.token)
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("3.0 rolled-back: service `hello` is crash-looping"),
        "{shown}"
    );

    // And does not try v3 again while the target stays as it is.
    let crashes: Vec<usize> = devices
        .iter()
        .map(|d| d.lines_of("hello", "crashy: up, failing in 10 ms"))
        .collect();
    for (device, uuid) in devices.iter().zip(&uuids) {
        wait_for_cloud(&cloud, uuid, "its logs to arrive", |_| {
            cloud_lines(&cloud, uuid, &greeting("garden")) == 2
        });
        assert_eq!(device.service_state("idle").as_deref(), Some("running"));
    }
    std::thread::sleep(Duration::from_secs(2));
    let again: Vec<usize> = devices
        .iter()
        .map(|d| d.lines_of("hello", "crashy: up, failing in 10 ms"))
        .collect();
    assert_eq!(crashes, again, "v3 was tried again");

    // Without the cloud, services run on.
    let addr = cloud.addr.clone();
    drop(cloud);
    std::thread::sleep(Duration::from_secs(1));
    for device in &devices {
        assert_eq!(device.service_state("idle").as_deref(), Some("running"));
    }
    // A power cut with the cloud still away: v2 comes back from disk (not
    // v3), and what it prints waits on disk for the cloud.
    devices[0].power_cycle();
    devices[0].wait_until("v2 to come back from disk", |d| {
        d.lines_of("hello", &greeting("garden")) == 1
            && d.service_state("idle").as_deref() == Some("running")
    });
    assert_eq!(
        devices[0].lines_of("hello", "crashy: up, failing in 10 ms"),
        0
    );
    let (_, local) = local_api(&devices[0], "GET", "/v1/status");
    assert_eq!(local["release"]["version"], "2.0", "{local}");
    assert_eq!(
        local["release"]["update"]["state"], "rolled-back",
        "{local}"
    );

    // The cloud comes back on its address: the buffered line arrives, and
    // the device's state is current.
    let cloud = TestCloud::start_at(&cloud_dir, &addr, &[]);
    wait_for_cloud(&cloud, &uuids[0], "the buffered logs", |d| {
        d["online"] == true && cloud_lines(&cloud, &uuids[0], &greeting("garden")) == 3
    });
    wait_for_cloud(&cloud, &uuids[0], "its state", |d| {
        d["current_release"] == "2.0"
            && d["update"]["state"] == "rolled-back"
            && d["services"]["idle"]["state"] == "running"
    });
}

/// A schema of its own on the PostgreSQL server `KELP_TEST_POSTGRES`
/// names, dropped afterwards.
struct Schema {
    base: String,
    name: String,
}

impl Schema {
    fn create(base: &str) -> Schema {
        let name = format!("kelp_e2e_{}", std::process::id());
        Schema::run(
            base,
            &format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"),
        );
        Schema {
            base: base.to_owned(),
            name,
        }
    }

    /// The URL a server given it works in this schema.
    fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.base, self.name)
    }

    fn run(base: &str, sql: &str) {
        use sqlx::Connection as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(base).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        });
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        Schema::run(
            &self.base,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
    }
}

#[test]
fn two_clouds_on_one_postgresql_wake_each_others_devices_at_once() {
    let Ok(base) = std::env::var("KELP_TEST_POSTGRES") else {
        eprintln!("skipped: KELP_TEST_POSTGRES names no PostgreSQL server");
        return;
    };
    let schema = Schema::create(&base);
    let dir = tempfile::tempdir().unwrap();
    let database = schema.url();
    // Two processes behind one load balancer share the database and the
    // blob volume.
    let data = dir.path().join("cloud");
    let first = TestCloud::start(&data, &["--database", &database]);
    let second = TestCloud::start(&data, &["--database", &database]);
    assert_eq!(first.token, second.token);
    let provisioning_key = create_fleet(&first, "garden");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let (device_key, etag) = rt.block_on(async {
        let registered: Value = http
            .post(first.url("/device/v1/register"))
            .bearer_auth(&provisioning_key)
            .header("content-type", "application/json")
            .body(json!({ "uuid": "roamer", "arch": "x86_64", "agent_version": "1" }).to_string())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap();
        let key = registered["device_key"].as_str().unwrap().to_owned();
        let state = http
            .get(first.url("/device/v1/state"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let etag = state.headers()["etag"].to_str().unwrap().to_owned();
        (key, etag)
    });

    // The device long-polls the first; the release is made through the
    // second.
    let poll = {
        let (url, key, etag) = (first.url("/device/v1/state?wait=60"), device_key, etag);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let res = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(key)
                    .header("if-none-match", etag)
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                (
                    status,
                    res.bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or(Value::Null),
                    Instant::now(),
                )
            })
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !poll.is_finished(),
        "the poll was answered before anything changed"
    );
    let made = Instant::now();
    let (status, answer) = api(
        &second,
        reqwest::Method::POST,
        "/api/v1/fleets/garden/releases",
        Some(json!({ "version": "1.0", "services": {} })),
    );
    assert_eq!(status, 201, "{answer}");
    let (status, target, answered) = poll.join().unwrap();
    assert_eq!(status, 200, "{target}");
    assert_eq!(target["release"]["version"], "1.0");
    // The first process looks again on its own only every 5 seconds; it
    // answered because PostgreSQL told it.
    let waited = answered.saturating_duration_since(made);
    assert!(
        waited < Duration::from_secs(2),
        "woke {waited:?} after the release"
    );
}

#[test]
fn a_hardware_map_from_the_cloud_decides_what_services_are_granted() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let publisher = Publisher::new();
    // Signed with its manifest, which asks for `led` as an output.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample-modules/blinky/kelp.toml");
    let signed = publisher.sign_with(
        Path::new(kelp_tests::artifacts::BLINKY),
        &manifest,
        "blinky.wasm",
    );
    let blinky = push(&cloud, &signed, "kelp/blinky");
    let provisioning_key = create_fleet(&cloud, "garden");
    let sim_map = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample-modules/hardware-sim.toml"),
    )
    .unwrap();
    // The device's own map names the led.
    let local_map = dir.path().join("board.toml");
    std::fs::write(&local_map, &sim_map).unwrap();
    let config = format!(
        "cloud = \"http://{}\"\nprovisioning-key = {:?}\ntrusted-keys = [{:?}]\n\
         hardware = \"sim\"\nhardware-map = {:?}\nhealth-window = \"2s\"\n",
        cloud.addr,
        provisioning_key,
        publisher.public(),
        local_map
    );
    let device = Device::start_in_fleet(&config);
    let uuid = uuid_of(&device);
    release(
        &cloud,
        "1.0",
        json!({ "blinky": { "image": blinky, "env": { "BLINK_MS": "50" } } }),
    );
    device.wait_until("blinky to blink", |d| d.lines_of("blinky", "led on") >= 2);
    wait_for_cloud(&cloud, &uuid, "1.0 healthy", |d| {
        d["update"]["release"] == "1.0" && d["update"]["state"] == "healthy"
    });

    // The fleet's map, which has no led, replaces the device's own: blinky
    // is refused its line, fails, and the device goes back to its own map.
    let no_led = sim_map.replace("[gpio.led]", "[gpio.unused]");
    let (status, answer) = api(
        &cloud,
        reqwest::Method::PUT,
        "/api/v1/fleets/garden/hardware-map",
        Some(json!({ "map": no_led })),
    );
    assert_eq!(status, 200, "{answer}");
    wait_for_cloud(&cloud, &uuid, "the map rolled back", |d| {
        d["update"]["state"] == "rolled-back"
            && d["update"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("service `blinky`"))
    });
    assert!(
        device.stdout().contains("no GPIO line labelled `led`"),
        "{}",
        device.stdout()
    );
    let before = device.lines_of("blinky", "led on");
    device.wait_until("blinky to blink again", |d| {
        d.lines_of("blinky", "led on") > before + 2
    });

    // A map of the device's own, from the cloud, names the led again.
    let (status, answer) = api(
        &cloud,
        reqwest::Method::PUT,
        &format!("/api/v1/devices/{uuid}/hardware-map"),
        Some(json!({ "map": sim_map })),
    );
    assert_eq!(status, 200, "{answer}");
    wait_for_cloud(&cloud, &uuid, "its own map healthy", |d| {
        d["update"]["release"] == "1.0" && d["update"]["state"] == "healthy"
    });
    assert_eq!(device.service_state("blinky").as_deref(), Some("running"));
}
