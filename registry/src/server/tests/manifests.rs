//! Manifests and tags: round trips, refusals, listing, and layers never pushed.

use super::*;

#[tokio::test]
async fn manifests_round_trip_by_tag_and_digest_with_their_type() {
    let t = registry(PullPolicy::Token);
    let a = t
        .push_wasm("kelp/hello", "v1", b"\0asm fake component")
        .await;
    for reference in ["v1".to_owned(), a.manifest_digest.to_string()] {
        let r = t
            .call(
                "GET",
                &format!("/v2/kelp/hello/manifests/{reference}"),
                &[],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, a.manifest);
        assert_eq!(r.header("content-type"), oci::OCI_MANIFEST);
        assert_eq!(
            r.header("docker-content-digest"),
            a.manifest_digest.to_string()
        );
        let r = t
            .call(
                "HEAD",
                &format!("/v2/kelp/hello/manifests/{reference}"),
                &[],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-length"), a.manifest.len().to_string());
    }
    let r = t.call("GET", "/v2/kelp/hello/manifests/v2", &[], b"").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    let r = t
        .call("GET", "/v2/kelp/nothing/manifests/v1", &[], b"")
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );
    // The same manifest is not in another repository.
    t.push_wasm("other", "v1", b"another").await;
    let r = t
        .call(
            "GET",
            &format!("/v2/other/manifests/{}", a.manifest_digest),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn manifests_with_missing_blobs_or_fields_are_refused() {
    let t = registry(PullPolicy::Token);
    let a = WasmArtifact::new(b"never pushed").unwrap();
    let ct = [("content-type", oci::OCI_MANIFEST)];
    let r = t.call("PUT", "/v2/x/manifests/v1", &ct, &a.manifest).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN")
    );
    assert!(r.message().contains(&a.config.len().to_string()) || r.message().contains("sha256:"));

    let no_layers = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0}}"#;
    let r = t.call("PUT", "/v2/x/manifests/v1", &ct, no_layers).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
    );
    assert!(r.message().contains("layers"), "{}", r.message());

    let r = t.call("PUT", "/v2/x/manifests/v1", &ct, b"{not json").await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    let r = t
        .call(
            "PUT",
            "/v2/x/manifests/v1",
            &[("content-type", "text/plain")],
            b"{}",
        )
        .await;
    assert_eq!(r.code(), "MANIFEST_INVALID");

    // Pushing by digest checks the digest.
    let wrong = digest_of(b"other");
    let r = t
        .call("PUT", &format!("/v2/x/manifests/{wrong}"), &ct, &a.manifest)
        .await;
    assert_eq!(r.code(), "DIGEST_INVALID");

    let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
    let r = t.call("PUT", "/v2/x/manifests/v1", &ct, &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn tags_are_listed_in_order_and_paginated() {
    let t = registry(PullPolicy::Token);
    for tag in ["v3", "v1", "latest", "v2"] {
        t.push_wasm("x", tag, b"same module").await;
    }
    let r = t.call("GET", "/v2/x/tags/list", &[], b"").await;
    let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list["name"], "x");
    assert_eq!(
        list["tags"],
        serde_json::json!(["latest", "v1", "v2", "v3"])
    );

    let r = t.call("GET", "/v2/x/tags/list?n=2", &[], b"").await;
    let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list["tags"], serde_json::json!(["latest", "v1"]));
    assert_eq!(
        r.header("link"),
        "</v2/x/tags/list?n=2&last=v1>; rel=\"next\""
    );
    let r = t.call("GET", "/v2/x/tags/list?n=2&last=v1", &[], b"").await;
    let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list["tags"], serde_json::json!(["v2", "v3"]));
    assert_eq!(r.header("link"), "");
    let r = t.call("GET", "/v2/x/tags/list?n=0", &[], b"").await;
    let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list["tags"], serde_json::json!([]));
    let r = t.call("GET", "/v2/nope/tags/list", &[], b"").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );
}
