//! The engine's figures, each beside its baseline in the same run:
//!
//! - start latency: `hello` from start request to first stdout line, warm
//!   cache, beside fork+exec of the same program built natively;
//! - fairness: `hello` start-to-exit alone and beside `spin`, on one worker;
//! - density: resident memory per idle service and time until N are up;
//! - footprint: `kelpd --local` resident memory with 10 idle services.
//!
//! `cargo bench -p kelp-benches --bench engine` prints one table.
//! `KELP_BENCH_DENSITY=N` sets how many idle services the density row starts
//! (default 10,000).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kelp_core::{ByteSize, RestartPolicy};
use kelp_runtime::{
    AllocatorChoice, EngineConfig, Invocation, LogBuffer, LogEvent, Program, Runtime,
    RuntimeConfig, ServiceSpec, Supervisor,
};
use kelp_tests::artifacts::{HELLO, HELLO_NATIVE, IDLE, SPIN};

mod common;
use common::{Row, percentile};

const START_RUNS: usize = 2_000;
const NATIVE_RUNS: usize = 300;
const FAIR_RUNS: usize = 40;

fn main() {
    // `cargo bench` passes `--bench`; there is nothing else to parse.
    let mut rows = Vec::new();
    let executor = kelp_runtime::executor(None).build().unwrap();
    executor.block_on(async {
        start_latency(&mut rows).await;
    });
    fairness(&mut rows);
    let n: usize = std::env::var("KELP_BENCH_DENSITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    executor.block_on(density(&mut rows, n));
    kelpd_footprint(&mut rows);
    common::print_rows(&rows);
}

fn runtime(slots: u32) -> Runtime {
    Runtime::new(RuntimeConfig {
        engine: EngineConfig {
            allocator: AllocatorChoice::Auto,
            pool_slots: slots,
            ..EngineConfig::default()
        },
        cache_dir: None,
        trusted_keys: Vec::new(),
        hardware: None,
    })
    .unwrap()
}

fn us(d: Duration) -> String {
    if d >= Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    }
}

/// Time from asking for a run to the guest's first stdout line.
async fn first_line(runtime: &Runtime, program: &Program) -> Duration {
    let mut inv = Invocation::new("hello");
    inv.logs = LogBuffer::new();
    let start = SystemTime::now();
    let exit = runtime.run(program, &inv).await;
    assert!(exit.is_success(), "{exit}");
    let events = inv.logs.drain();
    let Some(LogEvent::Line(line)) = events.first() else {
        panic!("hello printed nothing");
    };
    line.at.duration_since(start).unwrap_or_default()
}

async fn start_latency(rows: &mut Vec<Row>) {
    let rt = runtime(64);
    let program = rt.load_file(HELLO.as_ref()).await.unwrap();
    for _ in 0..100 {
        first_line(&rt, &program).await;
    }
    let mut wasm = Vec::with_capacity(START_RUNS);
    for _ in 0..START_RUNS {
        wasm.push(first_line(&rt, &program).await);
    }
    wasm.sort();

    let mut native = Vec::with_capacity(NATIVE_RUNS);
    for _ in 0..NATIVE_RUNS {
        let start = Instant::now();
        let mut child = Command::new(HELLO_NATIVE)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        native.push(start.elapsed());
        child.wait().unwrap();
        assert!(line.starts_with("Hello"));
    }
    native.sort();

    let (wm, wp) = (percentile(&wasm, 0.5), percentile(&wasm, 0.99));
    let (nm, np) = (percentile(&native, 0.5), percentile(&native, 0.99));
    rows.push(Row {
        what: format!("start → first line, hello, warm ({START_RUNS} runs), median / p99"),
        kelp: format!("{} / {}", us(wm), us(wp)),
        baseline: format!("fork+exec native: {} / {}", us(nm), us(np)),
        target: "≤ native, ≤ 30 µs median".into(),
        met: Some(wm <= nm && wm <= Duration::from_micros(30)),
    });
    rows.push(container_start(wm));
}

const RUNC_RUNS: usize = 20;

/// `runc run` of the same native `hello` in a minimal bundle: the container
/// baseline. Skipped, and said so, where runc is not installed.
fn container_start(wasm_median: Duration) -> Row {
    let what = format!("start → first line, hello in `runc run` ({RUNC_RUNS} runs), median / p99");
    let Some(runc) = which("runc") else {
        return Row {
            what,
            kelp: us(wasm_median),
            baseline: "runc not installed (apt-get install runc)".into(),
            target: "1000× faster than runc".into(),
            met: None,
        };
    };
    let bundle = tempfile::tempdir().unwrap();
    let rootfs = bundle.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    // The native hello and the shared libraries it links.
    std::fs::copy(HELLO_NATIVE, rootfs.join("hello")).unwrap();
    let ldd = Command::new("ldd").arg(HELLO_NATIVE).output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dest = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(lib, dest).unwrap();
    }
    let spec = Command::new(&runc)
        .arg("spec")
        .current_dir(bundle.path())
        .status()
        .unwrap();
    assert!(spec.success());
    let config_path = bundle.path().join("config.json");
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("\"sh\"", "\"/hello\"")
        .replace("\"terminal\": true", "\"terminal\": false");
    std::fs::write(&config_path, config).unwrap();
    let mut times = Vec::with_capacity(RUNC_RUNS);
    for i in 0..RUNC_RUNS {
        let start = Instant::now();
        let out = Command::new(&runc)
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(format!("kelp-bench-{}-{i}", std::process::id()))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let took = start.elapsed();
        if !out.status.success() || !out.stdout.starts_with(b"Hello") {
            return Row {
                what,
                kelp: us(wasm_median),
                baseline: format!(
                    "runc failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .next()
                        .unwrap_or("")
                ),
                target: "1000× faster than runc".into(),
                met: None,
            };
        }
        times.push(took);
    }
    times.sort();
    let (rm, rp) = (percentile(&times, 0.5), percentile(&times, 0.99));
    Row {
        what,
        kelp: format!(
            "{} ({:.0}× faster)",
            us(wasm_median),
            rm.as_secs_f64() / wasm_median.as_secs_f64()
        ),
        baseline: format!("runc run: {} / {}", us(rm), us(rp)),
        target: "1000× faster than runc".into(),
        met: Some(rm >= wasm_median * 1000),
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
}

/// `hello` start-to-exit on a one-worker executor (a single-core board),
/// alone and while `spin` runs on the same worker.
fn fairness(rows: &mut Vec<Row>) {
    let executor = kelp_runtime::executor(Some(1)).build().unwrap();
    let rt = runtime(16);
    let (hello, spin) = executor.block_on(async {
        (
            rt.load_file(HELLO.as_ref()).await.unwrap(),
            rt.load_file(SPIN.as_ref()).await.unwrap(),
        )
    });
    let measure = |label: &str| -> Vec<Duration> {
        let mut times = Vec::with_capacity(FAIR_RUNS);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..FAIR_RUNS {
            // Arrive at a random point of the spinner's timeslice, as a real
            // start request would, not always just after it began.
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            std::thread::sleep(Duration::from_micros((seed >> 33) % 10_000));
            let (rt, hello) = (rt.clone(), hello.clone());
            let start = Instant::now();
            let exit = executor
                .block_on(
                    executor.spawn(async move { rt.run(&hello, &Invocation::new("hello")).await }),
                )
                .unwrap();
            times.push(start.elapsed());
            assert!(exit.is_success(), "{label}: {exit}");
        }
        times.sort();
        times
    };
    let alone = measure("alone");
    let spin_logs = LogBuffer::new();
    let spinner = {
        let (rt, spin) = (rt.clone(), spin.clone());
        let mut inv = Invocation::new("spin");
        inv.logs = spin_logs.clone();
        executor.spawn(async move { rt.run(&spin, &inv).await })
    };
    while spin_logs.buffered_bytes() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let beside = measure("beside spin");
    spinner.abort();

    let timeslice = kelp_runtime::DEFAULT_TIMESLICE;
    let (am, ap) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
    let (bm, bp) = (percentile(&beside, 0.5), percentile(&beside, 0.99));
    rows.push(Row {
        what: format!("hello start → exit beside spin, 1 worker ({FAIR_RUNS} runs), median / p99"),
        kelp: format!("{} / {}", us(bm), us(bp)),
        baseline: format!("alone: {} / {}", us(am), us(ap)),
        target: format!("≤ alone + one timeslice ({})", us(timeslice)),
        met: Some(bm <= am + timeslice),
    });
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

async fn wait_ready(logs: &LogBuffer) {
    loop {
        if logs
            .drain()
            .iter()
            .any(|e| matches!(e, LogEvent::Line(l) if l.text == "idle: ready"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn density(rows: &mut Vec<Row>, n: usize) {
    let slots = u32::try_from(n + 8).unwrap();
    let rt = runtime(slots);
    let allocator = rt.allocator();
    let sup = Arc::new(Supervisor::new(rt));
    let spec = |name: String| ServiceSpec {
        stop_grace: Duration::ZERO,
        restart: RestartPolicy::Never,
        memory_limit: ByteSize::mib(16),
        ..ServiceSpec::new(name, IDLE)
    };
    // One service first, so code pages and the engine's own start-up are not
    // counted against the others.
    let first = sup.start(spec("warm".into())).unwrap();
    wait_ready(&first.logs()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes(std::process::id());

    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    let mut failed = None;
    for i in 0..n {
        match sup.start(spec(format!("idle-{i}"))) {
            Ok(h) => handles.push(h),
            Err(e) => {
                failed = Some(format!("start {i}: {e}"));
                break;
            }
        }
    }
    let mut up = 0;
    for h in &handles {
        let logs = h.logs();
        tokio::select! {
            () = wait_ready(&logs) => up += 1,
            status = h.wait_final() => {
                failed.get_or_insert(format!("{}: {:?}", status.name, status.last_exit));
            }
        }
    }
    let all_up = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes(std::process::id());
    let per = (after.saturating_sub(before)) / (up.max(1) as u64);
    sup.shutdown().await;

    rows.push(Row {
        what: format!("idle services at once ({allocator} allocator)"),
        kelp: match &failed {
            None => format!("{up} up in {:.2} s", all_up.as_secs_f64()),
            Some(why) => format!("{up} of {n} up; stopped at {why}"),
        },
        baseline: "—".into(),
        target: format!("{n}"),
        met: Some(up == n),
    });
    rows.push(Row {
        what: "resident memory per idle service".into(),
        kelp: format!("{:.1} KiB", per as f64 / 1024.0),
        baseline: "bare wasmtime host: ~48 KiB on-demand, ~55 KiB pooled".into(),
        target: "≤ 64 KiB".into(),
        met: Some(per <= 64 << 10),
    });
}

fn kelpd_footprint(rows: &mut Vec<Row>) {
    let kelpd = kelp_tests::binary("kelpd");
    let dir = tempfile::tempdir().unwrap();
    let mut target = String::new();
    for i in 0..10 {
        target.push_str(&format!(
            "[services.idle-{i}]\nmodule = {IDLE:?}\nstop-grace = \"0s\"\n"
        ));
    }
    let file = dir.path().join("local.toml");
    std::fs::write(&file, target).unwrap();
    // A device normally starts with its compile cache filled by an earlier
    // boot: fill it, then measure the second start.
    let (cold, _) = run_kelpd(&kelpd, &file, dir.path());
    let (rss, ready) = run_kelpd(&kelpd, &file, dir.path());
    assert_eq!(ready, 10);
    rows.push(Row {
        what: "kelpd --local with 10 idle services, resident memory".into(),
        kelp: format!(
            "{:.1} MiB (first boot, compiling: {:.1} MiB)",
            rss as f64 / (1 << 20) as f64,
            cold as f64 / (1 << 20) as f64
        ),
        baseline: "balena supervisor: 85 MB at start".into(),
        target: "≤ 12 MiB".into(),
        met: Some(rss <= 12 << 20),
    });
}

/// Starts kelpd, waits for its 10 services, and returns its resident memory
/// and how many came up.
fn run_kelpd(
    kelpd: &std::path::Path,
    file: &std::path::Path,
    dir: &std::path::Path,
) -> (u64, usize) {
    let mut child = Command::new(kelpd)
        .arg("--local")
        .arg(file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("KELP_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut ready = 0;
    for line in out.lines() {
        if line.unwrap().ends_with("| idle: ready") {
            ready += 1;
            if ready == 10 {
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_bytes(child.id());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    (rss, ready)
}
