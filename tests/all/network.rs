//! Outbound network access by grant: services reach exactly the hosts and
//! ports they were granted, watched from outside by real listeners.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{TcpListener, ToSocketAddrs, UdpSocket};

use kelp_core::{ExitReason, Grants, NetworkGrant, RestartPolicy};
use kelp_hostcalls::{Hardware, HardwareMap};
use kelp_runtime::{
    EngineConfig, MAX_HTTP_CONNECTIONS, Runtime, RuntimeConfig, ServiceSpec, Supervisor,
};
use kelp_tests::artifacts::{FETCHER, REPORTER, SNEAKY};

use crate::support::{Watch, manifest_granting, quick_backoff, spec, texts, within};

/// A supervisor on a device whose map is `map` (none: no narrowing).
fn device(map: &str) -> Supervisor {
    let hardware = Hardware::simulated(HardwareMap::parse(map).unwrap());
    let runtime = Runtime::new(RuntimeConfig {
        engine: EngineConfig {
            pool_slots: 8,
            ..EngineConfig::default()
        },
        cache_dir: None,
        trusted_keys: Vec::new(),
        hardware: Some(hardware),
    })
    .unwrap();
    Supervisor::with_backoff(runtime, quick_backoff())
}

fn network(connect: &[String], udp: &[String]) -> Grants {
    Grants {
        network: NetworkGrant {
            connect: connect.iter().map(|d| d.parse().unwrap()).collect(),
            udp: udp.iter().map(|d| d.parse().unwrap()).collect(),
            serve_http: false,
        },
        ..Grants::default()
    }
}

/// Runs `module` once on `sup` with `grants` and `env`, to a clean exit,
/// and returns its output.
async fn run_once(
    sup: &Supervisor,
    name: &str,
    module: &str,
    grants: Grants,
    env: &[(&str, String)],
) -> Vec<String> {
    let (exit, output) = run_to_end(sup, name, module, grants, env).await;
    assert_eq!(exit, Some(ExitReason::Exited { code: 0 }), "{output:#?}");
    output
}

/// Runs `module` once to its end: how it ended, and its output.
async fn run_to_end(
    sup: &Supervisor,
    name: &str,
    module: &str,
    grants: Grants,
    env: &[(&str, String)],
) -> (Option<ExitReason>, Vec<String>) {
    let svc = sup
        .start(ServiceSpec {
            grants: Some(grants),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            restart: RestartPolicy::Never,
            ..spec(name, module)
        })
        .unwrap();
    let status = within("the service to finish", svc.wait_final()).await;
    (status.last_exit, texts(svc.logs().drain()))
}

/// A UDP socket on loopback that counts the datagrams that reached it.
struct UdpWatch(UdpSocket);

impl UdpWatch {
    fn new() -> Self {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        UdpWatch(s)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    fn datagrams(&self) -> usize {
        let mut buf = [0u8; 1500];
        let mut n = 0;
        loop {
            match self.0.recv_from(&mut buf) {
                Ok(_) => n += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}

/// A name other than `localhost` that this machine resolves on its own
/// (from /etc/hosts: its host name on most machines, `ip6-localhost` on a
/// fresh Debian), so that a refusal of it is the policy's and not the
/// resolver's.
fn another_local_name() -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    [hostname.as_str(), "ip6-localhost", "ip6-loopback"]
        .into_iter()
        .find(|n| {
            !n.is_empty()
                && *n != "localhost"
                && (*n, 0)
                    .to_socket_addrs()
                    .is_ok_and(|mut a| a.next().is_some())
        })
        .unwrap_or("ip6-localhost")
        .to_owned()
}

fn assert_has(output: &[String], expected: &str) {
    assert!(
        output.iter().any(|l| l == expected),
        "missing `{expected}` in\n{output:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_holds_a_bounded_number_of_sockets() {
    let sup = device("");
    let granted = Watch::on("127.0.0.1:0");
    let target = format!("127.0.0.1:{}", granted.port());
    let output = run_once(
        &sup,
        "sneaky",
        SNEAKY,
        network(std::slice::from_ref(&target), &[]),
        &[
            ("GRANTED", target.clone()),
            ("HOARD", (kelp_runtime::MAX_SOCKETS * 2).to_string()),
        ],
    )
    .await;
    assert_has(&output, &format!("granted {target}: connected"));
    // The limit counts sockets held at once: the first, dropped, is not.
    let held = output
        .iter()
        .find(|line| line.contains("hoard: "))
        .unwrap_or_else(|| panic!("no hoard line in {output:#?}"));
    assert!(
        held.contains(&format!(
            "hoard: {} held, then failed",
            kelp_runtime::MAX_SOCKETS
        )),
        "{held}"
    );
    assert_has(&output, "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn sneaky_reaches_its_grant_and_nothing_else() {
    let sup = device("");
    let granted = Watch::on("127.0.0.1:0");
    let other_port = Watch::on("127.0.0.1:0");
    // Another loopback address on the granted port: reached only by address.
    let other_address = Watch::on(&format!("127.0.0.2:{}", granted.port()));
    let udp = UdpWatch::new();
    let name = another_local_name();
    let (p0, p1) = (granted.port(), other_port.port());

    let grants = network(
        &[format!("localhost:{p0}")],
        // UDP to somewhere else: the socket may exist, the send may not.
        &["127.0.0.1:9".to_owned()],
    );
    let output = run_once(
        &sup,
        "sneaky",
        SNEAKY,
        grants,
        &[
            ("GRANTED", format!("localhost:{p0}")),
            ("UNGRANTED_HOST", format!("{name}:{p1}")),
            ("UNGRANTED_PORT", format!("localhost:{p1}")),
            ("RAW_ADDRESS", format!("127.0.0.2:{p0}")),
            ("UDP_TARGET", format!("127.0.0.1:{}", udp.port())),
            ("LISTEN", "127.0.0.1:0".to_owned()),
            ("LOOKUP", name.clone()),
        ],
    )
    .await;

    assert_has(&output, &format!("granted localhost:{p0}: connected"));
    for attempt in [
        "ungranted host",
        "ungranted port",
        "raw address",
        "udp send",
        "listen",
        "listen on any port",
        "lookup",
    ] {
        assert_has(&output, &format!("{attempt}: refused (PermissionDenied)"));
    }
    assert_has(&output, "done");
    // The operator sees each refusal once, by destination.
    for note in [
        format!("kelp: network `{name}` refused: not granted"),
        // An address a granted name resolved to, on another port.
        format!("kelp: network `127.0.0.1:{p1}` (localhost) refused: not granted"),
        format!("kelp: network `127.0.0.2:{p0}` refused: not granted"),
        format!(
            "kelp: network udp `127.0.0.1:{}` (localhost) refused: not granted",
            udp.port()
        ),
    ] {
        assert_eq!(
            output.iter().filter(|l| **l == note).count(),
            1,
            "`{note}` once in\n{output:#?}"
        );
    }
    assert!(
        output
            .iter()
            .any(|l| l.starts_with("kelp: network listen on `0.0.0.0:")),
        "{output:#?}"
    );

    // Watched from outside: only the granted listener was reached.
    assert_eq!(granted.connections(), 1);
    assert_eq!(other_port.connections(), 0);
    assert_eq!(other_address.connections(), 0);
    assert_eq!(udp.datagrams(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_without_network_grants_has_no_network() {
    let sup = device("");
    let listener = Watch::on("127.0.0.1:0");
    let udp = UdpWatch::new();
    let port = listener.port();
    let output = run_once(
        &sup,
        "sneaky",
        SNEAKY,
        Grants::default(),
        &[
            ("GRANTED", format!("localhost:{port}")),
            ("UNGRANTED_HOST", format!("localhost:{port}")),
            ("UNGRANTED_PORT", format!("127.0.0.1:{port}")),
            ("RAW_ADDRESS", format!("127.0.0.1:{port}")),
            ("UDP_TARGET", format!("127.0.0.1:{}", udp.port())),
            ("LOOKUP", "localhost".to_owned()),
        ],
    )
    .await;
    assert_has(
        &output,
        &format!("granted localhost:{port}: refused (PermissionDenied)"),
    );
    assert!(!output.iter().any(|l| l.contains("ALLOWED")), "{output:#?}");
    assert_has(&output, "kelp: network `localhost` refused: not granted");
    assert_has(&output, "kelp: network udp refused: not granted");
    assert_eq!(listener.connections(), 0);
    assert_eq!(udp.datagrams(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_map_narrows_a_grant_away() {
    let sup = device("[network]\nallow = []\n");
    let listener = Watch::on("127.0.0.1:0");
    let port = listener.port();
    let output = run_once(
        &sup,
        "sneaky",
        SNEAKY,
        network(&[format!("localhost:{port}")], &[]),
        &[("GRANTED", format!("localhost:{port}"))],
    )
    .await;
    // Said at start, and again when the service tries.
    assert_has(
        &output,
        &format!("kelp: grant network.connect `localhost:{port}`: not allowed on this device"),
    );
    assert_has(
        &output,
        &format!("granted localhost:{port}: refused (PermissionDenied)"),
    );
    assert_has(
        &output,
        "kelp: network `localhost` refused: not allowed on this device",
    );
    assert_eq!(listener.connections(), 0);

    // A map that allows loopback lets the same grant through.
    let sup = device("[network]\nallow = [\"127.0.0.0/8\"]\n");
    let output = run_once(
        &sup,
        "sneaky",
        SNEAKY,
        network(&[format!("localhost:{port}")], &[]),
        &[("GRANTED", format!("localhost:{port}"))],
    )
    .await;
    assert_has(&output, &format!("granted localhost:{port}: connected"));
    assert_eq!(listener.connections(), 1);
}

/// An HTTP endpoint in the test, counting the requests it answered.
struct Endpoint {
    port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start() -> Self {
        use axum::routing::get;
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let app = axum::Router::new().route(
            "/reading",
            get(move |headers: axum::http::HeaderMap| async move {
                let host = headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(host);
                "21.5 °C from the test\n"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Endpoint {
            port,
            requests,
            _server: server,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// `kelp run ARGS…` from the repository's root, as the README shows it, to
/// its end, without blocking the test's executor.
async fn kelp_run(args: Vec<String>) -> std::process::Output {
    kelp_run_with(args, &[]).await
}

/// `kelp run ARGS…` with `env` set for `kelp` itself.
async fn kelp_run_with(args: Vec<String>, env: &[(&str, &str)]) -> std::process::Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(kelp_tests::binary("kelp"))
            .arg("run")
            .args(&args)
            .envs(env)
            .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    });
    within("kelp run to finish", run).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn fetcher_calls_its_granted_endpoint_and_is_denied_without_the_grant() {
    let endpoint = Endpoint::start().await;
    let port = endpoint.port;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://localhost:{port}/reading");
    let args = |manifest: String| {
        vec![
            FETCHER.to_owned(),
            "--manifest".into(),
            manifest,
            "--env".into(),
            format!("FETCH_URL={url}"),
        ]
    };

    let granted = manifest_granting(dir.path(), "fetcher", &[format!("localhost:{port}")]);
    let out = kelp_run(args(granted)).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        format!("fetched {url}: 200\n| 21.5 °C from the test\n")
    );
    // The request came to the test's server, for the name the service used.
    assert_eq!(endpoint.requests(), [format!("localhost:{port}")]);

    // The same run with the grant removed: denied, and nothing reaches the
    // server.
    let ungranted = manifest_granting(dir.path(), "fetcher", &[]);
    let out = kelp_run(args(ungranted)).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        format!("fetch {url} failed: denied by the host (HTTP-request-denied)\n")
    );
    assert!(
        stderr.contains(&format!(
            "kelp: network `localhost:{port}` refused: not granted"
        )),
        "{stderr}"
    );
    assert_eq!(endpoint.requests().len(), 1);

    // Granted the name on another port: still denied, by address.
    let other_port = manifest_granting(dir.path(), "fetcher", &["localhost:1".to_owned()]);
    let out = kelp_run(args(other_port)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!(
            "kelp: network `localhost:{port}` refused: not granted"
        )),
        "{stderr}"
    );
    assert_eq!(endpoint.requests().len(), 1);
}

/// A real `mosquitto` on a free loopback port, stopped when dropped.
struct Broker {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (apt install mosquitto)");
        let mut broker = Broker {
            child,
            port,
            _dir: dir,
        };
        within("mosquitto to listen", async {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    broker.child.try_wait().unwrap().is_none(),
                    "mosquitto exited"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        broker
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_sub` on `topic`, its output lines sent as they come.
struct Subscriber {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Subscriber {
    async fn start(port: u16, topic: &str) -> Self {
        use std::io::BufRead;
        // Line-buffered, so that its acknowledgement shows as it comes.
        let mut child = std::process::Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
            .args(["-q", "1", "-v", "-d"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto_sub (apt install mosquitto-clients)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sub = Subscriber { child, lines };
        // Subscribed once the broker acknowledged it.
        sub.until(|l| l.contains("SUBACK")).await;
        sub
    }

    async fn until(&mut self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        within("the subscriber's line", async {
            while !seen.iter().any(|l: &String| done(l)) {
                match self.lines.recv().await {
                    Some(line) => seen.push(line),
                    None => panic!("mosquitto_sub ended; saw {seen:?}"),
                }
            }
        })
        .await;
        seen
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reporter_publishes_the_sensor_reading_to_a_real_broker() {
    use kelp_hostcalls::sim::Simulator;
    let broker = Broker::start().await;
    let topic = "kelp/test/temperature";
    let mut subscriber = Subscriber::start(broker.port, topic).await;

    let map = include_str!("../../sample-modules/hardware-sim.toml");
    let hardware = Hardware::simulated(HardwareMap::parse(map).unwrap());
    let sim: std::sync::Arc<Simulator> = hardware.simulator().unwrap().clone();
    sim.set("sensors/0x48/temperature=23.5").unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        engine: EngineConfig {
            pool_slots: 8,
            ..EngineConfig::default()
        },
        cache_dir: None,
        trusted_keys: Vec::new(),
        hardware: Some(hardware),
    })
    .unwrap();
    let sup = Supervisor::with_backoff(runtime, quick_backoff());
    // The sample's own grants (the sensor), with the broker's real port.
    let mut grants = kelp_core::read_manifest_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sample-modules/reporter/kelp.toml"),
    )
    .unwrap()
    .grants;
    grants.network.connect = vec![format!("localhost:{}", broker.port).parse().unwrap()];
    let output = run_once(
        &sup,
        "reporter",
        REPORTER,
        grants,
        &[
            ("BROKER", format!("localhost:{}", broker.port)),
            ("TOPIC", topic.to_owned()),
            ("READINGS", "1".to_owned()),
        ],
    )
    .await;
    assert_eq!(
        output,
        [
            format!("connected to localhost:{}", broker.port),
            format!("published 23.5 to {topic}"),
        ]
    );
    let seen = subscriber.until(|l| l == format!("{topic} 23.5")).await;
    assert_eq!(
        seen.iter().filter(|l| l.starts_with(topic)).count(),
        1,
        "{seen:?}"
    );

    // Without the grant, it never reaches the broker.
    let grants = grants_without_network("reporter");
    sim.set("sensors/0x48/temperature=30").unwrap();
    let svc = sup
        .start(ServiceSpec {
            grants: Some(grants),
            env: [
                ("BROKER".to_owned(), format!("localhost:{}", broker.port)),
                ("TOPIC".to_owned(), topic.to_owned()),
                ("READINGS".to_owned(), "1".to_owned()),
            ]
            .into_iter()
            .collect(),
            restart: RestartPolicy::Never,
            ..spec("reporter-2", REPORTER)
        })
        .unwrap();
    let status = within("the second reporter to give up", svc.wait_final()).await;
    assert_eq!(status.last_exit, Some(ExitReason::Exited { code: 1 }));
    let output = texts(svc.logs().drain());
    assert!(
        output.contains(&"kelp: network `localhost` refused: not granted".to_owned()),
        "{output:#?}"
    );
    // The broker still has one subscriber and has passed on nothing more:
    // a publish from a fresh client arrives next, not the refused reading.
    let marker = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            topic,
        ])
        .args(["-q", "1", "-m", "marker"])
        .status()
        .unwrap();
    assert!(marker.success());
    let seen = subscriber.until(|l| l == format!("{topic} marker")).await;
    assert!(
        !seen.iter().any(|l| l == &format!("{topic} 30.0")),
        "{seen:?}"
    );
}

fn grants_without_network(sample: &str) -> Grants {
    let mut grants = kelp_core::read_manifest_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sample-modules")
            .join(sample)
            .join("kelp.toml"),
    )
    .unwrap()
    .grants;
    grants.network = NetworkGrant::default();
    grants
}

#[tokio::test(flavor = "multi_thread")]
async fn kelpd_grants_the_network_the_signed_file_asks_for() {
    use std::io::BufRead;
    let endpoint = Endpoint::start().await;
    let port = endpoint.port;
    let dir = tempfile::tempdir().unwrap();
    // The grant travels inside the file, as `kelp push` leaves it.
    let manifest = manifest_granting(dir.path(), "fetcher", &[format!("localhost:{port}")]);
    let manifest = kelp_core::read_manifest_file(std::path::Path::new(&manifest)).unwrap();
    let module = kelp_core::embed(&std::fs::read(FETCHER).unwrap(), &manifest).unwrap();
    std::fs::write(dir.path().join("fetcher.wasm"), module).unwrap();
    std::fs::write(
        dir.path().join("local.toml"),
        format!(
            "[services.fetcher]\nmodule = \"fetcher.wasm\"\nrestart = \"never\"\n\
             env = {{ FETCH_URL = \"http://localhost:{port}/reading\" }}\n"
        ),
    )
    .unwrap();
    let mut kelpd = Kelpd(
        std::process::Command::new(kelp_tests::binary("kelpd"))
            .arg("--local")
            .arg(dir.path().join("local.toml"))
            .arg("--data-dir")
            .arg(dir.path().join("var"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = kelpd.0.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("| 21.5 °C from the test");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let lines = within("kelpd's fetcher to log the answer", lines)
        .await
        .unwrap();
    drop(kelpd);
    assert!(
        lines.iter().any(|l| l.ends_with(&format!(
            " fetcher | fetched http://localhost:{port}/reading: 200"
        ))),
        "{lines:#?}"
    );
    assert_eq!(endpoint.requests(), [format!("localhost:{port}")]);
}

/// A `kelpd` stopped when dropped, also when a test fails.
struct Kelpd(std::process::Child);

impl Drop for Kelpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP peer that answers every request with a head and part of a body,
/// and then holds the connection open for ever: each request it gets keeps
/// one of the caller's connections busy.
struct Staller {
    port: u16,
    held: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Staller {
    fn start() -> Self {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                // Counted before the caller can see an answer.
                keep.lock().unwrap().push(conn.try_clone().unwrap());
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial");
            }
        });
        Staller { port, held }
    }

    fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_holds_a_bounded_number_of_http_connections() {
    let endpoint = Endpoint::start().await;
    let staller = Staller::start();
    let sup = device("");
    let url = format!("http://localhost:{}/reading", endpoint.port);
    let stalled = format!("http://localhost:{}/", staller.port);
    let grants = || {
        network(
            &[
                format!("localhost:{}", endpoint.port),
                format!("localhost:{}", staller.port),
            ],
            &[],
        )
    };
    // One under the limit held open: the next request still goes out.
    let below = (MAX_HTTP_CONNECTIONS - 1).to_string();
    let output = run_once(
        &sup,
        "fetcher",
        FETCHER,
        grants(),
        &[
            ("FETCH_URL", url.clone()),
            ("HOLD_URL", stalled.clone()),
            ("HOLD", below),
        ],
    )
    .await;
    assert_has(&output, &format!("fetched {url}: 200"));
    assert_eq!(endpoint.requests().len(), 1);
    // At the limit: the next one is refused, and never sent.
    let at = MAX_HTTP_CONNECTIONS.to_string();
    let (exit, output) = run_to_end(
        &sup,
        "fetcher",
        FETCHER,
        grants(),
        &[
            ("FETCH_URL", url.clone()),
            ("HOLD_URL", stalled),
            ("HOLD", at),
        ],
    )
    .await;
    assert_eq!(exit, Some(ExitReason::Exited { code: 1 }), "{output:#?}");
    assert_has(
        &output,
        &format!("fetch {url} failed: ErrorCode::ConnectionLimitReached"),
    );
    assert_eq!(endpoint.requests().len(), 1);
    assert_eq!(staller.connections(), 2 * MAX_HTTP_CONNECTIONS - 1);
}

/// Runs the `openssl` command line tool in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA (`ca.pem`) and a certificate it signed for `localhost`
/// (`localhost.pem`, `localhost.key`), made fresh in `dir`.
fn private_ca(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Kelp test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "localhost.key",
                "-out",
                "localhost.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "localhost.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "localhost.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// An HTTPS endpoint with `localhost.pem` from `dir`, answering every
/// request with one line; returns its port and how many it answered.
async fn https_endpoint(
    dir: &std::path::Path,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("localhost.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("localhost.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let body = "hello over https\n";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, answered)
}

#[tokio::test(flavor = "multi_thread")]
async fn fetcher_speaks_https_to_a_granted_host_it_can_verify() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    private_ca(dir.path());
    let (port, answered) = https_endpoint(dir.path()).await;
    let url = format!("https://localhost:{port}/");
    let manifest = manifest_granting(dir.path(), "fetcher", &[format!("localhost:{port}")]);
    let args = vec![
        FETCHER.to_owned(),
        "--manifest".into(),
        manifest,
        "--env".into(),
        format!("FETCH_URL={url}"),
    ];
    // The device trusts the private CA (as if installed in its bundle).
    let ca = dir.path().join("ca.pem").display().to_string();
    let out = kelp_run_with(args.clone(), &[("SSL_CERT_FILE", &ca)]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, format!("fetched {url}: 200\n| hello over https\n"));
    assert_eq!(answered.load(Ordering::SeqCst), 1);

    // A device that does not trust it refuses the certificate.
    let elsewhere = dir.path().join("empty.pem").display().to_string();
    std::fs::write(&elsewhere, "").unwrap();
    let out = kelp_run_with(args, &[("SSL_CERT_FILE", &elsewhere)]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(
        stdout,
        format!("fetch {url} failed: ErrorCode::TlsProtocolError\n")
    );
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}
