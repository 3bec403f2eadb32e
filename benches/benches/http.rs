//! Inbound HTTP: `http-hello` served by a real `kelpd` process, a fresh
//! instance for every request, beside a native axum hello answering the
//! same request with the same page, in the same run, on the same cores.
//!
//! The load generator is this program: hyper clients on
//! [`CONNECTIONS`] keep-alive connections, each sending `GET /hello/bench`
//! as soon as the last answer is in, for [`WARMUP`] and then the measured
//! seconds; every answer must be a 200 with the expected page. Requests per
//! second and p50 / p99 latency for each server, and kelpd's share of the
//! native figure (target: at least half).
//!
//! A second row takes kelpd's time apart: http-hello's instance alone,
//! in this process, with kelpd's engine settings and no HTTP or TCP around
//! it (a store, the request handed in, instantiation, the handler, the store
//! freed), timed over [`CYCLES`] requests one after another on one thread,
//! beside the CPU each server's whole request took in the load runs.
//!
//! `cargo build --release -p kelp-runtime && cargo bench -p kelp-benches
//! --bench http` prints one table. `KELP_BENCH_SECONDS=S` (default 10) and
//! `KELP_BENCH_CONNECTIONS=C` (default 16) change the run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

mod common;
use common::{Load, Row, Window};

mod cycle;

/// Set in the environment of this program run again as the native server:
/// a process of its own, like kelpd, on the same cores.
const NATIVE_SERVER: &str = "KELP_BENCH_NATIVE_SERVER";

const CONNECTIONS: usize = 16;
const SECONDS: u64 = 10;
/// Requests before the clock starts: connections open, code paged in.
const WARMUP: Duration = Duration::from_secs(2);
const PATH: &str = "/hello/bench";
/// kelpd's throughput as a share of the native server's.
const TARGET_RATIO: f64 = 0.5;
/// Requests the in-process instance cycle is timed over, after as many
/// untimed ones.
const CYCLES: u32 = 20_000;

fn main() {
    if std::env::var_os(NATIVE_SERVER).is_some() {
        return native_server();
    }
    let seconds = env_or("KELP_BENCH_SECONDS", SECONDS as usize) as u64;
    let connections = env_or("KELP_BENCH_CONNECTIONS", CONNECTIONS);
    let measure = Duration::from_secs(seconds);
    let executor = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (native, kelpd) = executor.block_on(async {
        let native_server = Server::native();
        let kelpd_server = Server::kelpd(dir.path());
        let expected = page(PATH);
        let native = load(&native_server, &expected, connections, measure).await;
        eprintln!("native: {:.0} requests/s", native.rate());
        let kelpd = load(&kelpd_server, &expected, connections, measure).await;
        eprintln!("kelpd: {:.0} requests/s", kelpd.rate());
        (native, kelpd)
    });
    let cycle = cycle::measure(CYCLES);
    let ratio = kelpd.rate() / native.rate();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu_per_request = |l: &Load| us(l.server_cores / l.rate());
    common::print_rows(&[
        Row {
            what: format!(
                "`GET {PATH}`, {connections} keep-alive connections, {seconds} s, client and \
                 server sharing {cores} cores: requests/s, p50 / p99"
            ),
            kelp: format!(
                "http-hello in kelpd, fresh instance per request: {}",
                summary(&kelpd)
            ),
            baseline: format!("native axum hello: {}", summary(&native)),
            target: format!("kelpd ≥ {TARGET_RATIO} × native; got {ratio:.2}"),
            met: Some(ratio >= TARGET_RATIO),
        },
        Row {
            what: format!(
                "where kelpd's time goes: http-hello's instance alone, in process, one thread, \
                 {CYCLES} requests: instantiate + handler + free, per request"
            ),
            kelp: format!(
                "{} ({} + {} + {}; store and request {}); kelpd's whole request: {} of CPU",
                us(cycle.total().as_secs_f64()),
                us(cycle.instantiate.as_secs_f64()),
                us(cycle.handler.as_secs_f64()),
                us(cycle.free.as_secs_f64()),
                us(cycle.setup.as_secs_f64()),
                cpu_per_request(&kelpd),
            ),
            baseline: format!(
                "native axum's whole request: {} of CPU",
                cpu_per_request(&native)
            ),
            target: "—".into(),
            met: None,
        },
    ]);
}

/// A load run in a cell: rate, p50 / p99, and the cores it kept busy.
fn summary(load: &Load) -> String {
    format!(
        "{:.0}/s, {} / {}; {}",
        load.rate(),
        ms(load.p(0.5)),
        ms(load.p(0.99)),
        load.cpu()
    )
}

/// Seconds as microseconds, for a table cell.
fn us(seconds: f64) -> String {
    format!("{:.1} µs", seconds * 1e6)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// http-hello's page for `path`, with no `GREETING` set, byte for byte.
fn page(path: &str) -> String {
    format!(
        "<!doctype html>\n<title>http-hello</title>\n<h1>Hello from Kelp!</h1>\n<p>path: {path}</p>\n<p>requests served by this instance: 1</p>\n"
    )
}

/// The baseline: axum answering with http-hello's page, built the same way
/// from the request's path.
fn native_server() {
    use axum::response::IntoResponse;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
            (
                [(hyper::header::CONTENT_TYPE, "text/html; charset=utf-8")],
                page(uri.path()),
            )
                .into_response()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on http://{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

/// A server process, stopped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn native() -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(NATIVE_SERVER, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::BufRead as _;
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            if let Some(addr) = line.unwrap().strip_prefix("listening on http://") {
                let addr = addr.parse().unwrap();
                return Server { child, addr };
            }
        }
        panic!(
            "the native server stopped before it listened: {:?}",
            child.wait()
        );
    }

    /// The release kelpd, serving http-hello (its manifest embedded, as
    /// `kelp push` leaves it) at `/hello` on a free port.
    fn kelpd(dir: &Path) -> Server {
        let manifest = kelp_core::read_manifest_file(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample-modules/http-hello/kelp.toml"),
        )
        .unwrap();
        let wasm = std::fs::read(kelp_tests::artifacts::HTTP_HELLO).unwrap();
        let module = dir.join("http-hello.wasm");
        std::fs::write(&module, kelp_core::embed(&wasm, &manifest).unwrap()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        std::fs::write(
            dir.join("map.toml"),
            format!("[network]\nhttp-listen = \"{addr}\"\n[http.http-hello]\npath = \"/hello\"\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("local.toml"),
            "[services.http-hello]\nmodule = \"http-hello.wasm\"\nmemory = \"16MiB\"\n",
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("kelpd.log")).unwrap();
        let child = Command::new(kelp_tests::binary("kelpd"))
            .arg("--local")
            .arg(dir.join("local.toml"))
            .arg("--data-dir")
            .arg(dir.join("var"))
            .arg("--hardware-map")
            .arg(dir.join("map.toml"))
            .env("KELP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server { child, addr };
        // Up once a request is answered (the first start compiles).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(s) = std::net::TcpStream::connect(addr) {
                drop(s);
                break;
            }
            assert!(Instant::now() < deadline, "kelpd never listened on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        common::stop(&mut self.child);
    }
}

async fn load(server: &Server, expected: &str, connections: usize, measure: Duration) -> Load {
    let addr = server.addr;
    let window = Window::new(WARMUP, measure);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let expected = Bytes::from(expected.to_owned());
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                tokio::time::sleep_until(window.start.into()).await;
                let mut latencies = Vec::new();
                loop {
                    let sent = Instant::now();
                    if sent >= window.until {
                        break;
                    }
                    let req = Request::get(PATH)
                        .header(hyper::header::HOST, addr.to_string())
                        .body(Empty::new())
                        .unwrap();
                    let response = send.send_request(req).await.unwrap();
                    let status = response.status();
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    let done = Instant::now();
                    assert_eq!(status, StatusCode::OK, "{body:?}");
                    assert_eq!(body, expected);
                    if window.measures(sent, done) {
                        latencies.push(done - sent);
                    }
                }
                latencies
            })
        })
        .collect();
    Load::run(server.child.id(), window, tasks).await
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_millis(1) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }
}
