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

/// `kelp-cloud serve` collecting garbage every second with no grace, killed
/// when dropped.
struct CollectingCloud {
    child: std::process::Child,
    addr: String,
    token: String,
}

impl CollectingCloud {
    fn start(data: &std::path::Path) -> Self {
        let mut child = std::process::Command::new(kelp_tests::binary("kelp-cloud"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("KELP_REGISTRY_GC_EVERY", "1")
            .env("KELP_REGISTRY_GC_GRACE", "0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (mut addr, mut token) = (String::new(), String::new());
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("admin token: ") {
                token = rest.split_once(", saved in ").unwrap().0.to_owned();
            }
            if let Some(a) = line.strip_prefix("listening on http://") {
                addr = a.to_owned();
                break;
            }
        }
        assert!(
            !addr.is_empty() && !token.is_empty(),
            "kelp-cloud did not start"
        );
        CollectingCloud { child, addr, token }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for CollectingCloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_release_keeps_its_image_while_collection_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CollectingCloud::start(&dir.path().join("cloud"));
    let http = reqwest::Client::new();
    let admin = format!("Bearer {}", cloud.token);

    let out = crate::registry::kelp(
        &[
            "push",
            kelp_tests::artifacts::HELLO,
            "--to",
            &format!("{}/gc/hello:v1", cloud.addr),
        ],
        Some(&cloud.token),
    );
    assert!(
        out.status.success(),
        "{}",
        crate::registry::text(&out.stderr)
    );
    let image = crate::registry::pushed_digest(&out);
    let layer = crate::registry::sha256(&std::fs::read(kelp_tests::artifacts::HELLO).unwrap());

    // A fleet whose release runs the image, and a device of that fleet.
    let res = http
        .post(cloud.url("/api/v1/fleets"))
        .header("authorization", &admin)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&serde_json::json!({ "name": "garden" })).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let fleet: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let res = http
        .post(cloud.url("/api/v1/fleets/garden/releases"))
        .header("authorization", &admin)
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(
                &serde_json::json!({ "version": "1.0", "services": { "hello": {
            "image": format!("{}/gc/hello@{image}", cloud.addr) } } }),
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let res = http
        .post(cloud.url("/device/v1/register"))
        .bearer_auth(fleet["provisioning_key"].as_str().unwrap())
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&serde_json::json!({ "uuid": "4b1c6a3e-8f0d-4c7b-9a55-0d2f6e1b7c90", "arch": "aarch64", "agent_version": "0.1.0" })).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let device: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let device_key = format!("Bearer {}", device["device_key"].as_str().unwrap());

    let delete = |path: String, auth: String| {
        let http = http.clone();
        let url = cloud.url(&path);
        async move {
            let res = http
                .delete(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or_default();
            (
                status,
                body["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    // The device pulls the image, but never deletes.
    let res = http
        .get(cloud.url(&format!("/v2/gc/hello/manifests/{image}")))
        .header("authorization", &device_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        delete("/v2/gc/hello/manifests/v1".into(), device_key.clone()).await,
        (403, "DENIED".to_owned())
    );
    // The release's image is not deleted, even by the admin; its tag is.
    assert_eq!(
        delete(format!("/v2/gc/hello/manifests/{image}"), admin.clone()).await,
        (403, "DENIED".to_owned())
    );
    assert_eq!(
        delete("/v2/gc/hello/manifests/v1".into(), admin.clone())
            .await
            .0,
        202
    );

    // A blob nothing uses is collected within a couple of seconds.
    let stray = b"a blob nobody will ever name";
    let res = http
        .post(cloud.url(&format!(
            "/v2/gc/hello/blobs/uploads/?digest={}",
            crate::registry::sha256(stray)
        )))
        .header("authorization", &admin)
        .body(stray.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let status = |path: String| {
        let http = http.clone();
        let url = cloud.url(&path);
        let admin = admin.clone();
        async move {
            http.get(url)
                .header("authorization", admin)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let stray_path = format!("/v2/gc/hello/blobs/{}", crate::registry::sha256(stray));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(stray_path.clone()).await == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stray blob was never collected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The release's image, untagged now, and its layer outlive collection.
    assert_eq!(status(format!("/v2/gc/hello/manifests/{image}")).await, 200);
    assert_eq!(status(format!("/v2/gc/hello/blobs/{layer}")).await, 200);
}

/// The Python interpreter of a virtual environment with oras-py, which
/// `.ci/run` makes; a missing one fails the test and says how to make it.
fn oras_python() -> String {
    std::env::var("KELP_TEST_ORAS_PYTHON").unwrap_or_else(|_| {
        panic!(
            "this test needs oras-py: `python3 -m venv DIR && DIR/bin/pip install oras==0.2.43`, \
             then KELP_TEST_ORAS_PYTHON=DIR/bin/python (as .ci/run does)"
        )
    })
}

#[tokio::test]
async fn an_sbom_attached_by_oras_is_listed_by_the_referrers_api() {
    let python = oras_python();
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let out = crate::registry::kelp(
        &[
            "push",
            kelp_tests::artifacts::HELLO,
            "--to",
            &format!("{}/kelp/hello:v1", cloud.addr),
        ],
        Some(&cloud.token),
    );
    assert!(
        out.status.success(),
        "{}",
        crate::registry::text(&out.stderr)
    );
    let image = crate::registry::pushed_digest(&out);
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", cloud.token);
    let manifest = http
        .get(cloud.url(&format!("/v2/kelp/hello/manifests/{image}")))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    let sbom = dir.path().join("hello.spdx.json");
    std::fs::write(&sbom, br#"{"spdxVersion":"SPDX-2.3","name":"hello"}"#).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/all/registry_oras.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .args([&cloud.addr, "kelp/hello", &cloud.token, &image])
        .arg(manifest.len().to_string())
        .arg(&sbom)
        .arg("application/spdx+json")
        .output()
        .unwrap();
    let printed = crate::registry::text(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        crate::registry::text(&out.stderr)
    );
    let fields: Vec<&str> = printed.split_whitespace().collect();
    // oras-py's manifest PUT was answered 201 with the subject it named.
    assert_eq!(fields[..2], ["201", image.as_str()], "{printed}");
    let attached = fields[2];

    let index: serde_json::Value = http
        .get(cloud.url(&format!(
            "/v2/kelp/hello/referrers/{image}?artifactType=application/spdx%2Bjson"
        )))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["digest"], attached);
    assert_eq!(
        listed[0]["annotations"]["org.example.attached-by"],
        "oras-py"
    );
    // Filtered by another type, nothing.
    let index: serde_json::Value = http
        .get(cloud.url(&format!(
            "/v2/kelp/hello/referrers/{image}?artifactType=application/vnd.example.signature"
        )))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert_eq!(index["manifests"], serde_json::json!([]));
}

#[tokio::test]
async fn sha512_blobs_are_stored_verified_and_absent_ones_are_404() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", cloud.token);
    let sha512 = |bytes: &[u8]| format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)));
    let blob = b"a blob its client addresses by sha512";

    let get = |digest: String| {
        let http = http.clone();
        let url = cloud.url(&format!("/v2/big/blobs/{digest}"));
        let auth = auth.clone();
        async move {
            let res = http
                .get(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.bytes().await.unwrap().to_vec())
        }
    };
    assert_eq!(get(sha512(blob)).await.0, 404);
    assert_eq!(get("sha512:0123".to_owned()).await.0, 400);
    let res = http
        .post(cloud.url(&format!(
            "/v2/big/blobs/uploads/?digest={}",
            sha512(b"not this")
        )))
        .header("authorization", &auth)
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = http
        .post(cloud.url(&format!("/v2/big/blobs/uploads/?digest={}", sha512(blob))))
        .header("authorization", &auth)
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(get(sha512(blob)).await, (200, blob.to_vec()));
    let stored = cloud
        .data
        .join("registry/blobs/sha512")
        .join(&sha512(blob)["sha512:".len()..]);
    assert_eq!(std::fs::read(stored).unwrap(), blob);
}
