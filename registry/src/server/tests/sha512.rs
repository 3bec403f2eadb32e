//! sha512 digests, wherever sha256 ones work.

use super::*;

fn sha512(bytes: &[u8]) -> String {
    crate::digest::BlobDigest::of(crate::digest::Algorithm::Sha512, bytes).to_string()
}

#[tokio::test]
async fn sha512_digests_work_wherever_sha256_ones_do() {
    let t = registry(PullPolicy::Token);
    let missing = sha512(b"never pushed");
    // Well formed but absent: 404, not 400.
    let r = t
        .call("GET", &format!("/v2/x/blobs/{missing}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "BLOB_UNKNOWN");
    let r = t
        .call("HEAD", &format!("/v2/x/blobs/{missing}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Malformed: 400.
    let r = t.call("GET", "/v2/x/blobs/sha512:abcd", &[], b"").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");

    // A monolithic upload, checked by sha512.
    let layer = b"a layer addressed by sha512";
    let d = sha512(layer);
    let r = t
        .call(
            "POST",
            &format!("/v2/x/blobs/uploads/?digest={d}"),
            &[],
            layer,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("docker-content-digest"), d);
    let r = t.call("GET", &format!("/v2/x/blobs/{d}"), &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, layer);
    // The wrong content for a sha512 digest is refused.
    let r = t
        .call(
            "POST",
            &format!("/v2/x/blobs/uploads/?digest={}", sha512(b"other")),
            &[],
            layer,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");

    // A chunked upload closed with a sha512 digest.
    let config = b"{\"a config\":512}";
    let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
    let location = r.header("location").to_owned();
    let r = t
        .call(
            "PATCH",
            &location,
            &[("content-range", "0-4")],
            &config[..5],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = t
        .call(
            "PUT",
            &format!("{location}?digest={}", sha512(b"wrong")),
            &[],
            &config[5..],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
    let location = r.header("location").to_owned();
    let r = t
        .call(
            "PUT",
            &format!("{location}?digest={}", sha512(config)),
            &[],
            config,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    // Mounted into another repository.
    let r = t
        .call(
            "POST",
            &format!("/v2/y/blobs/uploads/?mount={d}&from=x"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("location"), format!("/v2/y/blobs/{d}"));

    // A manifest naming both, pushed by its sha512 digest.
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha512(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": layer.len()}],
    }))
    .unwrap();
    let md = sha512(&manifest);
    let r = t
        .call(
            "PUT",
            &format!("/v2/x/manifests/{md}"),
            &[("content-type", oci::OCI_MANIFEST)],
            &manifest,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("docker-content-digest"), md);
    let r = t
        .call("GET", &format!("/v2/x/manifests/{md}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, manifest);
    assert_eq!(r.header("docker-content-digest"), md);
    let r = t
        .call(
            "GET",
            &format!("/v2/x/manifests/{}", sha512(b"no such manifest")),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
}
