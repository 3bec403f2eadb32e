//! The API end to end, in process: each area's answers as a client sees them,
//! one module per area; the client side they share is here.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use kelp_core::Digest;
use tower::ServiceExt as _;

use super::{Auth, PullPolicy, Registry, router};
use crate::oci::{self, MAX_MANIFEST_SIZE, WasmArtifact, digest_of};
use crate::store::Store;

mod access;
mod blobs;
mod deletes;
mod foreign;
mod gc;
mod manifests;
mod referrers;
mod sha512;

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
