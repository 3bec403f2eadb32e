//! The parts of the OCI distribution spec 1.1 beyond push and pull, against
//! a real `kelp-cloud serve`: answers framed so a kept-alive connection
//! stays in step, sha512 digests, deletes, garbage collection and referrers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use crate::registry::TestCloud;

/// One response read off a kept-alive connection by its own framing: the
/// status, the headers, and exactly `Content-Length` bytes of body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_response(conn: &mut BufReader<TcpStream>) -> Raw {
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 "), "not a status line: {line:?}");
    let status = line[9..12].parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.to_owned(), v.trim().to_owned()));
    }
    let raw = Raw {
        status,
        headers,
        body: Vec::new(),
    };
    assert!(
        raw.header("transfer-encoding").is_none(),
        "error answers have a length"
    );
    // A 204 has no body by definition; every other answer says its length.
    let len: usize = match raw.header("content-length") {
        Some(n) => n.parse().unwrap(),
        None if raw.status == 204 => 0,
        None => panic!("a {status} answer without Content-Length"),
    };
    let mut body = vec![0; len];
    conn.read_exact(&mut body).unwrap();
    Raw { body, ..raw }
}

#[test]
fn error_answers_are_framed_by_their_own_headers_on_a_kept_alive_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let conn = TcpStream::connect(&cloud.addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    let auth = format!(
        "Authorization: Bearer {}\r\nHost: {}",
        cloud.token, cloud.addr
    );

    write!(
        conn,
        "POST /v2/framing/blobs/uploads/ HTTP/1.1\r\n{auth}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let started = read_response(&mut reader);
    assert_eq!(started.status, 202);
    let location = started.header("location").unwrap().to_owned();

    // A chunk that does not start where the upload ends: 416 with a JSON body.
    let chunk = vec![b'x'; 1024];
    write!(
        conn,
        "PATCH {location} HTTP/1.1\r\n{auth}\r\nContent-Type: application/octet-stream\r\nContent-Range: 1024-2047\r\nContent-Length: 1024\r\n\r\n"
    )
    .unwrap();
    conn.write_all(&chunk).unwrap();
    let refused = read_response(&mut reader);
    assert_eq!(refused.status, 416);
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_INVALID");
    // The upload's own headers still say where to resume.
    assert_eq!(refused.header("range"), Some("0-0"));
    assert_eq!(refused.header("location"), Some(location.as_str()));

    // The next answer on the same connection is read from its first byte.
    write!(conn, "GET {location} HTTP/1.1\r\n{auth}\r\n\r\n").unwrap();
    let status = read_response(&mut reader);
    assert_eq!(status.status, 204);
    assert_eq!(status.header("range"), Some("0-0"));
    assert!(status.body.is_empty());

    // And a 404 with a body, then one more request, still in step.
    write!(
        conn,
        "GET /v2/framing/manifests/nope HTTP/1.1\r\n{auth}\r\n\r\n"
    )
    .unwrap();
    let missing = read_response(&mut reader);
    assert_eq!(missing.status, 404);
    let body: serde_json::Value = serde_json::from_slice(&missing.body).unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");
    write!(conn, "DELETE {location} HTTP/1.1\r\n{auth}\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut reader).status, 204);
}
