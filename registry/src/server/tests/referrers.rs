//! Referrers: artifacts attached to a subject, listed and filtered.

use super::*;

#[tokio::test]
async fn referrers_are_listed_by_subject_and_filtered_by_artifact_type() {
    let t = registry(PullPolicy::Token);
    let subject = t.push_wasm("x", "v1", b"\0asm\x01\0\0\0signed").await;
    let empty = t.push_blob("x", b"{}").await;
    let sig = t.push_blob("x", b"a detached signature").await;
    let sbom = t.push_blob("x", b"{\"spdxVersion\":\"SPDX-2.3\"}").await;
    let referrer = |artifact_type: &str, layer: Digest, size: usize| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": artifact_type, "digest": layer, "size": size}],
            "subject": {"mediaType": oci::OCI_MANIFEST, "digest": subject.manifest_digest, "size": subject.manifest.len()},
            "annotations": {"org.example.kind": artifact_type},
        })
    };
    let signature = referrer("application/vnd.example.signature", sig, 20);
    let r = t
        .put_manifest(
            "x",
            &digest_of(&serde_json::to_vec(&signature).unwrap()).to_string(),
            &signature,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("oci-subject"), subject.manifest_digest.to_string());
    let spdx = referrer("application/spdx+json", sbom, 26);
    let r = t.put_manifest("x", "sbom", &spdx).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // A push without a subject says nothing of one.
    let plain = t.push_wasm("x", "v2", b"\0asm\x01\0\0\0plain").await;
    let r = t
        .call(
            "PUT",
            "/v2/x/manifests/v2",
            &[("content-type", oci::OCI_MANIFEST)],
            &plain.manifest,
        )
        .await;
    assert_eq!(r.header("oci-subject"), "");

    let list = |query: &str| {
        let t = &t;
        let uri = format!("/v2/x/referrers/{}{query}", subject.manifest_digest);
        async move { t.call("GET", &uri, &[], b"").await }
    };
    let r = list("").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), oci::OCI_INDEX);
    assert_eq!(r.header("oci-filters-applied"), "");
    let index: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(index["mediaType"], oci::OCI_INDEX);
    let mut types: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        ["application/spdx+json", "application/vnd.example.signature"]
    );
    for m in index["manifests"].as_array().unwrap() {
        assert_eq!(m["mediaType"], oci::OCI_MANIFEST);
        assert_eq!(m["annotations"]["org.example.kind"], m["artifactType"]);
        let r = t
            .call(
                "GET",
                &format!("/v2/x/manifests/{}", m["digest"].as_str().unwrap()),
                &[],
                b"",
            )
            .await;
        assert_eq!(r.body.len() as u64, m["size"].as_u64().unwrap());
    }

    let r = list("?artifactType=application/spdx%2Bjson").await;
    assert_eq!(r.header("oci-filters-applied"), "artifactType");
    let index: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        index["manifests"][0]["artifactType"],
        "application/spdx+json"
    );

    // A subject with nothing attached, even one never pushed: an empty
    // index, not 404.
    for uri in [
        format!("/v2/x/referrers/{}", plain.manifest_digest),
        format!("/v2/nothing/referrers/{}", digest_of(b"never")),
    ] {
        let r = t.call("GET", &uri, &[], b"").await;
        assert_eq!(r.status, StatusCode::OK);
        let index: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(index["manifests"], serde_json::json!([]));
    }
    let r = t
        .call("GET", "/v2/x/referrers/sha256:nothex", &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}
