//! Deletes of tags, manifests and blobs, and what is never deleted.

use super::*;

#[tokio::test]
async fn tags_manifests_and_blobs_are_deleted_as_the_spec_says() {
    let t = registry(PullPolicy::Token);
    let a = t.push_wasm("x", "v1", b"\0asm\x01\0\0\0one").await;
    let d = a.manifest_digest;
    let layer = a.layer.digest;

    // Only a token that may push may delete; a device key may not.
    let r = t
        .send(
            Request::builder()
                .method("DELETE")
                .uri("/v2/x/manifests/v1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = t
        .send(
            Request::builder()
                .method("DELETE")
                .uri("/v2/x/manifests/v1")
                .header("authorization", format!("Bearer {PULL_TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "DENIED");
    assert!(r.message().contains("not delete"), "{}", r.message());

    // A blob a manifest uses is not deleted from under it.
    let r = t
        .call("DELETE", &format!("/v2/x/blobs/{layer}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.message().contains(&d.to_string()), "{}", r.message());

    // A tag: 202, then gone, the manifest still there by digest.
    assert_eq!(
        t.status("DELETE", "/v2/x/manifests/v1").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        t.status("GET", "/v2/x/manifests/v1").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.status("DELETE", "/v2/x/manifests/v1").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.status("GET", &format!("/v2/x/manifests/{d}")).await,
        StatusCode::OK
    );
    let r = t.call("GET", "/v2/x/tags/list", &[], b"").await;
    assert_eq!(r.body, br#"{"name":"x","tags":[]}"#);

    // The manifest by digest takes its other tags with it.
    let r = t
        .call(
            "PUT",
            "/v2/x/manifests/v2",
            &[("content-type", oci::OCI_MANIFEST)],
            &a.manifest,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        t.status("DELETE", &format!("/v2/x/manifests/{d}")).await,
        StatusCode::ACCEPTED
    );
    let r = t
        .call("GET", &format!("/v2/x/manifests/{d}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    assert_eq!(
        t.status("GET", "/v2/x/manifests/v2").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.status("DELETE", &format!("/v2/x/manifests/{d}")).await,
        StatusCode::NOT_FOUND
    );

    // Now the layer is nobody's: 202, then 404.
    assert_eq!(
        t.status("DELETE", &format!("/v2/x/blobs/{layer}")).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        t.status("GET", &format!("/v2/x/blobs/{layer}")).await,
        StatusCode::NOT_FOUND
    );
    let r = t
        .call("DELETE", &format!("/v2/x/blobs/{layer}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn a_release_image_is_neither_deleted_nor_collected() {
    let wasm = b"\0asm\x01\0\0\0released";
    let a = WasmArtifact::new(wasm).unwrap();
    let t = registry_retaining(PullPolicy::Token, vec![a.manifest_digest]);
    t.push_wasm("x", "v1", wasm).await;
    let r = t
        .call(
            "DELETE",
            &format!("/v2/x/manifests/{}", a.manifest_digest),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.message().contains("release"), "{}", r.message());
    // Its tag may go; the image and its blobs stay.
    assert_eq!(
        t.status("DELETE", "/v2/x/manifests/v1").await,
        StatusCode::ACCEPTED
    );
    let report = t
        .reg
        .collect_garbage(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.blobs_removed, 0, "{report:?}");
    for d in [a.manifest_digest, a.layer.digest, digest_of(&a.config)] {
        let r = t.call("GET", &format!("/v2/x/blobs/{d}"), &[], b"").await;
        assert_eq!(r.status, StatusCode::OK, "{d}");
    }
}
