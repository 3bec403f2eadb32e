//! Who may push and pull, and requests no registry should answer with a 5xx.

use super::*;

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
