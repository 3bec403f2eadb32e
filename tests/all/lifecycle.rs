//! Service lifecycle: restart policies, backoff, crash loops, `/data`, output.

use std::collections::BTreeMap;
use std::time::Duration;

use kelp_core::{ExitReason, RestartPolicy, ServiceState};
use kelp_runtime::{LogEvent, MAX_BUFFERED_BYTES, ServiceSpec};
use kelp_tests::artifacts::{
    CHATTY, COUNTER, CRASHY, GRACEFUL, HELLO, HTTP_HELLO, IDLE, JAILBREAK,
};

use crate::support::{lines, spec, supervisor, texts, within};

fn crashy(policy: RestartPolicy) -> ServiceSpec {
    ServiceSpec {
        restart: policy,
        env: BTreeMap::from([("CRASH_AFTER_MS".into(), "0".into())]),
        ..spec("crashy", CRASHY)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn never_does_not_restart() {
    let sup = supervisor();
    let s = sup.start(crashy(RestartPolicy::Never)).unwrap();
    let status = within("crashy to fail", s.wait_final()).await;
    assert_eq!(status.state, ServiceState::Failed);
    assert_eq!(status.restarts, 0);
    assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 1 }));
}

#[tokio::test(flavor = "multi_thread")]
async fn on_failure_restarts_exactly_n_times_then_stops() {
    let sup = supervisor();
    let s = sup
        .start(crashy(RestartPolicy::OnFailure { max_restarts: 2 }))
        .unwrap();
    let status = within("crashy to give up", s.wait_final()).await;
    assert_eq!(status.state, ServiceState::Failed);
    assert_eq!(status.restarts, 2);
    // Three runs in all, and no fourth: it stays failed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ups = texts(s.logs().drain())
        .iter()
        .filter(|l| l.starts_with("crashy: up"))
        .count();
    assert_eq!(ups, 3);
    assert_eq!(s.status().restarts, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_failure_leaves_a_successful_exit_alone() {
    let sup = supervisor();
    let s = sup
        .start(ServiceSpec {
            restart: RestartPolicy::OnFailure { max_restarts: 5 },
            ..spec("hello", HELLO)
        })
        .unwrap();
    let status = within("hello to exit", s.wait_final()).await;
    assert_eq!(status.state, ServiceState::Exited);
    assert_eq!(status.restarts, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn always_restarts_even_after_success() {
    let sup = supervisor();
    let s = sup.start(spec("hello", HELLO)).unwrap();
    let status = within("hello to be restarted", s.wait_for(|s| s.restarts >= 3)).await;
    assert!(!status.state.is_final());
    sup.shutdown().await;
    assert_eq!(s.status().state, ServiceState::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_back_off_exponentially_and_a_crash_loop_says_so() {
    let sup = supervisor();
    let s = sup.start(crashy(RestartPolicy::Always)).unwrap();
    let status = within(
        "crashy to be crash-looping",
        s.wait_for(|s| s.state == ServiceState::CrashLooping),
    )
    .await;
    assert!(status.restarts >= 2, "{status:?}");
    assert!(status.next_start_in_ms.is_some(), "{status:?}");
    within("more restarts", s.wait_for(|s| s.restarts >= 5)).await;
    sup.shutdown().await;

    // Each start is logged by the guest; the gaps between starts grow.
    let starts: Vec<_> = lines(s.logs().drain())
        .into_iter()
        .filter(|l| l.text.starts_with("crashy: up"))
        .map(|l| l.at)
        .collect();
    assert!(starts.len() >= 5, "{}", starts.len());
    let gaps: Vec<Duration> = starts
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .collect();
    // Waits are 20, 40, 80, 160 ms…: never shorter than that, whatever the
    // machine's load.
    for (i, gap) in gaps.iter().take(4).enumerate() {
        let floor = Duration::from_millis(20 << i);
        assert!(
            *gap >= floor,
            "gap {i} was {gap:?}, below {floor:?}: {gaps:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn counter_keeps_its_count_in_data_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let sup = supervisor();
    let s = sup
        .start(ServiceSpec {
            data_dir: Some(data.path().join("counter")),
            ..spec("counter", COUNTER)
        })
        .unwrap();
    within("three runs", s.wait_for(|s| s.restarts >= 3)).await;
    sup.shutdown().await;
    let out = texts(s.logs().drain());
    assert!(out.len() >= 3);
    assert_eq!(&out[..3], ["count=1", "count=2", "count=3"]);
    let saved = std::fs::read_to_string(data.path().join("counter/count")).unwrap();
    assert_eq!(saved, out.last().unwrap().trim_start_matches("count="));

    // A new supervisor (a reboot) finds the same count.
    let sup = supervisor();
    let s = sup
        .start(ServiceSpec {
            restart: RestartPolicy::Never,
            data_dir: Some(data.path().join("counter")),
            ..spec("counter", COUNTER)
        })
        .unwrap();
    within("counter after reboot", s.wait_final()).await;
    let next: u64 = saved.parse::<u64>().unwrap() + 1;
    assert_eq!(texts(s.logs().drain()), [format!("count={next}")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_cannot_leave_its_data_directory() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("jail");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(root.path().join("secret.txt"), "outside").unwrap();
    // A symlink planted in /data that points at the host's /etc.
    std::os::unix::fs::symlink("/etc", data.join("planted")).unwrap();

    let sup = supervisor();
    let s = sup
        .start(ServiceSpec {
            restart: RestartPolicy::Never,
            data_dir: Some(data.clone()),
            ..spec("jailbreak", JAILBREAK)
        })
        .unwrap();
    let status = within("jailbreak to finish", s.wait_final()).await;
    assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 0 }));
    let out = texts(s.logs().drain());
    assert!(
        out.contains(&"allowed: write and read /data/mine.txt".to_owned()),
        "{out:#?}"
    );
    assert!(out.contains(&"jailbreak: done".to_owned()), "{out:#?}");
    let escaped: Vec<_> = out.iter().filter(|l| l.starts_with("ESCAPED")).collect();
    assert!(escaped.is_empty(), "escaped: {escaped:#?}");
    let denied = out.iter().filter(|l| l.starts_with("denied")).count();
    assert!(denied >= 9, "expected every attempt denied: {out:#?}");
    // Nothing was written outside.
    assert!(!root.path().join("outside.txt").exists());
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chatty_service_stays_within_its_buffer_and_counts_drops() {
    let sup = supervisor();
    let chatty = sup.start(spec("chatty", CHATTY)).unwrap();
    let idle = sup.start(spec("idle", IDLE)).unwrap();
    let logs = chatty.logs();
    // Nobody reads for a while, and chatty writes as fast as it can.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(logs.buffered_bytes() <= MAX_BUFFERED_BYTES);
    }
    let status = chatty.status();
    assert_eq!(status.state, ServiceState::Running);
    assert!(status.log_lines_dropped > 1000, "{status:?}");

    // The reader learns how many it missed, then gets the newest lines in
    // order.
    let events = logs.drain();
    let LogEvent::Dropped(missed) = events[0] else {
        panic!("expected a gap first, got {:?}", events[0]);
    };
    assert!(missed > 0);
    let numbers: Vec<u64> = texts(events[1..].to_vec())
        .iter()
        .map(|l| l.trim_start_matches("chatty line ").parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "lines out of order"
    );

    // A quiet neighbour was not held up.
    within(
        "idle to run",
        idle.wait_for(|s| s.state == ServiceState::Running),
    )
    .await;
    assert_eq!(texts(idle.logs().drain()), ["idle: ready"]);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_cancels_a_service_that_ignores_it_after_the_grace_period() {
    let sup = supervisor();
    let s = sup
        .start(ServiceSpec {
            stop_grace: Duration::from_millis(300),
            ..spec("idle", IDLE)
        })
        .unwrap();
    within(
        "idle to run",
        s.wait_for(|s| s.state == ServiceState::Running),
    )
    .await;
    let started = std::time::Instant::now();
    let status = within("stop", sup.stop("idle")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(status.state, ServiceState::Stopped, "{status:?}");
    assert_eq!(status.last_exit, Some(ExitReason::Killed), "{status:?}");
    // Tokio's timers have millisecond granularity: allow that much.
    assert!(
        took >= Duration::from_millis(295),
        "stopped after {took:?}: {status:?}"
    );
    assert!(sup.service("idle").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_listens_for_the_stop_ends_at_once_and_one_that_ignores_it_gets_its_grace() {
    let sup = supervisor();
    let grace = Duration::from_secs(3);
    let graceful = sup
        .start(ServiceSpec {
            stop_grace: grace,
            ..spec("graceful", GRACEFUL)
        })
        .unwrap();
    let idle = sup
        .start(ServiceSpec {
            stop_grace: grace,
            ..spec("idle", IDLE)
        })
        .unwrap();
    for s in [&graceful, &idle] {
        within("to run", s.wait_for(|s| s.state == ServiceState::Running)).await;
    }
    // Both say they are ready: the stop reaches them running, not starting.
    within("both to say they are ready", async {
        let mut ready = Vec::new();
        while ready.len() < 2 {
            ready.extend(texts(graceful.logs().drain()));
            ready.extend(texts(idle.logs().drain()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The two start side by side: either may say so first.
        ready.sort();
        assert_eq!(ready, ["graceful: ready", "idle: ready"]);
    })
    .await;
    let started = std::time::Instant::now();
    let status = within("stop", sup.stop("graceful")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        status.last_exit,
        Some(ExitReason::Exited { code: 0 }),
        "{status:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "stopped after {took:?}: {status:?}"
    );
    let said = texts(graceful.logs().drain());
    assert!(
        said.iter()
            .any(|l| l.starts_with("graceful: asked to stop after")),
        "{said:?}"
    );

    // A service that neither reads stdin nor listens keeps its whole grace.
    let started = std::time::Instant::now();
    let status = within("stop", sup.stop("idle")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(status.last_exit, Some(ExitReason::Killed), "{status:?}");
    assert!(
        took >= grace - Duration::from_millis(5),
        "stopped after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_while_the_module_loads_starts_nothing() {
    // No compile cache: the component compiles on its start, for a while.
    let sup = supervisor();
    let s = sup.start(spec("late", HTTP_HELLO)).unwrap();
    assert_eq!(s.status().state, ServiceState::Starting);
    within("shutdown", sup.shutdown()).await;
    let status = s.status();
    assert_eq!(status.state, ServiceState::Stopped, "{status:?}");
    // It never ran: no exit, not even a kill, and no module it ran.
    assert_eq!(status.last_exit, None, "{status:?}");
    assert_eq!(status.digest, None, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_touches_only_what_changed() {
    let sup = supervisor();
    let spec = |name: &str| crate::support::spec(name, IDLE);
    let report = sup.apply(vec![spec("a"), spec("b"), spec("c")]).await;
    assert_eq!(report.started, ["a", "b", "c"]);
    let c = sup.service("c").unwrap();
    within("c to run", c.wait_for(|s| s.state == ServiceState::Running)).await;

    let mut b = spec("b");
    b.env.insert("MODE".into(), "new".into());
    let report = sup.apply(vec![b, spec("c"), spec("d")]).await;
    assert_eq!(report.stopped, ["a"]);
    assert_eq!(report.restarted, ["b"]);
    assert_eq!(report.unchanged, ["c"]);
    assert_eq!(report.started, ["d"]);
    // `c` is the very same service, never restarted.
    let c_now = sup.service("c").unwrap();
    assert_eq!(c_now.status().restarts, 0);
    assert_eq!(texts(c_now.logs().drain()), ["idle: ready"]);
    assert!(sup.service("a").is_none());
    let names: Vec<String> = sup.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["b", "c", "d"]);

    let report = sup
        .apply(vec![crate::support::spec("Bad/Name", IDLE), spec("c")])
        .await;
    assert_eq!(report.rejected.len(), 1);
    assert!(report.rejected[0].1.contains("Bad/Name"));
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_service_whose_new_module_does_not_load_keeps_running() {
    let sup = supervisor();
    let report = sup.apply(vec![spec("svc", IDLE)]).await;
    assert_eq!(report.started, ["svc"]);
    let old = sup.service("svc").unwrap();
    let running = within(
        "svc to run",
        old.wait_for(|s| s.state == ServiceState::Running),
    )
    .await;
    within("svc to say it is ready", async {
        let mut seen = Vec::new();
        while !seen.iter().any(|l| l == "idle: ready") {
            seen.extend(texts(old.logs().next().await.unwrap_or_default()));
        }
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"MZ\x90\x00 not wasm").unwrap();
    let report = sup.apply(vec![spec("svc", bogus.to_str().unwrap())]).await;
    assert_eq!(report.restarted, Vec::<String>::new());
    assert_eq!(report.kept.len(), 1, "{report:?}");
    assert_eq!(report.kept[0].0, "svc");
    assert!(
        report.kept[0].1.contains("bogus.wasm")
            && report.kept[0].1.contains("not a WebAssembly file"),
        "{report:?}"
    );
    // The very same run goes on.
    let now = sup.service("svc").unwrap();
    assert_eq!(now.spec().module, std::path::Path::new(IDLE));
    let status = now.status();
    assert_eq!(status.state, ServiceState::Running, "{status:?}");
    assert_eq!((status.restarts, status.digest), (0, running.digest));
    // Said once, before; not again.
    assert_eq!(texts(now.logs().drain()), Vec::<String>::new());

    // A change that loads replaces it.
    let mut changed = spec("svc", IDLE);
    changed.env.insert("MODE".into(), "new".into());
    let report = sup.apply(vec![changed]).await;
    assert_eq!(
        (report.restarted, report.kept),
        (vec!["svc".to_owned()], vec![])
    );
    let new = sup.service("svc").unwrap();
    within(
        "the new svc to run",
        new.wait_for(|s| s.state == ServiceState::Running),
    )
    .await;
    assert_eq!(new.spec().env["MODE"], "new");
    assert_eq!(old.status().state, ServiceState::Stopped);
    sup.shutdown().await;
}

/// When the old version of `idle` ended, against when the new one said it
/// was ready, for a change of version under `update`.
async fn hand_over_times(
    update: kelp_core::api::UpdateStrategy,
) -> (std::time::SystemTime, std::time::SystemTime) {
    let sup = std::sync::Arc::new(supervisor());
    let v1 = ServiceSpec {
        update,
        env: BTreeMap::from([("VERSION".into(), "1".into())]),
        ..spec("idle", IDLE)
    };
    let old = sup.start(v1.clone()).unwrap();
    within(
        "v1 to run",
        old.wait_for(|s| s.state == ServiceState::Running),
    )
    .await;
    let ended = tokio::spawn(async move {
        old.wait_final().await;
        std::time::SystemTime::now()
    });
    let v2 = ServiceSpec {
        env: BTreeMap::from([("VERSION".into(), "2".into())]),
        ..v1
    };
    let report = sup.apply(vec![v2]).await;
    assert_eq!(report.restarted, ["idle"]);
    let new = sup.service("idle").unwrap();
    let ready = within("v2 to say it is ready", async {
        loop {
            let events = new.logs().next().await.unwrap();
            if let Some(l) = lines(events).into_iter().find(|l| l.text == "idle: ready") {
                return l.at;
            }
        }
    })
    .await;
    (within("v1 to end", ended).await.unwrap(), ready)
}

#[tokio::test(flavor = "multi_thread")]
async fn hand_over_starts_the_new_version_before_the_old_one_stops() {
    use kelp_core::api::UpdateStrategy;
    // The old one takes its grace period (200 ms) to stop: it never reads
    // stdin. Handed over, the new one is ready before that begins.
    let (old_ended, new_ready) = hand_over_times(UpdateStrategy::HandOver).await;
    assert!(
        new_ready < old_ended,
        "hand-over: new ready after the old ended"
    );
    // By default the old one stops first.
    let (old_ended, new_ready) = hand_over_times(UpdateStrategy::DownloadThenKill).await;
    assert!(
        new_ready > old_ended,
        "download-then-kill: new ready before the old ended"
    );
}
