//! Garbage collection: what it removes, what it spares, and pushes racing it.

use super::*;

#[tokio::test]
async fn garbage_collection_removes_what_nothing_uses_and_spares_the_young() {
    let t = registry(PullPolicy::Token);
    let kept = t.push_wasm("x", "kept", b"\0asm\x01\0\0\0kept").await;
    let dropped = t
        .push_wasm("y", "dropped", b"\0asm\x01\0\0\0dropped, 20 bytes")
        .await;
    let stray = t.push_blob("x", b"a blob no manifest names").await;
    let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
    let abandoned = r.header("location").to_owned();

    // Within the grace period nothing goes, not even the stray blob.
    let report = t
        .reg
        .collect_garbage(std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        (report.blobs_removed, report.uploads_removed),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(t.status("GET", &abandoned).await, StatusCode::NO_CONTENT);

    assert_eq!(
        t.status(
            "DELETE",
            &format!("/v2/y/manifests/{}", dropped.manifest_digest)
        )
        .await,
        StatusCode::ACCEPTED
    );
    let report = t
        .reg
        .collect_garbage(std::time::Duration::ZERO)
        .await
        .unwrap();
    // The stray blob, and the dropped image's manifest, config and layer.
    assert_eq!(report.blobs_removed, 4, "{report:?}");
    assert_eq!(report.uploads_removed, 1, "{report:?}");
    assert_eq!(t.status("GET", &abandoned).await, StatusCode::NOT_FOUND);
    for d in [
        stray,
        dropped.layer.digest,
        dropped.manifest_digest,
        digest_of(&dropped.config),
    ] {
        assert_eq!(
            t.status("GET", &format!("/v2/x/blobs/{d}")).await,
            StatusCode::NOT_FOUND,
            "{d}"
        );
    }
    for d in [
        kept.layer.digest,
        kept.manifest_digest,
        digest_of(&kept.config),
    ] {
        assert_eq!(
            t.status("GET", &format!("/v2/x/blobs/{d}")).await,
            StatusCode::OK,
            "{d}"
        );
    }
    assert_eq!(
        t.status("GET", "/v2/x/manifests/kept").await,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_racing_garbage_collection_never_loses_a_blob() {
    let t = std::sync::Arc::new(registry(PullPolicy::Token));
    // Blobs older than the grace period, their manifest pushed while a
    // sweep runs: only the lock stands between the check and the sweep.
    let grace = std::time::Duration::from_millis(30);
    let (mut pushed, mut refused) = (0, 0);
    for i in 0..40 {
        if t.push_checked(i, grace * 2, Some(&t.reg), grace).await {
            pushed += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!("past the grace period: {pushed} pushed, {refused} refused");

    // With the default grace, a client that uploads and then pushes never
    // sees a refusal, however often collection runs meanwhile.
    let reg = t.reg.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let gc = tokio::spawn(async move {
        let mut runs = 0u32;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let grace = super::super::GcPolicy::default().grace;
            reg.collect_garbage(grace).await.unwrap();
            runs += 1;
            tokio::task::yield_now().await;
        }
        runs
    });
    for i in 100..150 {
        assert!(
            t.push_checked(i, std::time::Duration::ZERO, None, grace)
                .await,
            "push {i} was refused"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = gc.await.unwrap();
    assert!(runs > 1, "collection ran {runs} times");
}
