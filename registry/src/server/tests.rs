//! The API end to end, in process: each area's answers as a client sees them.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use kelp_core::Digest;
use tower::ServiceExt as _;

use super::{Auth, PullPolicy, Registry, TokenHash, router};
use crate::oci::{self, MAX_MANIFEST_SIZE, WasmArtifact, digest_of};
use crate::store::Store;

const TOKEN: &str = "test-token";

struct T {
    _dir: tempfile::TempDir,
    app: Router,
}

fn registry(pull: PullPolicy) -> T {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let auth = Auth {
        pull,
        tokens: std::sync::Arc::new(vec![TokenHash::of(TOKEN)]),
    };
    T {
        app: router(Registry::new(store, auth)),
        _dir: dir,
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
