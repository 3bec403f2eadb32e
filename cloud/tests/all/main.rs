//! The fleet API as a user and a device meet it, driven in-process through
//! the same router `kelp-cloud serve` runs. Every test runs against SQLite,
//! and against PostgreSQL too when `KELP_TEST_POSTGRES` holds a URL (each
//! run in a schema of its own).

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "fixtures are part of the tests: a failed assumption is a failed test"
)]

mod devices;
mod openapi;
mod releases;
mod tokens;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// One cloud: a data directory, its app, and its admin token.
pub struct TestCloud {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub app: Router,
    pub cp: kelp_cloud::ControlPlane,
    pub admin: String,
    /// The PostgreSQL schema to drop afterwards.
    postgres: Option<kelp_cloud::ScratchSchema>,
}

impl Drop for TestCloud {
    fn drop(&mut self) {
        let Some(schema) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a thread of its own with a runtime of its own can.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(schema.remove()).unwrap();
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("could not drop the test schema");
        }
    }
}

/// What a request got back.
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `field` a 400 blamed.
    pub fn field(&self) -> &str {
        self.body["field"].as_str().unwrap_or("")
    }
}

impl TestCloud {
    /// A cloud on every database the tests can reach.
    pub async fn all() -> Vec<TestCloud> {
        let mut clouds = vec![Self::sqlite().await];
        if let Ok(url) = std::env::var("KELP_TEST_POSTGRES") {
            clouds.push(Self::postgres(&url).await);
        }
        clouds
    }

    async fn sqlite() -> TestCloud {
        let dir = tempfile::tempdir().unwrap();
        let url = kelp_cloud::sqlite_url(dir.path()).unwrap();
        Self::start(dir, url).await
    }

    async fn postgres(base: &str) -> TestCloud {
        let schema = kelp_cloud::ScratchSchema::create(base, "kelp_test")
            .await
            .unwrap();
        let mut cloud = Self::start(tempfile::tempdir().unwrap(), schema.url()).await;
        cloud.postgres = Some(schema);
        cloud
    }

    async fn start(dir: tempfile::TempDir, url: String) -> TestCloud {
        let data = kelp_cloud::DataDir::open(dir.path()).unwrap();
        let admin = data.new_admin_token.clone().unwrap();
        let cp = kelp_cloud::ControlPlane::open(&data, &url).await.unwrap();
        let app = kelp_cloud::app_with_fleet(&data, kelp_registry::PullPolicy::Token, cp.clone())
            .unwrap();
        TestCloud {
            dir,
            url,
            app,
            cp,
            admin,
            postgres: None,
        }
    }

    /// The same data directory and database, opened again as a restarted
    /// server would.
    pub async fn restart(&self) -> Router {
        let data = kelp_cloud::DataDir::open(self.dir.path()).unwrap();
        let cp = kelp_cloud::ControlPlane::open(&data, &self.url)
            .await
            .unwrap();
        kelp_cloud::app_with_fleet(&data, kelp_registry::PullPolicy::Token, cp).unwrap()
    }

    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        send(&self.app, method, uri, token, body, &[]).await
    }

    pub async fn get(&self, uri: &str, token: &str) -> Reply {
        self.send(Method::GET, uri, Some(token), None).await
    }

    pub async fn post(&self, uri: &str, token: &str, body: Value) -> Reply {
        self.send(Method::POST, uri, Some(token), Some(body)).await
    }

    pub async fn put(&self, uri: &str, token: &str, body: Value) -> Reply {
        self.send(Method::PUT, uri, Some(token), Some(body)).await
    }

    pub async fn delete(&self, uri: &str, token: &str) -> Reply {
        self.send(Method::DELETE, uri, Some(token), None).await
    }

    /// `POST /device/v1/register` with a provisioning key.
    pub async fn register(&self, provisioning_key: &str, body: Value) -> Reply {
        self.post("/device/v1/register", provisioning_key, body)
            .await
    }

    /// The ETag of a device's current target.
    pub async fn etag(&self, device_key: &str) -> String {
        self.get("/device/v1/state", device_key).await.headers[header::ETAG]
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// Creates a fleet; its provisioning key.
    pub async fn fleet(&self, name: &str) -> String {
        let r = self
            .post("/api/v1/fleets", &self.admin, json!({ "name": name }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["provisioning_key"].as_str().unwrap().to_owned()
    }

    /// Registers a device with a provisioning key; its device key.
    pub async fn device(&self, provisioning_key: &str, uuid: &str) -> String {
        let r = self
            .register(
                provisioning_key,
                json!({ "uuid": uuid, "arch": "aarch64", "agent_version": "0.1.0" }),
            )
            .await;
        assert!(r.status.is_success(), "{} {}", r.status, r.body);
        r.body["device_key"].as_str().unwrap().to_owned()
    }

    /// Creates a release of one service `web` with the given env.
    pub async fn release(&self, fleet: &str, version: &str, env: Value) -> Value {
        let r = self
            .post(
                &format!("/api/v1/fleets/{fleet}/releases"),
                &self.admin,
                json!({
                    "version": version,
                    "services": { "web": { "image": image(version), "env": env } }
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body
    }
}

/// A pinned image reference, different for each `seed`.
pub fn image(seed: &str) -> String {
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(seed.as_bytes()));
    format!("registry.example.com/kelp/web@sha256:{digest}")
}

/// `GET /device/v1/state` with `If-None-Match: etag`, held up to `wait`
/// seconds when given.
pub async fn poll_state(app: &Router, key: &str, etag: &str, wait: Option<u64>) -> Reply {
    let uri = match wait {
        Some(wait) => format!("/device/v1/state?wait={wait}"),
        None => "/device/v1/state".to_owned(),
    };
    send(
        app,
        Method::GET,
        &uri,
        Some(key),
        None,
        &[(header::IF_NONE_MATCH, etag)],
    )
    .await
}

/// [`poll_state`] in a task of its own, for a poll held while the test
/// goes on.
pub fn spawn_poll(
    app: &Router,
    key: &str,
    etag: &str,
    wait: u64,
) -> tokio::task::JoinHandle<Reply> {
    let (app, key, etag) = (app.clone(), key.to_owned(), etag.to_owned());
    tokio::spawn(async move { poll_state(&app, &key, &etag, Some(wait)).await })
}

/// The string `field` of every object in a JSON array.
pub fn strings<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v[field].as_str().unwrap())
        .collect()
}

pub async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(header::HeaderName, &str)],
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    let body = match body {
        Some(v) => Body::from(serde_json::to_vec(&v).unwrap()),
        None => Body::empty(),
    };
    reply(app, req.body(body).unwrap()).await
}

/// Sends raw bytes as the body, for requests that are not valid JSON.
pub async fn send_raw(app: &Router, uri: &str, token: &str, body: &'static str) -> Reply {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(body))
        .unwrap();
    let r = reply(app, req).await;
    assert!(!r.body.is_null(), "an empty answer to a raw request");
    r
}

/// Sends `req` to `app`; its answer, the body read as JSON (null if empty).
async fn reply(app: &Router, req: Request<Body>) -> Reply {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    Reply {
        status,
        headers,
        body,
    }
}
