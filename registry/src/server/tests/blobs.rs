//! Blobs: pushed whole or in chunks, read whole or in ranges, checked against their digest.

use super::*;

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
