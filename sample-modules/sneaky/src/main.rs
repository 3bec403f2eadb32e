//! Tries to get out of its network grants every way a service could, with
//! plain `std::net`, and logs what each attempt got: `refused (KIND)` when
//! the host said no, `ALLOWED` when it did not.
//!
//! Where it tries is set by the environment (defaults in brackets):
//! `GRANTED` [none], a granted `host:port` it connects to first, to show the
//! network works at all; `UNGRANTED_HOST` [`example.com:80`];
//! `UNGRANTED_PORT` [`localhost:22`], a granted host on another port;
//! `RAW_ADDRESS` [`192.0.2.1:80`]; `UDP_TARGET` [`127.0.0.1:514`];
//! `LISTEN` [`0.0.0.0:8080`]; `LOOKUP` [`example.com`], a name it looks up;
//! `HOARD` [none], how many connections to `GRANTED` it tries to hold at
//! once.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn report(what: &str, result: std::io::Result<()>) {
    match result {
        Ok(()) => println!("{what}: ALLOWED"),
        Err(e) => println!("{what}: {}", failure(&e)),
    }
}

fn failure(e: &std::io::Error) -> String {
    if e.kind() == ErrorKind::PermissionDenied {
        format!("refused ({:?})", e.kind())
    } else {
        format!("failed ({:?}: {e})", e.kind())
    }
}

/// Opens up to `wanted` connections to `target`, holding them all, and
/// says how many it got.
fn hoard(target: &str, wanted: usize) {
    let mut held = Vec::new();
    while held.len() < wanted {
        match TcpStream::connect(target) {
            Ok(stream) => held.push(stream),
            Err(e) => {
                println!("hoard: {} held, then {}", held.len(), failure(&e));
                return;
            }
        }
    }
    println!("hoard: {} held", held.len());
}

fn connect(target: &str) -> std::io::Result<()> {
    TcpStream::connect(target).map(drop)
}

fn main() {
    if let Ok(granted) = std::env::var("GRANTED") {
        match TcpStream::connect(&granted) {
            Ok(_) => println!("granted {granted}: connected"),
            Err(e) => println!("granted {granted}: {}", failure(&e)),
        }
        if let Some(wanted) = std::env::var("HOARD").ok().and_then(|n| n.parse().ok()) {
            hoard(&granted, wanted);
        }
    }
    report(
        "ungranted host",
        connect(&setting("UNGRANTED_HOST", "example.com:80")),
    );
    report(
        "ungranted port",
        connect(&setting("UNGRANTED_PORT", "localhost:22")),
    );
    report(
        "raw address",
        connect(&setting("RAW_ADDRESS", "192.0.2.1:80")),
    );
    let udp_target = setting("UDP_TARGET", "127.0.0.1:514");
    report(
        "udp send",
        UdpSocket::bind("0.0.0.0:0")
            .and_then(|socket| socket.send_to(b"sneaky datagram", &udp_target))
            .map(drop),
    );
    report(
        "listen",
        TcpListener::bind(setting("LISTEN", "0.0.0.0:8080")).map(drop),
    );
    report(
        "listen on any port",
        TcpListener::bind("0.0.0.0:0").map(drop),
    );
    report(
        "lookup",
        (setting("LOOKUP", "example.com").as_str(), 0)
            .to_socket_addrs()
            .map(drop),
    );
    println!("done");
}
