//! A service that answers HTTP (`wasi:http/incoming-handler`), written
//! against the `wasi:http` interfaces themselves: no async runtime in the
//! guest, so a request costs the instance a handful of host calls.
//!
//! Every request gets a page naming the path it asked for, a greeting from
//! the `GREETING` environment variable, and how many requests this instance
//! has served. The host makes a fresh instance for every request, so that
//! count is always 1; anything else would mean state leaked between requests.
//!
//! Behind a path binding (`[http.http-hello] path = "/hello"`) the request
//! keeps its whole path, as in Spin; the part after the binding's prefix is
//! in the `kelp-path-info` header, and the routes below match on it.
//!
//! Routes for trying the host's limits:
//! - `/crash` panics: the host answers 500 for that request only.
//! - `/hog` allocates until its memory limit stops it: 500 again.
//! - `/sleep?ms=N` answers after N milliseconds (at most a minute), for
//!   filling the host's concurrency limit.
//! - `/fetch?port=N` tries a request to `http://127.0.0.1:N/` and reports
//!   how it went.

use std::sync::atomic::{AtomicU32, Ordering};

use wasip2::clocks::monotonic_clock;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasip2::http::proxy::export!(HttpHello);

/// Requests this instance has answered.
static SERVED: AtomicU32 = AtomicU32::new(0);

/// Longest `/sleep` sleeps.
const MAX_SLEEP_MS: u64 = 60_000;

struct HttpHello;

impl Guest for HttpHello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let target = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let route = request
            .headers()
            .get("kelp-path-info")
            .pop()
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_else(|| path.to_owned());
        match route.as_str() {
            "/crash" => panic!("asked to crash at {path}"),
            "/hog" => hog(),
            "/sleep" => {
                let ms = number(query, "ms").unwrap_or(1_000).min(MAX_SLEEP_MS);
                monotonic_clock::subscribe_duration(ms * 1_000_000).block();
            }
            "/fetch" => {
                let port = number(query, "port").unwrap_or(80);
                return respond(out, "text/plain; charset=utf-8", &fetch(port));
            }
            _ => {}
        }
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_owned());
        let page = format!(
            "<!doctype html>\n<title>http-hello</title>\n<h1>{greeting} from Kelp!</h1>\n<p>path: {}</p>\n<p>requests served by this instance: {served}</p>\n",
            escape(path)
        );
        respond(out, "text/html; charset=utf-8", &page);
    }
}

/// Answers 200 with `body`.
fn respond(out: ResponseOutparam, content_type: &str, body: &str) {
    let headers = Fields::from_list(&[
        ("content-type".to_owned(), content_type.into()),
        ("content-length".to_owned(), body.len().to_string().into()),
    ])
    .expect("content-type and content-length are valid headers");
    let response = OutgoingResponse::new(headers);
    let outgoing = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("a new body has a stream");
    // At most 4 KiB a call; a page is one. A client that went away is no
    // error of this service's.
    for chunk in body.as_bytes().chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            break;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

/// `GET http://127.0.0.1:{port}/`, and how it went, in a line.
fn fetch(port: u64) -> String {
    let request = OutgoingRequest::new(Fields::new());
    let prepared = request
        .set_scheme(Some(&Scheme::Http))
        .and_then(|()| request.set_authority(Some(&format!("127.0.0.1:{port}"))))
        .and_then(|()| request.set_path_with_query(Some("/")));
    if prepared.is_err() {
        return format!("outgoing request failed: bad address 127.0.0.1:{port}\n");
    }
    let answer = match outgoing_handler::handle(request, None) {
        Ok(answer) => answer,
        Err(e) => return format!("outgoing request failed: {e:?}\n"),
    };
    answer.subscribe().block();
    match answer.get() {
        Some(Ok(Ok(response))) => format!("outgoing request answered {}\n", response.status()),
        Some(Ok(Err(e))) => format!("outgoing request failed: {e:?}\n"),
        _ => "outgoing request failed: no answer\n".to_owned(),
    }
}

/// A number from a query string: `name=N`.
fn number(query: &str, name: &str) -> Option<u64> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k == name { v.parse().ok() } else { None }
    })
}

/// Allocates and touches memory, a mebibyte at a time, until the host's
/// limit ends the instance.
fn hog() -> ! {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![1u8; 1 << 20]);
        println!("holding {} MiB", held.len());
    }
}

/// The path is the client's: it goes into the page as text, not markup.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// A component's `main` is its `wasi:cli/run`; this one only answers
/// requests, which the host asks of its `wasi:http/incoming-handler`.
fn main() {}
