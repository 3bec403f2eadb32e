//! The fleet's figures: simulated devices (no Wasm, many in this one
//! process) against one `kelp-cloud serve` process, each beside a baseline
//! measured in the same run:
//!
//! - registration of 10,000 devices with the fleet's provisioning key, done
//!   concurrently, beside the poll baseline's per-request cost;
//! - target-state polls: each device asks `GET /device/v1/state` with
//!   `If-None-Match` (its last ETag) over a bounded number of keep-alive
//!   connections, each cycling through its share of the devices; polls
//!   answered per second and p50 / p99 latency, beside the same client
//!   against a trivial axum handler that answers 304 (what the HTTP stack
//!   and this client alone cost on this machine);
//! - convergence: 1,000 devices long-poll (`?wait=60`), a release is created
//!   through the API, and the clock runs until every device has received
//!   the new target and reported it back (`PATCH /device/v1/state`); the
//!   user API must then show them all on the new release.
//!
//! Once on SQLite (the default), and once on PostgreSQL when
//! `KELP_BENCH_POSTGRES` (or `KELP_TEST_POSTGRES`) holds a URL, in a fresh
//! schema dropped afterwards.
//!
//! `cargo build --release -p kelp-cloud && cargo bench -p kelp-benches
//! --bench fleet` prints one table. Shorter runs while working on it:
//! `KELP_BENCH_DEVICES=N` (default 10,000), `KELP_BENCH_SECONDS=S` (measured
//! seconds of polling, default 10), `KELP_BENCH_CONNECTIONS=C` (default 128).
//! `KELP_BENCH_CLOUD=PATH` measures another `kelp-cloud` binary (an older
//! build, say) in place of the one built beside the bench.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

mod common;
use common::{Load, Row, Window};

/// Set in the environment of this program run again as the baseline
/// server: a process of its own, like `kelp-cloud`, on the same cores.
const BASELINE_SERVER: &str = "KELP_BENCH_BASELINE_SERVER";

const DEVICES: usize = 10_000;
const CONNECTIONS: usize = 128;
const POLL_SECONDS: u64 = 10;
/// Polling before the clock starts: connections open, caches and the
/// database's pages warm.
const WARMUP: Duration = Duration::from_secs(2);
/// Concurrent registrations (and first polls, which fetch each ETag).
const SETUP_CONNECTIONS: usize = 64;
const CONVERGE_DEVICES: usize = 1_000;
/// How long the held polls get to reach the server before the release is
/// made; one that arrives later is answered at once, which only helps.
const SETTLE: Duration = Duration::from_secs(2);

const POLLS_TARGET: f64 = 20_000.0;
const CONVERGE_TARGET: Duration = Duration::from_secs(10);

fn main() {
    if std::env::var_os(BASELINE_SERVER).is_some() {
        return baseline_server();
    }
    let devices = env_or("KELP_BENCH_DEVICES", DEVICES);
    let seconds = env_or("KELP_BENCH_SECONDS", POLL_SECONDS as usize) as u64;
    let connections = env_or("KELP_BENCH_CONNECTIONS", CONNECTIONS);
    let measure = Duration::from_secs(seconds);
    let postgres = ["KELP_BENCH_POSTGRES", "KELP_TEST_POSTGRES"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()));

    let executor = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    executor.block_on(async {
        let baseline = {
            let server = Server::baseline();
            let fake: Vec<Device> = (0..devices).map(Device::fake).collect();
            poll_load(&server, Arc::new(fake), connections, measure).await
        };
        eprintln!(
            "baseline: {:.0} polls/s over {connections} connections",
            baseline.rate()
        );
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Server::cloud(&dir.path().join("sqlite"), None);
        fleet_rows(
            &mut rows,
            "SQLite",
            &sqlite,
            &baseline,
            devices,
            connections,
            measure,
        )
        .await;
        drop(sqlite);
        match &postgres {
            Some(url) => {
                // A schema of this run's own: the bench starts empty and
                // leaves nothing behind.
                let schema = kelp_cloud::ScratchSchema::create(url, "kelp_bench")
                    .await
                    .unwrap();
                let server = Server::cloud(&dir.path().join("postgres"), Some(&schema.url()));
                fleet_rows(
                    &mut rows,
                    "PostgreSQL",
                    &server,
                    &baseline,
                    devices,
                    connections,
                    measure,
                )
                .await;
                drop(server);
                schema.remove().await.unwrap();
            }
            None => rows.push(Row {
                what: "PostgreSQL".into(),
                kelp: "skipped: neither KELP_BENCH_POSTGRES nor KELP_TEST_POSTGRES holds a URL \
                       (`.ci/postgres DIR` starts a server and prints one)"
                    .into(),
                baseline: "—".into(),
                target: "—".into(),
                met: None,
            }),
        }
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        rows.push(Row {
            what: format!(
                "client ceiling: this client against the 304 handler, {connections} \
                 connections, client and server sharing {cores} cores"
            ),
            kelp: "—".into(),
            baseline: format!(
                "{:.0}/s, {} / {}; {}",
                baseline.rate(),
                ms(baseline.p(0.5)),
                ms(baseline.p(0.99)),
                baseline.cpu()
            ),
            target: format!("≥ {POLLS_TARGET:.0}/s reachable at all"),
            met: Some(baseline.rate() >= POLLS_TARGET),
        });
    });
    common::print_rows(&rows);
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Every figure for one database: registration, polls, convergence.
async fn fleet_rows(
    rows: &mut Vec<Row>,
    db: &str,
    server: &Server,
    baseline: &Load,
    n: usize,
    connections: usize,
    measure: Duration,
) {
    let api = Api {
        addr: server.addr,
        token: server.token.clone(),
    };
    let pk = api.fleet("poll").await;
    api.release("poll", "1.0").await;
    let start = Instant::now();
    let mut devices = register(server.addr, &pk, "poll", n).await;
    let took = start.elapsed();
    rows.push(Row {
        what: format!("{db}: register {n} devices ({SETUP_CONNECTIONS} at a time)"),
        kelp: format!(
            "{:.2} s ({:.0} devices/s)",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        ),
        baseline: format!(
            "{n} requests at the 304 handler's rate: {:.2} s",
            n as f64 / baseline.rate()
        ),
        target: "not the bench's bulk".into(),
        met: None,
    });
    first_polls(server.addr, &mut devices).await;

    let load = poll_load(server, Arc::new(devices), connections, measure).await;
    eprintln!("{db}: {:.0} polls/s", load.rate());
    rows.push(Row {
        what: format!(
            "{db}: polls with ETag, {n} devices over {connections} connections, {} s: \
             polls/s, p50 / p99",
            measure.as_secs()
        ),
        kelp: format!(
            "{:.0}/s, {} / {}; {}",
            load.rate(),
            ms(load.p(0.5)),
            ms(load.p(0.99)),
            load.cpu()
        ),
        baseline: format!(
            "304 handler: {:.0}/s, {} / {}; {}; kelp {:.0}% of it",
            baseline.rate(),
            ms(baseline.p(0.5)),
            ms(baseline.p(0.99)),
            baseline.cpu(),
            100.0 * load.rate() / baseline.rate()
        ),
        target: format!("≥ {POLLS_TARGET:.0}/s"),
        met: Some(load.rate() >= POLLS_TARGET),
    });

    rows.push(convergence(&api, db).await);
}

// --- the servers ---

/// A server process on a free loopback port, stopped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The admin token (`kelp-cloud` only).
    token: String,
}

impl Server {
    /// `kelp-cloud serve` (the release binary) with its data in `data`, on
    /// SQLite there unless `database` names another.
    fn cloud(data: &Path, database: Option<&str>) -> Server {
        std::fs::create_dir_all(data).unwrap();
        let log = std::fs::File::create(data.with_extension("log")).unwrap();
        let binary = std::env::var_os("KELP_BENCH_CLOUD").map_or_else(
            || kelp_tests::binary("kelp-cloud"),
            std::path::PathBuf::from,
        );
        let mut cmd = Command::new(binary);
        cmd.args(["serve", "--data"])
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .env("KELP_LOG", "warn")
            .env_remove("KELP_CLOUD_DATABASE")
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(url) = database {
            cmd.args(["--database", url]);
        }
        let (child, addr, lines) = spawn(cmd);
        let token = lines
            .iter()
            .find_map(|l| l.strip_prefix("admin token: "))
            .and_then(|rest| rest.split_once(", "))
            .map(|(t, _)| t.to_owned())
            .unwrap();
        Server { child, addr, token }
    }

    /// This program again, as [`baseline_server`].
    fn baseline() -> Server {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(BASELINE_SERVER, "1").stdout(Stdio::piped());
        let (child, addr, _) = spawn(cmd);
        Server {
            child,
            addr,
            token: String::new(),
        }
    }
}

/// Starts `cmd` and reads its stdout up to `listening on http://ADDR`.
fn spawn(mut cmd: Command) -> (Child, SocketAddr, Vec<String>) {
    use std::io::BufRead as _;
    let mut child = cmd.spawn().unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(addr) = line.strip_prefix("listening on http://") {
            let addr = addr.parse().unwrap();
            return (child, addr, lines);
        }
        lines.push(line);
    }
    panic!("the server stopped before it listened: {:?}", child.wait());
}

impl Drop for Server {
    fn drop(&mut self) {
        common::stop(&mut self.child);
    }
}

/// The baseline: axum on its own runtime answering every request with a
/// 304 and an ETag, having looked at nothing.
fn baseline_server() {
    use axum::routing::get;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = axum::Router::new().route(
            "/device/v1/state",
            get(|| async {
                (
                    StatusCode::NOT_MODIFIED,
                    [(header::ETAG, HeaderValue::from_static("\"baseline\""))],
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on http://{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

// --- the client ---

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn {
            send,
            host: HeaderValue::from_str(&addr.to_string()).unwrap(),
        }
    }

    /// Sends `req` (its Host added) and reads the whole answer.
    async fn send(
        &mut self,
        mut req: Request<Full<Bytes>>,
    ) -> (StatusCode, hyper::HeaderMap, Bytes) {
        req.headers_mut().insert(header::HOST, self.host.clone());
        self.send.ready().await.unwrap();
        let response = self.send.send_request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    }

    /// A JSON request; the status and the body as JSON (null when empty).
    async fn json(
        &mut self,
        method: Method,
        path: &str,
        auth: &HeaderValue,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map_or_else(Bytes::new, |b| serde_json::to_vec(&b).unwrap().into());
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .unwrap();
        let (status, _, body) = self.send(req).await;
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        (status, value)
    }
}

fn bearer(secret: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {secret}")).unwrap()
}

/// The user API, as `kelp` would call it.
struct Api {
    addr: SocketAddr,
    token: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut conn = Conn::open(self.addr).await;
        conn.json(method, path, &bearer(&self.token), body).await
    }

    /// Creates a fleet; its provisioning key.
    async fn fleet(&self, name: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/fleets",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["provisioning_key"].as_str().unwrap().to_owned()
    }

    /// Creates a release of one service pinned by digest, as `kelp push
    /// --fleet` does (devices here do not pull, so the image need not
    /// exist); its id.
    async fn release(&self, fleet: &str, version: &str) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(version.as_bytes());
        let image = format!(
            "{}/kelp/web@sha256:{}",
            self.addr,
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let body = json!({
            "version": version,
            "services": { "web": { "image": image, "env": { "GREETING": "hi" } } }
        });
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/api/v1/fleets/{fleet}/releases"),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }
}

/// A simulated device: its key and the ETag of the last target it got.
struct Device {
    uuid: String,
    key: HeaderValue,
    etag: HeaderValue,
}

impl Device {
    /// A device for the baseline, whose server looks at nothing.
    fn fake(i: usize) -> Device {
        Device {
            uuid: format!("fake-{i}"),
            key: bearer(&format!("kelp_dk_{i:064x}")),
            etag: HeaderValue::from_str(&format!("\"{i:064x}\"")).unwrap(),
        }
    }

    fn poll(&self, wait: Option<u64>) -> Request<Full<Bytes>> {
        let uri = match wait {
            Some(s) => format!("/device/v1/state?wait={s}"),
            None => "/device/v1/state".to_owned(),
        };
        Request::get(uri)
            .header(header::AUTHORIZATION, &self.key)
            .header(header::IF_NONE_MATCH, &self.etag)
            .body(Full::default())
            .unwrap()
    }
}

/// Runs `work(i, conn)` for every `i` in `0..n`, over `connections`
/// connections each taking every `connections`-th index (`work` hands its
/// connection back); the results in index order.
async fn spread<T, F, Fut>(addr: SocketAddr, n: usize, connections: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Conn) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (Conn, T)> + Send,
{
    let tasks: Vec<_> = (0..connections.min(n))
        .map(|c| {
            let work = work.clone();
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await;
                let mut out = Vec::new();
                for i in (c..n).step_by(connections) {
                    let (back, t) = work(i, conn).await;
                    conn = back;
                    out.push((i, t));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// Registers `n` devices `PREFIX-i` with the provisioning key `pk`.
async fn register(addr: SocketAddr, pk: &str, prefix: &str, n: usize) -> Vec<Device> {
    let pk = bearer(pk);
    let prefix = prefix.to_owned();
    spread(addr, n, SETUP_CONNECTIONS, move |i, mut conn| {
        let (pk, uuid) = (pk.clone(), format!("{prefix}-{i}"));
        async move {
            let body = json!({ "uuid": uuid, "arch": "aarch64", "agent_version": "0.1.0" });
            let (status, body) = conn
                .json(Method::POST, "/device/v1/register", &pk, Some(body))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let device = Device {
                uuid,
                key: bearer(body["device_key"].as_str().unwrap()),
                etag: HeaderValue::from_static("\"none\""),
            };
            (conn, device)
        }
    })
    .await
}

/// Each device's first poll, which brings its target and ETag.
async fn first_polls(addr: SocketAddr, devices: &mut [Device]) {
    let keys: Arc<Vec<HeaderValue>> = Arc::new(devices.iter().map(|d| d.key.clone()).collect());
    let etags = spread(
        addr,
        devices.len(),
        SETUP_CONNECTIONS,
        move |i, mut conn| {
            let key = keys[i].clone();
            async move {
                let req = Request::get("/device/v1/state")
                    .header(header::AUTHORIZATION, key)
                    .body(Full::default())
                    .unwrap();
                let (status, headers, _) = conn.send(req).await;
                assert_eq!(status, StatusCode::OK);
                (conn, headers[header::ETAG].clone())
            }
        },
    )
    .await;
    for (d, etag) in devices.iter_mut().zip(etags) {
        d.etag = etag;
    }
}

/// Every device polls with its ETag, over `connections` keep-alive
/// connections each cycling through its share of the devices, for
/// [`WARMUP`] and then `measure`; every answer must be a 304.
async fn poll_load(
    server: &Server,
    devices: Arc<Vec<Device>>,
    connections: usize,
    measure: Duration,
) -> Load {
    let addr = server.addr;
    let window = Window::new(WARMUP, measure);
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let devices = devices.clone();
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await;
                tokio::time::sleep_until(window.start.into()).await;
                let mut latencies = Vec::new();
                let mut i = c % devices.len();
                loop {
                    let req = devices[i].poll(None);
                    let sent = Instant::now();
                    if sent >= window.until {
                        break;
                    }
                    let (status, _, _) = conn.send(req).await;
                    let done = Instant::now();
                    assert_eq!(
                        status,
                        StatusCode::NOT_MODIFIED,
                        "device {}",
                        devices[i].uuid
                    );
                    if window.measures(sent, done) {
                        latencies.push(done - sent);
                    }
                    i = (i + connections) % devices.len();
                }
                latencies
            })
        })
        .collect();
    Load::run(server.child.id(), window, tasks).await
}

/// Convergence: [`CONVERGE_DEVICES`] devices long-poll, a release is made,
/// and each device reports it back as soon as it hears of it.
async fn convergence(api: &Api, db: &str) -> Row {
    let n = CONVERGE_DEVICES;
    let pk = api.fleet("converge").await;
    api.release("converge", "1.0").await;
    let mut devices = register(api.addr, &pk, "converge", n).await;
    first_polls(api.addr, &mut devices).await;

    let waiting = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Instant>);
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|d| {
            let (addr, waiting, mut go) = (api.addr, waiting.clone(), go_rx.clone());
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await;
                let poll = conn.send(d.poll(Some(60)));
                waiting.fetch_add(1, Ordering::Relaxed);
                let (status, _, body) = poll.await;
                let heard = Instant::now();
                assert_eq!(status, StatusCode::OK, "device {} heard nothing", d.uuid);
                let target: Value = serde_json::from_slice(&body).unwrap();
                let id = target["release"]["id"].as_str().unwrap().to_owned();
                let (status, body) = conn
                    .json(
                        Method::PATCH,
                        "/device/v1/state",
                        &d.key,
                        Some(json!({ "release": id })),
                    )
                    .await;
                assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
                let reported = Instant::now();
                // The clock started when the release was asked for.
                let t0 = go.wait_for(Option::is_some).await.unwrap().unwrap();
                (heard - t0, reported - t0)
            })
        })
        .collect();
    while waiting.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let t0 = Instant::now();
    go_tx.send_replace(Some(t0));
    let id = api.release("converge", "2.0").await;
    let created = t0.elapsed();
    let mut heard = Vec::with_capacity(n);
    let mut reported = Vec::with_capacity(n);
    for t in tasks {
        let (h, r) = t.await.unwrap();
        heard.push(h);
        reported.push(r);
    }
    heard.sort();
    reported.sort();

    // The user API must show every device on the new release.
    let mut on_new = 0;
    let mut path = "/api/v1/devices?fleet=converge&limit=500".to_owned();
    loop {
        let (status, page) = api.call(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page = page.as_array().unwrap();
        let Some(last) = page.last() else { break };
        path = format!(
            "/api/v1/devices?fleet=converge&limit=500&after={}",
            last["uuid"].as_str().unwrap()
        );
        on_new += page
            .iter()
            .filter(|d| d["current_release"] == "2.0" && d["target_release"] == "2.0")
            .count();
    }
    assert_eq!(on_new, n, "the cloud shows {on_new} of {n} on release {id}");

    let last = reported[n - 1];
    Row {
        what: format!(
            "{db}: convergence, {n} devices on `?wait=60`: release made → all received and \
             reported it (received first / last; reported first / last)"
        ),
        kelp: format!(
            "{} ({} / {}; {} / {}); API shows {on_new}/{n} on it",
            ms(last),
            ms(heard[0]),
            ms(heard[n - 1]),
            ms(reported[0]),
            ms(last)
        ),
        baseline: format!("the release's POST alone: {}", ms(created)),
        target: format!("≤ {} s", CONVERGE_TARGET.as_secs()),
        met: Some(last <= CONVERGE_TARGET),
    }
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }
}
