//! Host-call overhead: a GPIO `set-state` from a guest, round trip, beside
//! the same backend call made directly from Rust in the same run.
//!
//! The guest is the `toggler` sample: it sets the simulated `led` output N
//! times through the SDK's embedded-hal pin and prints the time per call
//! (grant check, resource lookup, canonical ABI, backend). The baseline
//! calls the simulated line's `set` through the backend trait, as the host
//! does after its checks. Target: at most 200 ns above the direct call.
//!
//! `cargo bench -p kelp-benches --bench hostcalls`

use std::time::{Duration, Instant};

use kelp_hostcalls::{Hardware, HardwareMap, LineRequest};
use kelp_runtime::{EngineConfig, Invocation, LogEvent, Runtime, RuntimeConfig};
use kelp_tests::artifacts::TOGGLER;

const CALLS: u32 = 1_000_000;
const ROUNDS: usize = 7;
const TARGET_NS: f64 = 200.0;

const MAP: &str = r#"
[gpio.led]
chip = "gpiochip0"
line = 17
modes = ["output"]
"#;

fn main() {
    let executor = kelp_runtime::executor(None).build().unwrap();
    let hardware = Hardware::simulated(HardwareMap::parse(MAP).unwrap());
    let runtime = Runtime::new(RuntimeConfig {
        engine: EngineConfig::default(),
        cache_dir: None,
        trusted_keys: Vec::new(),
        hardware: Some(hardware.clone()),
    })
    .unwrap();
    let program = executor
        .block_on(runtime.load_file(TOGGLER.as_ref()))
        .unwrap();
    let grants = kelp_core::Manifest::from_toml(
        "name = \"toggler\"\nversion = \"1\"\nkind = \"component\"\n[grants.gpio.led]\nmodes = [\"output\"]\n",
    )
    .unwrap()
    .grants;

    let mut guest = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..ROUNDS {
        // Alternate, so both see the same machine.
        let invocation = Invocation {
            args: vec![CALLS.to_string()],
            grants: Some(grants.clone()),
            ..Invocation::new("toggler")
        };
        let exit = executor.block_on(runtime.run(&program, &invocation));
        assert!(exit.is_success(), "toggler: {exit}");
        guest.push(per_call(&invocation));
        direct.push(direct_ns(&hardware));
    }
    guest.sort_by(f64::total_cmp);
    direct.sort_by(f64::total_cmp);
    let (g, d) = (guest[ROUNDS / 2], direct[ROUNDS / 2]);
    let overhead = g - d;
    println!();
    println!("| what ({ROUNDS} rounds of {CALLS} calls, medians) | ns per call |");
    println!("|---|---|");
    println!("| guest `set-state` round trip (simulated line) | {g:.1} |");
    println!("| direct backend `set` from Rust (baseline) | {d:.1} |");
    println!(
        "| overhead | {overhead:.1} (target ≤ {TARGET_NS:.0}: {}) |",
        if overhead <= TARGET_NS {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "\nrounds, guest: {:?}\nrounds, direct: {:?}",
        guest.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>(),
        direct.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>()
    );
}

/// The guest's own measurement: "<ns> ns per call".
fn per_call(invocation: &Invocation) -> f64 {
    let lines: Vec<String> = invocation
        .logs
        .drain()
        .into_iter()
        .filter_map(|e| match e {
            LogEvent::Line(l) => Some(l.text),
            LogEvent::Dropped(_) => None,
        })
        .collect();
    lines
        .iter()
        .find_map(|l| l.strip_suffix(" ns per call")?.parse().ok())
        .unwrap_or_else(|| panic!("no measurement in {lines:?}"))
}

/// The same number of `set` calls on the same simulated line, from Rust.
fn direct_ns(hardware: &Hardware) -> f64 {
    let map = hardware.map();
    let binding = &map.gpio["led"];
    let line = hardware
        .gpio_backend()
        .request(
            &binding.line,
            &LineRequest {
                output: Some(false),
                edges: false,
                bias: None,
                consumer: "bench".into(),
            },
        )
        .unwrap();
    let start = Instant::now();
    for i in 0..CALLS {
        std::hint::black_box(line.set(i % 2 == 0)).unwrap();
    }
    let elapsed: Duration = start.elapsed();
    elapsed.as_nanos() as f64 / f64::from(CALLS)
}
