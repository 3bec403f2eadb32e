//! Services that answer HTTP, served by a real `kelpd` and fetched with a
//! real `curl`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kelp_tests::artifacts::HTTP_HELLO;

use crate::kelpd::Device;
use crate::support::{Watch, free_port, manifest_granting};

/// What curl got: the status (0 when it got no response at all, with curl's
/// exit code in the body) and the body.
fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl must be installed (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return (0, format!("curl exit {:?}", out.status.code()));
    }
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

/// http-hello with its `kelp.toml` embedded, as `kelp push` leaves it; or,
/// with `manifest: false`, as cargo built it.
fn http_hello(dir: &Path, manifest: bool) -> PathBuf {
    let bytes = std::fs::read(HTTP_HELLO).unwrap();
    let bytes = if manifest {
        let manifest = kelp_core::read_manifest_file(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample-modules/http-hello/kelp.toml"),
        )
        .unwrap();
        kelp_core::embed(&bytes, &manifest).unwrap()
    } else {
        bytes
    };
    let path = dir.join(if manifest {
        "http-hello.wasm"
    } else {
        "unsigned-hello.wasm"
    });
    std::fs::write(&path, bytes).unwrap();
    path
}

fn service(name: &str, module: &Path, extra: &str) -> String {
    format!(
        "[services.{name}]\nmodule = {:?}\nmemory = \"16MiB\"\nstop-grace = \"2s\"\n{extra}\n",
        module.display().to_string()
    )
}

struct Setup {
    dir: tempfile::TempDir,
    device: Device,
    target: String,
    /// own-port's entry in the target.
    own_block: String,
    /// The listener holding `busy-port`'s port.
    held: std::net::TcpListener,
    /// The shared listener, where `http-hello` is at `/hello`.
    shared: u16,
    /// `own-port`'s listener.
    own: u16,
}

/// kelpd with http-hello twice: by path on the shared listener, and on a
/// port of its own; plus whatever `extra` services.
fn start(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let module = http_hello(dir.path(), true);
    let unsigned = http_hello(dir.path(), false);
    let (shared, own) = (free_port(), free_port());
    // A port something else holds.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap();
    let map = dir.path().join("map.toml");
    std::fs::write(
        &map,
        format!(
            "[network]\nhttp-listen = \"127.0.0.1:{shared}\"\n\
             [http.http-hello]\npath = \"/hello\"\n\
             [http.own-port]\nlisten = \"127.0.0.1:{own}\"\n\
             [http.unsigned]\npath = \"/unsigned\"\n\
             [http.granted]\npath = \"/granted\"\n\
             [http.busy-port]\nlisten = \"{busy}\"\n"
        ),
    )
    .unwrap();
    let own_block = service("own-port", &module, "");
    let target = [
        service("http-hello", &module, "env = { GREETING = \"Ahoy\" }"),
        own_block.clone(),
        extra
            .replace("MODULE", &format!("{:?}", module.display().to_string()))
            .replace("UNSIGNED", &format!("{:?}", unsigned.display().to_string())),
    ]
    .concat();
    let device = Device::start_with(
        &target,
        vec![OsString::from("--hardware-map"), map.into_os_string()],
    );
    device.wait_until("both to answer", |_| {
        curl(&format!("http://127.0.0.1:{shared}/hello")).0 == 200
            && curl(&format!("http://127.0.0.1:{own}/")).0 == 200
    });
    Setup {
        dir,
        device,
        target,
        own_block,
        held,
        shared,
        own,
    }
}

#[test]
fn curl_gets_the_page_on_a_path_and_on_a_port() {
    let s = start("");
    let (code, page) = curl(&format!("http://127.0.0.1:{}/hello/world", s.shared));
    assert_eq!(code, 200, "{page}");
    // The whole path, as in Spin; the greeting from the service's env.
    assert!(page.contains("<h1>Ahoy from Kelp!</h1>"), "{page}");
    assert!(page.contains("path: /hello/world"), "{page}");
    let (code, page) = curl(&format!("http://127.0.0.1:{}/elsewhere", s.own));
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<h1>Hello from Kelp!</h1>"), "{page}");
    assert!(page.contains("path: /elsewhere"), "{page}");
    // Paths no service is bound to, including one that only starts alike.
    for path in ["/", "/other", "/hellothere"] {
        let (code, _) = curl(&format!("http://127.0.0.1:{}{path}", s.shared));
        assert_eq!(code, 404, "{path}");
    }
    // A body over the limit is refused before the guest sees it.
    let big = s.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 2 << 20]).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
        ])
        .arg(format!("@{}", big.display()))
        .arg(format!("http://127.0.0.1:{}/hello", s.shared))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    // http-hello is granted no network: its outgoing request is refused,
    // even to a server that answers (own-port's).
    let (code, page) = curl(&format!(
        "http://127.0.0.1:{}/hello/fetch?port={}",
        s.shared, s.own
    ));
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        page,
        "outgoing request failed: ErrorCode::HttpRequestDenied\n"
    );
    s.device.wait_until("status to show it running", |d| {
        d.service_state("http-hello").as_deref() == Some("running")
    });
    assert!(
        s.device.stdout().contains(&format!(
            "http-hello ! kelp: answering HTTP at http://127.0.0.1:{}/hello",
            s.shared
        )),
        "{}",
        s.device.stdout()
    );
}

/// A plain HTTP/1.1 server in the test: answers every request 200, and
/// counts the connections it accepted.
struct Peer {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Peer {
    fn start() -> Peer {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                // The request's head, up to its blank line.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                );
            }
        });
        Peer { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// http-hello with its `kelp.toml`, granted `connect` to `destinations`.
fn http_hello_granting(dir: &Path, destinations: &[String]) -> PathBuf {
    let manifest = manifest_granting(dir, "http-hello", destinations);
    let manifest = kelp_core::read_manifest_file(Path::new(&manifest)).unwrap();
    assert_eq!(manifest.grants.network.connect.len(), destinations.len());
    assert!(manifest.grants.network.serve_http);
    let path = dir.join("granted.wasm");
    let bytes = std::fs::read(HTTP_HELLO).unwrap();
    std::fs::write(&path, kelp_core::embed(&bytes, &manifest).unwrap()).unwrap();
    path
}

#[test]
fn a_service_answering_http_reaches_only_what_it_was_granted() {
    let (peer, other) = (Peer::start(), Watch::on("127.0.0.1:0"));
    let modules = tempfile::tempdir().unwrap();
    let granted = http_hello_granting(modules.path(), &[format!("127.0.0.1:{}", peer.port)]);
    let s = start(&service("granted", &granted, ""));
    let fetch = |port: u16| {
        curl(&format!(
            "http://127.0.0.1:{}/granted/fetch?port={port}",
            s.shared
        ))
    };
    // Every request is a fresh instance; each reaches the granted peer.
    for n in 1..=3 {
        let (code, page) = fetch(peer.port);
        assert_eq!(code, 200, "{page}");
        assert_eq!(page, "outgoing request answered 200\n");
        assert_eq!(peer.connections(), n);
    }
    // Another port on the same host is not granted: refused before any
    // packet is sent, and noted in the service's log.
    let (code, page) = fetch(other.port());
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        page,
        "outgoing request failed: ErrorCode::HttpRequestDenied\n"
    );
    s.device.wait_until("the refusal to be noted", |d| {
        d.stdout().contains(&format!(
            "granted ! kelp: network `127.0.0.1:{}` refused: not granted",
            other.port()
        ))
    });
    assert_eq!(other.connections(), 0);
}

#[test]
fn a_trap_or_a_memory_hog_fails_only_its_own_request() {
    let s = start("");
    let base = format!("http://127.0.0.1:{}/hello", s.shared);
    let (code, _) = curl(&format!("{base}/crash"));
    assert_eq!(code, 500);
    let (code, page) = curl(&base);
    assert_eq!(code, 200, "{page}");
    let (code, _) = curl(&format!("{base}/hog"));
    assert_eq!(code, 500);
    let (code, page) = curl(&base);
    assert_eq!(code, 200, "{page}");
    s.device
        .wait_until("both failures in the service's log", |d| {
            let out = d.stdout();
            out.contains("http-hello ! kelp: request `GET /hello/crash` trapped")
                && out.contains(
                    "http-hello ! kelp: request `GET /hello/hog` memory limit 16 MiB exceeded",
                )
        });
    s.device.wait_until("status to show it running", |d| {
        d.service_state("http-hello").as_deref() == Some("running")
    });
}

#[test]
fn every_request_gets_a_fresh_instance_and_excess_ones_get_503() {
    let s = start("");
    let page_url = format!("http://127.0.0.1:{}/", s.own);
    let pages: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24).map(|_| scope.spawn(|| curl(&page_url))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (code, page) in &pages {
        assert_eq!(*code, 200, "{page}");
        // A counter in the guest's memory: 1 means nothing carried over.
        assert!(
            page.contains("requests served by this instance: 1</p>"),
            "{page}"
        );
    }

    // More sleeping requests than the limit: the ones without a place are
    // turned away, not queued behind the sleepers.
    let limit = kelp_runtime::MAX_CONCURRENT_REQUESTS;
    let sleep_url = format!("http://127.0.0.1:{}/sleep?ms=5000", s.own);
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..limit + 8)
            .map(|_| scope.spawn(|| curl(&sleep_url)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<_> = answers.iter().filter(|(code, _)| *code == 503).collect();
    let ok = answers.iter().filter(|(code, _)| *code == 200).count();
    assert!(!busy.is_empty(), "{answers:?}");
    assert!(busy[0].1.contains("service is busy"), "{}", busy[0].1);
    assert_eq!(ok + busy.len(), answers.len(), "{answers:?}");
    // And it keeps serving.
    assert_eq!(curl(&page_url).0, 200);
}

#[test]
fn unserved_services_say_why_and_removed_ones_stop_listening() {
    let mut s = start(
        "[services.unbound]\nmodule = MODULE\n[services.unsigned]\nmodule = UNSIGNED\n\
         [services.busy-port]\nmodule = MODULE\n",
    );
    // A port in use is reported in the service's log, and retried.
    let busy = s.held.local_addr().unwrap();
    s.device.wait_until("the port in use to be reported", |d| {
        d.stdout().contains(&format!(
            "busy-port ! kelp: cannot listen on {busy}: Address already in use"
        ))
    });
    assert_ne!(
        s.device.service_state("busy-port").as_deref(),
        Some("failed")
    );
    s.device.wait_until("both to fail", |d| {
        d.service_state("unbound").as_deref() == Some("failed")
            && d.service_state("unsigned").as_deref() == Some("failed")
    });
    let status = s.device.status();
    let reason = |name: &str| {
        status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()["last_exit"]["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        reason("unbound").contains("the device's hardware map binds it to no port or path"),
        "{}",
        reason("unbound")
    );
    assert!(
        reason("unsigned").contains("its manifest does not ask to"),
        "{}",
        reason("unsigned")
    );
    let out = s.device.stdout();
    assert!(
        out.contains("unbound ! kelp: failed to start: `unbound` answers HTTP but is not served"),
        "{out}"
    );
    // The unsigned one's path is in the map, and still nothing answers it.
    assert_eq!(
        curl(&format!("http://127.0.0.1:{}/unsigned", s.shared)).0,
        404
    );

    // Without own-port in the target, its port closes; the rest serve on.
    let without = s.target.replace(&s.own_block, "");
    s.device.edit(&without);
    s.device.wait_until("own-port's listener to close", |_| {
        curl(&format!("http://127.0.0.1:{}/", s.own)).0 == 0
    });
    assert_eq!(curl(&format!("http://127.0.0.1:{}/hello", s.shared)).0, 200);
    s.target = without;

    // kelpd's shutdown stops the shared listener too.
    let (exit, _) = s.device.terminate();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(curl(&format!("http://127.0.0.1:{}/hello", s.shared)).0, 0);
}

#[test]
fn kelp_run_serves_until_ctrl_c() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    // As the README shows it, from the repository's root.
    let child = Command::new(kelp_tests::binary("kelp"))
        .args([
            "run",
            HTTP_HELLO,
            "--manifest",
            "sample-modules/http-hello/kelp.toml",
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--env",
            "GREETING=Hi",
        ])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let page = loop {
        let (code, page) = curl(&url);
        if code == 200 {
            break page;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "kelp run never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(page.contains("<h1>Hi from Kelp!</h1>"), "{page}");
    // SAFETY: plain kill(2) on a child we own.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("kelp: answering HTTP at {url}")),
        "{stderr}"
    );
    assert_eq!(curl(&url).0, 0, "still listening after Ctrl-C");
}
