//! The API end to end, in process: each area's answers as a client sees them.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use kelp_core::Digest;
use tower::ServiceExt as _;

use super::{Auth, PullPolicy, Registry, router};
use crate::oci::{self, MAX_MANIFEST_SIZE, WasmArtifact, digest_of};
use crate::store::Store;

const TOKEN: &str = "test-token";

struct T {
    _dir: tempfile::TempDir,
    app: Router,
    reg: Registry,
}

fn registry(pull: PullPolicy) -> T {
    registry_retaining(pull, Vec::new())
}

fn registry_retaining(pull: PullPolicy, retained: Vec<Digest>) -> T {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let auth = Auth {
        pull,
        tokens: std::sync::Arc::new(PullOnly),
    };
    let reg = Registry::retaining(store, auth, std::sync::Arc::new(Fixed(retained)));
    T {
        app: router(reg.clone()),
        reg,
        _dir: dir,
    }
}

/// `TOKEN` pushes and pulls; `PULL_TOKEN` (a device key) only pulls.
#[derive(Debug)]
struct PullOnly;

const PULL_TOKEN: &str = "device-key";

#[async_trait::async_trait]
impl super::Tokens for PullOnly {
    async fn accepts(&self, token: &str) -> std::io::Result<bool> {
        Ok(token == TOKEN)
    }
    async fn may_pull(&self, token: &str) -> std::io::Result<bool> {
        Ok(token == TOKEN || token == PULL_TOKEN)
    }
}

#[derive(Debug)]
struct Fixed(Vec<Digest>);

#[async_trait::async_trait]
impl super::Retained for Fixed {
    async fn manifests(&self) -> std::io::Result<Vec<Digest>> {
        Ok(self.0.clone())
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    fn code(&self) -> String {
        let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        body["errors"][0]["code"].as_str().unwrap().to_owned()
    }
    fn message(&self) -> String {
        let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        body["errors"][0]["message"].as_str().unwrap().to_owned()
    }
}

impl T {
    async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Body::from(body.to_vec())).unwrap())
            .await
    }

    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let d = digest_of(bytes);
        let r = self
            .call(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[],
                bytes,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        d
    }

    async fn push_wasm(&self, repo: &str, tag: &str, wasm: &[u8]) -> WasmArtifact {
        let a = WasmArtifact::new(wasm).unwrap();
        self.push_blob(repo, wasm).await;
        self.push_blob(repo, &a.config).await;
        let r = self
            .call(
                "PUT",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("content-type", oci::OCI_MANIFEST)],
                &a.manifest,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.header("docker-content-digest"),
            a.manifest_digest.to_string()
        );
        a
    }
}

#[tokio::test]
async fn a_blob_pushed_in_one_request_comes_back_whole_and_in_ranges() {
    let t = registry(PullPolicy::Token);
    let d = t.push_blob("kelp/hello", b"0123456789").await;
    let r = t
        .call("GET", &format!("/v2/kelp/hello/blobs/{d}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, b"0123456789");
    assert_eq!(r.header("docker-content-digest"), d.to_string());

    let r = t
        .call(
            "GET",
            &format!("/v2/kelp/hello/blobs/{d}"),
            &[("range", "bytes=4-")],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, b"456789");
    assert_eq!(r.header("content-range"), "bytes 4-9/10");

    let r = t
        .call(
            "GET",
            &format!("/v2/kelp/hello/blobs/{d}"),
            &[("range", "bytes=10-")],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), "bytes */10");

    let r = t
        .call("HEAD", &format!("/v2/kelp/hello/blobs/{d}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), "10");
}

#[tokio::test]
async fn a_wrong_digest_is_refused_and_nothing_is_stored() {
    let t = registry(PullPolicy::Token);
    let claimed = digest_of(b"something else");
    let r = t
        .call(
            "POST",
            &format!("/v2/x/blobs/uploads/?digest={claimed}"),
            &[],
            b"payload",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");
    assert!(
        r.message().contains(&digest_of(b"payload").to_string()),
        "{}",
        r.message()
    );
    for d in [claimed, digest_of(b"payload")] {
        let r = t.call("HEAD", &format!("/v2/x/blobs/{d}"), &[], b"").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let r = t
        .call("GET", &format!("/v2/x/blobs/{claimed}"), &[], b"")
        .await;
    assert_eq!(r.code(), "BLOB_UNKNOWN");
    let r = t.call("GET", "/v2/x/blobs/sha256:nothex", &[], b"").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );
}

#[tokio::test]
async fn chunks_must_arrive_in_order_and_the_digest_is_checked_at_the_end() {
    let t = registry(PullPolicy::Token);
    let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let location = r.header("location").to_owned();
    assert!(location.starts_with("/v2/x/blobs/uploads/"));
    assert!(!r.header("docker-upload-uuid").is_empty());

    let r = t
        .call("PATCH", &location, &[("content-range", "0-4")], b"hello")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), "0-4");
    // A gap, then an overlap: both 416, and the session is unharmed.
    let r = t
        .call("PATCH", &location, &[("content-range", "6-7")], b"xx")
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("range"), "0-4");
    // Its body is the error, and no header says otherwise.
    assert_eq!(r.code(), "BLOB_UPLOAD_INVALID");
    assert_eq!(r.header("content-type"), "application/json");
    assert!(
        r.header("content-length").is_empty()
            || r.header("content-length") == r.body.len().to_string(),
        "content-length {} for a body of {} bytes",
        r.header("content-length"),
        r.body.len()
    );
    let r = t
        .call("PATCH", &location, &[("content-range", "3-4")], b"lo")
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // A range that disagrees with the body is refused and rolled back.
    let r = t
        .call("PATCH", &location, &[("content-range", "5-9")], b", w")
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "SIZE_INVALID")
    );
    let r = t.call("GET", &location, &[], b"").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range"), "0-4");

    let d = digest_of(b"hello, world");
    let r = t
        .call(
            "PUT",
            &format!("{location}?digest={d}"),
            &[("content-range", "5-11")],
            b", world",
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("location"), format!("/v2/x/blobs/{d}"));
    let r = t.call("GET", &format!("/v2/x/blobs/{d}"), &[], b"").await;
    assert_eq!(r.body, b"hello, world");
    // The session is gone once closed.
    let r = t.call("PATCH", &location, &[], b"more").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN")
    );

    // A closing PUT whose digest does not match ends the session.
    let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
    let location = r.header("location").to_owned();
    t.call("PATCH", &location, &[], b"abc").await;
    let r = t
        .call("PUT", &format!("{location}?digest={d}"), &[], b"")
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );
    let r = t
        .call(
            "GET",
            &format!("/v2/x/blobs/{}", digest_of(b"abc")),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
    let location = r.header("location").to_owned();
    let r = t.call("DELETE", &location, &[], b"").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = t.call("GET", &location, &[], b"").await;
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn bytes_a_dropped_chunk_left_behind_do_not_end_up_in_the_blob() {
    let t = registry(PullPolicy::Token);
    let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
    let location = r.header("location").to_owned();
    let file = t
        ._dir
        .path()
        .join("uploads")
        .join(r.header("docker-upload-uuid"));
    t.call("PATCH", &location, &[], b"good ").await;
    // What a chunk whose request died mid-body leaves: bytes on disk that
    // the session never counted.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, b"GARBAGE").unwrap();
    let r = t
        .call("PATCH", &location, &[("content-range", "5-9")], b"bytes")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let d = digest_of(b"good bytes");
    let r = t
        .call("PUT", &format!("{location}?digest={d}"), &[], b"")
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = t.call("GET", &format!("/v2/x/blobs/{d}"), &[], b"").await;
    assert_eq!(r.body, b"good bytes");
}

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

#[tokio::test]
async fn hostile_names_and_requests_get_4xx_never_5xx() {
    let t = registry(PullPolicy::Token);
    for uri in [
        "/v2/../etc/tags/list",
        "/v2/a/..%2f..%2fetc/tags/list",
        "/v2/%2e%2e/blobs/uploads/",
        "/v2/UPPER/manifests/v1",
        "/v2/x/manifests/..",
        "/v2/x/manifests/sha256:..%2f..",
        "/v2/x/blobs/uploads/not-a-uuid",
        "/v2/x/blobs/uploads/../../etc",
        "/v2/x/nothing",
    ] {
        for method in ["GET", "PUT", "PATCH", "DELETE"] {
            let r = t
                .call(
                    method,
                    uri,
                    &[("content-range", "0-99999999999999999999")],
                    b"x",
                )
                .await;
            assert!(r.status.is_client_error(), "{method} {uri}: {}", r.status);
        }
    }
    let r = t.call("GET", "/v2/Bad..Name/tags/list", &[], b"").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "NAME_INVALID")
    );
    assert!(r.message().contains("Bad..Name"), "{}", r.message());
}

#[tokio::test]
async fn pushing_needs_a_token_and_pulling_follows_the_policy() {
    let t = registry(PullPolicy::Anonymous);
    let d = t.push_blob("x", b"public").await;
    let anonymous = |method: &str, uri: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap()
    };
    let r = t.send(anonymous("GET", &format!("/v2/x/blobs/{d}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t.send(anonymous("POST", "/v2/x/blobs/uploads/")).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
    );
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"kelp\"");
    let r = t.send(anonymous("GET", "/v2/")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = t.call("GET", "/v2/", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");

    let t = registry(PullPolicy::Token);
    let d = t.push_blob("x", b"private").await;
    let r = t.send(anonymous("GET", &format!("/v2/x/blobs/{d}"))).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
    );
}

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

impl T {
    async fn status(&self, method: &str, uri: &str) -> StatusCode {
        self.call(method, uri, &[], b"").await.status
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &serde_json::Value,
    ) -> Reply {
        self.call(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", oci::OCI_MANIFEST)],
            &serde_json::to_vec(manifest).unwrap(),
        )
        .await
    }
}

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

impl T {
    /// Pushes artifact `i`'s blobs, then (after `wait`) its manifest, and
    /// checks that an accepted manifest has every blob it names.
    async fn push_checked(
        &self,
        i: u32,
        wait: std::time::Duration,
        gc: Option<&Registry>,
        grace: std::time::Duration,
    ) -> bool {
        let wasm = format!("\0asm\x01\0\0\0race {i}").into_bytes();
        let a = WasmArtifact::new(&wasm).unwrap();
        self.push_blob("race", &wasm).await;
        self.push_blob("race", &a.config).await;
        tokio::time::sleep(wait).await;
        let uri = format!("/v2/race/manifests/t{i}");
        // Staggered, so that the push lands before, during and after sweeps.
        let push = async {
            if i.is_multiple_of(2) {
                tokio::time::sleep(std::time::Duration::from_micros(u64::from(i % 8) * 100)).await;
            }
            self.call(
                "PUT",
                &uri,
                &[("content-type", oci::OCI_MANIFEST)],
                &a.manifest,
            )
            .await
        };
        let sweep = async {
            if !i.is_multiple_of(2) {
                tokio::time::sleep(std::time::Duration::from_micros(u64::from(i % 8) * 100)).await;
            }
            if let Some(reg) = gc {
                reg.collect_garbage(grace).await.unwrap();
            }
        };
        let (r, ()) = tokio::join!(push, sweep);
        if r.status != StatusCode::CREATED {
            // A blob swept before its manifest came is reported, never
            // silently missing: the client pushes it again.
            assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN", "push {i}");
            return false;
        }
        // Accepted means complete, now and after any later sweep.
        if let Some(reg) = gc {
            reg.collect_garbage(grace).await.unwrap();
        }
        for d in [a.layer.digest, digest_of(&a.config), a.manifest_digest] {
            assert_eq!(
                self.status("GET", &format!("/v2/race/blobs/{d}")).await,
                StatusCode::OK,
                "push {i}: {d}"
            );
        }
        true
    }
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
            let grace = super::GcPolicy::default().grace;
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
