//! The engine: both allocators, fairness, memory limits, the compile cache.

use std::time::{Duration, Instant};

use kelp_core::{ByteSize, ExitReason, RestartPolicy, ServiceState};
use kelp_runtime::{
    Allocator, AllocatorChoice, EngineConfig, Runtime, RuntimeConfig, ServiceSpec, Supervisor,
};
use kelp_tests::artifacts::{HELLO, HELLO_P1, IDLE, MEMHOG, SPIN};

use crate::support::{quick_backoff, runtime_with, spec, supervisor, texts, within};

async fn run_hello_on(runtime: Runtime) -> Vec<String> {
    let sup = Supervisor::with_backoff(runtime, quick_backoff());
    let spec = ServiceSpec {
        restart: RestartPolicy::Never,
        ..spec("hello", HELLO)
    };
    let hello = sup.start(spec).unwrap();
    let status = within("hello to exit", hello.wait_final()).await;
    assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 0 }));
    texts(hello.logs().drain())
}

#[tokio::test(flavor = "multi_thread")]
async fn pooling_allocator_runs_components() {
    let rt = runtime_with(AllocatorChoice::Pooling);
    assert_eq!(rt.allocator(), Allocator::Pooling);
    let out = run_hello_on(rt).await;
    assert_eq!(
        out,
        ["Hello, world! Greetings from a WebAssembly component."]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_demand_allocator_runs_components() {
    let rt = runtime_with(AllocatorChoice::OnDemand);
    assert_eq!(rt.allocator(), Allocator::OnDemand);
    let out = run_hello_on(rt).await;
    assert_eq!(
        out,
        ["Hello, world! Greetings from a WebAssembly component."]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_preview1_core_modules() {
    let sup = supervisor();
    let spec = ServiceSpec {
        restart: RestartPolicy::Never,
        args: vec!["modules".into()],
        ..spec("hello-p1", HELLO_P1)
    };
    let hello = sup.start(spec).unwrap();
    let status = within("hello-p1 to exit", hello.wait_final()).await;
    assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 0 }));
    assert_eq!(
        texts(hello.logs().drain()),
        ["Hello, modules! Greetings from a WebAssembly core module."]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_services_run_at_once_in_one_process() {
    let sup = supervisor();
    let mut idles = Vec::new();
    for i in 0..20 {
        idles.push(sup.start(spec(format!("idle-{i}"), IDLE)).unwrap());
    }
    for idle in &idles {
        within("idle to be ready", async {
            while texts(idle.logs().drain()).is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(idle.status().state, ServiceState::Running);
    }
    sup.shutdown().await;
}

/// On one executor thread, a service in `loop {}` must still let `hello` start
/// and finish, and let the supervisor stop it: it is preempted every
/// timeslice.
#[test]
fn a_spinning_service_does_not_starve_others() {
    kelp_runtime::executor(Some(0))
        .build()
        .unwrap()
        .block_on(spinning_beside_hello());
}

async fn spinning_beside_hello() {
    let sup = supervisor();
    let spin = sup.start(spec("spin", SPIN)).unwrap();
    within("spin to start spinning", async {
        while !texts(spin.logs().drain()).contains(&"spin: spinning".to_owned()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let started = Instant::now();
    let hello = sup
        .start(ServiceSpec {
            restart: RestartPolicy::Never,
            ..spec("hello", HELLO)
        })
        .unwrap();
    let status = within("hello beside spin", hello.wait_final()).await;
    let took = started.elapsed();
    assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 0 }));
    // Alone, hello takes milliseconds. Beside spin it waits for at most a few
    // 10 ms timeslices; a second means the spinner was not preempted.
    assert!(
        took < Duration::from_secs(1),
        "hello took {took:?} beside spin"
    );
    assert_eq!(spin.status().state, ServiceState::Running);

    let stop = Instant::now();
    let final_status = within("spin to stop", sup.stop("spin")).await.unwrap();
    assert_eq!(final_status.state, ServiceState::Stopped);
    assert!(
        stop.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        stop.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_over_its_memory_limit_stops_and_the_others_go_on() {
    let sup = supervisor();
    let idle = sup.start(spec("idle", IDLE)).unwrap();
    within("idle to be ready", async {
        while texts(idle.logs().drain()).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let memhog = sup
        .start(ServiceSpec {
            restart: RestartPolicy::Never,
            memory_limit: ByteSize::mib(16),
            ..spec("memhog", MEMHOG)
        })
        .unwrap();
    let status = within("memhog to hit its limit", memhog.wait_final()).await;
    assert_eq!(status.state, ServiceState::Failed);
    assert_eq!(
        status.last_exit,
        Some(ExitReason::MemoryLimit {
            limit: ByteSize::mib(16)
        })
    );
    assert_eq!(
        status.last_exit.unwrap().to_string(),
        "memory limit 16 MiB exceeded"
    );
    // It got close to its limit before being stopped.
    let held = texts(memhog.logs().drain());
    assert!(
        held.iter().any(|l| l == "memhog: holding 12 MiB"),
        "{:?}",
        held.last()
    );
    assert_eq!(idle.status().state, ServiceState::Running);
    let hello = sup
        .start(ServiceSpec {
            restart: RestartPolicy::Never,
            ..spec("hello", HELLO)
        })
        .unwrap();
    let status = within("hello after memhog", hello.wait_final()).await;
    assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 0 }));
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_cannot_hold_host_memory_past_its_resource_limit() {
    let sup = supervisor();
    let memhog = sup
        .start(ServiceSpec {
            restart: RestartPolicy::Never,
            env: [("MEMHOG_HOLD".to_owned(), "handles".to_owned())].into(),
            ..spec("memhog", MEMHOG)
        })
        .unwrap();
    let status = within("memhog to hit the limit", memhog.wait_final()).await;
    assert_eq!(status.state, ServiceState::Failed);
    assert_eq!(
        status.last_exit.unwrap().to_string(),
        format!(
            "trapped: held more resources (streams, sockets, requests, pollables) at once than the {} allowed",
            kelp_runtime::MAX_RESOURCES
        )
    );
    // It held thousands before it was stopped, and never more than the
    // limit (a timer takes two places: its deadline and its pollable).
    let held = texts(memhog.logs().drain());
    let most = held
        .iter()
        .filter_map(|l| l.strip_prefix("memhog: holding ")?.strip_suffix(" handles"))
        .filter_map(|n| n.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        (1000..=kelp_runtime::MAX_RESOURCES).contains(&most),
        "{most}: {:?}",
        held.last()
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn running_services_report_their_memory() {
    let sup = supervisor();
    let idle = sup.start(spec("idle", IDLE)).unwrap();
    within("idle to be ready", async {
        while texts(idle.logs().drain()).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let status = idle.status();
    assert!(
        status.memory_bytes >= 64 << 10 && status.memory_bytes <= status.memory_limit.bytes(),
        "{status:?}"
    );
    sup.shutdown().await;
    assert_eq!(idle.status().memory_bytes, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_limit_above_the_device_maximum_is_refused() {
    let sup = supervisor();
    let err = sup
        .start(ServiceSpec {
            memory_limit: ByteSize::mib(4096),
            ..spec("greedy", HELLO)
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("greedy") && err.contains("4 GiB"), "{err}");
}

fn cached_runtime(dir: &std::path::Path) -> Runtime {
    Runtime::new(RuntimeConfig {
        engine: EngineConfig {
            pool_slots: 8,
            ..EngineConfig::default()
        },
        cache_dir: Some(dir.to_owned()),
        trusted_keys: Vec::new(),
        hardware: None,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_start_loads_compiled_code_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let first = cached_runtime(cache.path());
    first.load_file(HELLO.as_ref()).await.unwrap();
    assert_eq!(first.load_stats().compiled, 1);
    drop(first);

    // A new process (a new runtime) finds the code on disk.
    let second = cached_runtime(cache.path());
    let out = run_hello_on(second.clone()).await;
    assert_eq!(out.len(), 1);
    let stats = second.load_stats();
    assert_eq!((stats.compiled, stats.cache_hits), (0, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn services_of_one_module_starting_together_share_one_program() {
    // Ten services naming one file start at once, as at boot: the first
    // load compiles, the others wait for it and share its code.
    let cache = tempfile::tempdir().unwrap();
    let rt = cached_runtime(cache.path());
    let programs = load_at_once(&rt, 10).await;
    let stats = rt.load_stats();
    assert_eq!(
        (stats.compiled, stats.cache_hits, stats.memory_hits),
        (1, 0, 9),
        "{stats:?}"
    );
    assert!(
        programs
            .iter()
            .all(|p| std::sync::Arc::ptr_eq(p, &programs[0])),
        "one program in memory, not one per service"
    );

    // The same on a later boot, from the disk cache.
    drop(programs);
    let rt = cached_runtime(cache.path());
    load_at_once(&rt, 10).await;
    let stats = rt.load_stats();
    assert_eq!(
        (stats.compiled, stats.cache_hits, stats.memory_hits),
        (0, 1, 9),
        "{stats:?}"
    );
}

/// `idle` loaded `n` times at once, as `n` services of it start together.
async fn load_at_once(rt: &Runtime, n: usize) -> Vec<std::sync::Arc<kelp_runtime::Program>> {
    let loads: Vec<_> = (0..n)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move { rt.load_file(IDLE.as_ref()).await.unwrap() })
        })
        .collect();
    let mut programs = Vec::new();
    for load in loads {
        programs.push(load.await.unwrap());
    }
    programs
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_cache_file_is_discarded_and_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    cached_runtime(cache.path())
        .load_file(HELLO.as_ref())
        .await
        .unwrap();
    let entries = cwasm_files(cache.path());
    assert_eq!(entries.len(), 1);
    // Flip bytes in the middle of the compiled code.
    let mut code = std::fs::read(&entries[0]).unwrap();
    let mid = code.len() / 2;
    for b in &mut code[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&entries[0], &code).unwrap();

    let rt = cached_runtime(cache.path());
    let out = run_hello_on(rt.clone()).await;
    assert_eq!(out.len(), 1, "hello still runs");
    let stats = rt.load_stats();
    assert_eq!(
        (stats.cache_rejected, stats.compiled, stats.cache_hits),
        (1, 1, 0),
        "{stats:?}"
    );
    // The good entry is back.
    let rt = cached_runtime(cache.path());
    rt.load_file(HELLO.as_ref()).await.unwrap();
    assert_eq!(rt.load_stats().cache_hits, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_cache_file_is_never_loaded() {
    let cache = tempfile::tempdir().unwrap();
    cached_runtime(cache.path())
        .load_file(HELLO.as_ref())
        .await
        .unwrap();
    // Another device's cache (another key) puts its code where ours would be.
    let other = tempfile::tempdir().unwrap();
    cached_runtime(other.path())
        .load_file(HELLO.as_ref())
        .await
        .unwrap();
    let ours = cwasm_files(cache.path());
    let theirs = cwasm_files(other.path());
    std::fs::copy(&theirs[0], &ours[0]).unwrap();
    std::fs::copy(
        theirs[0].with_extension("tag"),
        ours[0].with_extension("tag"),
    )
    .unwrap();

    let rt = cached_runtime(cache.path());
    rt.load_file(HELLO.as_ref()).await.unwrap();
    let stats = rt.load_stats();
    assert_eq!((stats.cache_rejected, stats.compiled), (1, 1), "{stats:?}");
}

fn cwasm_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(root).unwrap().flatten() {
        if dir.path().is_dir() {
            for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
                if f.path().extension().is_some_and(|e| e == "cwasm") {
                    found.push(f.path());
                }
            }
        }
    }
    found
}
