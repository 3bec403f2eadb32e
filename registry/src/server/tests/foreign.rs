//! Non-distributable layers: named by a manifest, never pushed.

use super::*;

#[tokio::test]
async fn a_manifest_may_name_non_distributable_layers_it_never_pushed() {
    let t = registry(PullPolicy::Token);
    let config = t.push_blob("x", b"{}").await;
    let foreign = digest_of(b"a base layer fetched from elsewhere");
    let manifest = |media_type: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": media_type, "digest": foreign, "size": 1234,
                        "urls": ["https://example.com/layer.tar"]}],
        }))
        .unwrap()
    };
    let r = t
        .call(
            "PUT",
            "/v2/x/manifests/foreign",
            &[("content-type", oci::OCI_MANIFEST)],
            &manifest("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // The same layer as an ordinary one must be pushed first.
    let r = t
        .call(
            "PUT",
            "/v2/x/manifests/ordinary",
            &[("content-type", oci::OCI_MANIFEST)],
            &manifest("application/vnd.oci.image.layer.v1.tar+gzip"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
}
