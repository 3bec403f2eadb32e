//! Hardware host calls: the sample services on simulated GPIO and I2C, with
//! the same map the README uses.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kelp_core::{ExitReason, Grants, RestartPolicy, ServiceState};
use kelp_hostcalls::sim::Simulator;
use kelp_hostcalls::{Hardware, HardwareMap};
use kelp_runtime::{
    EngineConfig, LogBuffer, Runtime, RuntimeConfig, ServiceHandle, ServiceSpec, Supervisor,
};
use kelp_tests::artifacts::{BLINKY, BUTTON, INTRUDER, THERMOMETER};

use crate::support::{quick_backoff, spec, texts, within};

const MAP: &str = include_str!("../../sample-modules/hardware-sim.toml");

/// A supervisor on a simulated device built from `map`.
fn device_with(map: &str) -> (Supervisor, Arc<Simulator>) {
    let hardware = Hardware::simulated(HardwareMap::parse(map).unwrap());
    let sim = hardware.simulator().unwrap().clone();
    let runtime = Runtime::new(RuntimeConfig {
        engine: EngineConfig {
            pool_slots: 16,
            ..EngineConfig::default()
        },
        cache_dir: None,
        trusted_keys: Vec::new(),
        hardware: Some(hardware),
    })
    .unwrap();
    (Supervisor::with_backoff(runtime, quick_backoff()), sim)
}

fn device() -> (Supervisor, Arc<Simulator>) {
    device_with(MAP)
}

/// The grants in a sample's `kelp.toml`.
fn grants(sample: &str) -> Grants {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sample-modules")
        .join(sample)
        .join("kelp.toml");
    kelp_core::read_manifest_file(&path).unwrap().grants
}

fn service(name: &str, module: &str, sample: &str, env: &[(&str, &str)]) -> ServiceSpec {
    ServiceSpec {
        grants: Some(grants(sample)),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        restart: RestartPolicy::Never,
        ..spec(name, module)
    }
}

/// Collects a service's output lines until one satisfies `done`.
async fn output_until(logs: &LogBuffer, seen: &mut Vec<String>, done: impl Fn(&str) -> bool) {
    within("a line of output", async {
        while !seen.iter().any(|l| done(l)) {
            let Some(events) = logs.next().await else {
                panic!("output ended; saw {seen:?}");
            };
            seen.extend(texts(events));
        }
    })
    .await;
}

async fn wait_held(sim: &Simulator, label: &str, by: &ServiceHandle) {
    let line = sim.line(label).unwrap();
    within("the line to be requested", async {
        while line.holder().is_none() {
            assert!(by.status().last_exit.is_none(), "{:?}", by.status());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blinky_toggles_the_led_at_its_rate() {
    let (sup, sim) = device();
    let led = sim.line("led").unwrap();
    let blinky = sup
        .start(service(
            "blinky",
            BLINKY,
            "blinky",
            &[("BLINK_MS", "40"), ("BLINK_COUNT", "10")],
        ))
        .unwrap();
    let status = within("blinky to finish", blinky.wait_final()).await;
    assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 0 }));

    let logged = texts(blinky.logs().drain());
    let expected: Vec<&str> = ["led on", "led off"]
        .iter()
        .copied()
        .cycle()
        .take(10)
        .collect();
    assert_eq!(logged, expected);
    // Ten changes of level on the chip, alternating, matching the log.
    let history = led.history();
    let levels: Vec<bool> = history.iter().map(|(_, level)| *level).collect();
    assert_eq!(levels, [true, false].repeat(5));
    // Spaced by the period: never sooner, and on a loaded machine not
    // wildly later.
    let mut gaps: Vec<Duration> = history.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(40)),
        "{gaps:?}"
    );
    gaps.sort();
    assert!(
        gaps[gaps.len() / 2] < Duration::from_millis(200),
        "{gaps:?}"
    );
    assert_eq!(led.holder(), None, "released when blinky ended");
}

#[tokio::test(flavor = "multi_thread")]
async fn button_logs_exactly_the_presses_injected() {
    let (sup, sim) = device();
    let button = sim.line("button").unwrap();
    let svc = sup.start(service("button", BUTTON, "button", &[])).unwrap();
    let logs = svc.logs();
    let mut seen = Vec::new();
    output_until(&logs, &mut seen, |l| l == "waiting for presses").await;
    assert!(!button.level(), "pulled down while nobody presses");

    // Five presses back to back, faster than the service can log them, and
    // a bounce that only releases.
    for _ in 0..5 {
        button.drive(Some(true));
        button.drive(Some(false));
    }
    button.drive(None);
    output_until(&logs, &mut seen, |l| l == "button pressed (5)").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.extend(texts(logs.drain()));
    let presses: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("button pressed"))
        .collect();
    assert_eq!(presses.len(), 5, "{seen:?}");

    // One more, later.
    button.drive(Some(true));
    output_until(&logs, &mut seen, |l| l == "button pressed (6)").await;
    sup.stop("button").await.unwrap();
    assert_eq!(button.holder(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn thermometer_reads_the_sensor_through_the_unchanged_driver() {
    let (sup, sim) = device();
    for (set, shown) in [
        ("23.5", "temperature: 23.5 °C"),
        ("-7.5", "temperature: -7.5 °C"),
    ] {
        sim.set(&format!("sensors/0x48/temperature={set}")).unwrap();
        let svc = sup
            .start(service(
                "thermometer",
                THERMOMETER,
                "thermometer",
                &[("READINGS", "1")],
            ))
            .unwrap();
        let status = within("a reading", svc.wait_final()).await;
        assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 0 }));
        assert_eq!(texts(svc.logs().drain()), [shown]);
    }
    let bus = sim.bus("sensors").unwrap();
    assert_eq!(
        bus.transactions().keys().copied().collect::<Vec<_>>(),
        [0x48]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn intruder_is_refused_everything_and_touches_nothing() {
    let (sup, sim) = device();
    let led = sim.line("led").unwrap();
    let svc = sup
        .start(service("intruder", INTRUDER, "intruder", &[]))
        .unwrap();
    let status = within("intruder to finish", svc.wait_final()).await;
    let output = texts(svc.logs().drain());
    assert_eq!(
        status.last_exit,
        Some(ExitReason::Exited { code: 0 }),
        "{output:#?}"
    );
    for expected in [
        // In the map, not in the manifest.
        "refused: output `led`: gpio `led`: not granted to this service",
        // In the manifest, not in the map.
        "refused: output `door`: gpio `door`: no pin by this label on this device",
        "refused: output `button`: gpio `button`: not granted in this mode",
        "refused: edge watch on `button`: gpio `button`: not granted in this mode",
        "refused: input `/dev/gpiochip0`: gpio `/dev/gpiochip0`: not granted to this service",
        "refused: read at 0x50 on `sensors`: i2c: The device did not acknowledge its address",
        "refused: write at 0x50 on `sensors`: i2c: The device did not acknowledge its address",
        // The device tells the operator what the manifest asked for in vain.
        "kelp: grant gpio.door: this device has no GPIO line labelled `door`",
        "every attempt was refused",
    ] {
        assert!(
            output.iter().any(|l| l == expected),
            "{expected}\n{output:#?}"
        );
    }
    assert!(
        !output.iter().any(|l| l.starts_with("ALLOWED")),
        "{output:#?}"
    );
    // Nothing reached the hardware it was not granted.
    assert_eq!(led.requests(), 0);
    assert!(led.history().is_empty());
    assert!(sim.bus("sensors").unwrap().transactions().is_empty());
    assert_eq!(sim.bus("sensors").unwrap().get(0x50, "0"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_return_to_the_safe_level_the_map_names_after_a_crash() {
    for (safe, level) in [("low", false), ("high", true)] {
        let map = MAP.replace("safe = \"low\"", &format!("safe = \"{safe}\""));
        let (sup, sim) = device_with(&map);
        let led = sim.line("led").unwrap();
        let svc = sup
            .start(service("blinky", BLINKY, "blinky", &[("FAIL_AFTER", "1")]))
            .unwrap();
        let status = within("blinky to crash", svc.wait_final()).await;
        assert_eq!(status.state, ServiceState::Failed);
        assert!(
            matches!(status.last_exit, Some(ExitReason::Trapped { .. })),
            "{status:?}"
        );
        assert_eq!(texts(svc.logs().drain())[0], "led on");
        assert_eq!(led.holder(), None, "released");
        assert_eq!(led.level(), level, "safe = {safe}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_services_cannot_hold_one_line() {
    let (sup, sim) = device();
    let led = sim.line("led").unwrap();
    let first = sup
        .start(service("blinky", BLINKY, "blinky", &[("BLINK_MS", "20")]))
        .unwrap();
    wait_held(&sim, "led", &first).await;

    let second = sup
        .start(service("blinky-2", BLINKY, "blinky", &[("BLINK_MS", "20")]))
        .unwrap();
    let status = within("the second to give up", second.wait_final()).await;
    assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 1 }));
    let output = texts(second.logs().drain());
    assert!(
        output.contains(&"blinky: gpio `led`: already in use by another service".to_owned()),
        "{output:?}"
    );
    assert!(output.contains(&"kelp: gpio `led` refused: service `blinky` holds it".to_owned()));

    // The first goes on blinking.
    let before = led.history().len();
    within("the first to keep toggling", async {
        while led.history().len() < before + 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(first.status().state, ServiceState::Running);

    // Once it stops, the line is free for the other.
    sup.stop("blinky").await.unwrap();
    let again = sup
        .start(service(
            "blinky-2",
            BLINKY,
            "blinky",
            &[("BLINK_COUNT", "2")],
        ))
        .unwrap();
    let status = within("the second to run", again.wait_final()).await;
    assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 0 }));
}

/// `kelp run ARGS…` from the repository's root, as the README shows it,
/// with its standard streams piped.
fn kelp_run_command(args: &[&str]) -> std::process::Command {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(kelp_tests::binary("kelp"));
    cmd.arg("run")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `kelp run ARGS…` with nothing on standard input, to its end.
fn kelp_run(args: &[&str]) -> std::process::Output {
    let mut child = kelp_run_command(args).spawn().unwrap();
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

#[test]
fn kelp_run_simulates_the_led_and_the_sensor() {
    let out = kelp_run(&[
        BLINKY,
        "--manifest",
        "sample-modules/blinky/kelp.toml",
        "--hardware-map",
        "sample-modules/hardware-sim.toml",
        "--env",
        "BLINK_MS=20",
        "--env",
        "BLINK_COUNT=4",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "led on\nled off\nled on\nled off\n");
    // The simulated line, as the user watches it.
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("kelp: sim led = "))
            .collect::<Vec<_>>(),
        [
            "kelp: sim led = 1",
            "kelp: sim led = 0",
            "kelp: sim led = 1",
            "kelp: sim led = 0"
        ]
    );

    let out = kelp_run(&[
        THERMOMETER,
        "--manifest",
        "sample-modules/thermometer/kelp.toml",
        "--hardware-map",
        "sample-modules/hardware-sim.toml",
        "--sim-set",
        "sensors/0x48/temperature=23.5",
        "--env",
        "READINGS=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "temperature: 23.5 °C\n"
    );
}

#[test]
fn kelp_run_takes_button_presses_from_standard_input() {
    use std::io::{BufRead, BufReader, Read, Write};
    // No map: `sim` makes a line for each label the manifest grants.
    let mut child = kelp_run_command(&[
        BUTTON,
        "--manifest",
        "sample-modules/button/kelp.toml",
        "--env",
        "PRESSES=2",
    ])
    .spawn()
    .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "waiting for presses\n");
    // What a person types once the service is listening.
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(b"button=1\nbutton=0\nbutton=2\nbutton=1\n")
        .unwrap();
    drop(input);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(rest, "button pressed (1)\nbutton pressed (2)\n");
    assert!(
        stderr.contains("kelp: sim: `button=2`: a line is 1, 0 or - (floating)"),
        "{stderr}"
    );
}

#[test]
fn kelp_run_refuses_a_bad_map_or_setting_before_starting() {
    let bad_map = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad_map.path(),
        "[gpio.led]\nchip = \"/etc/passwd\"\nline = 1\n",
    )
    .unwrap();
    let out = kelp_run(&[
        BLINKY,
        "--manifest",
        "sample-modules/blinky/kelp.toml",
        "--hardware-map",
        bad_map.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`/etc/passwd` is not a GPIO chip"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = kelp_run(&[
        THERMOMETER,
        "--manifest",
        "sample-modules/thermometer/kelp.toml",
        "--sim-set",
        "sensors/0x48/temperature=20",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no device at 0x48 on `sensors`"),
        "{stderr}"
    );
}

#[test]
fn kelpd_grants_hardware_from_the_signed_manifest_and_its_map() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    // The manifest travels inside the file, as `kelp push` leaves it.
    let manifest = kelp_core::read_manifest_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample-modules/thermometer/kelp.toml"),
    )
    .unwrap();
    let module = kelp_core::embed(&std::fs::read(THERMOMETER).unwrap(), &manifest).unwrap();
    std::fs::write(dir.path().join("thermometer.wasm"), module).unwrap();
    std::fs::write(dir.path().join("hardware.toml"), MAP).unwrap();
    std::fs::write(
        dir.path().join("local.toml"),
        "[services.thermometer]\nmodule = \"thermometer.wasm\"\nenv = { INTERVAL_MS = \"50\" }\n",
    )
    .unwrap();
    let mut child = Command::new(kelp_tests::binary("kelpd"))
        .arg("--local")
        .arg(dir.path().join("local.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("var"))
        .args(["--hardware", "sim", "--hardware-map"])
        .arg(dir.path().join("hardware.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The map's starting temperature, read by the unchanged driver.
    assert!(
        first.ends_with(" thermometer | temperature: 21.0 °C"),
        "{first}"
    );
}
