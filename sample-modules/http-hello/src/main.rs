//! A service that answers HTTP (`wasi:http/incoming-handler`).
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
use std::time::Duration;

use wstd::http::{Body, Client, Error, Request, Response, StatusCode};

/// Requests this instance has answered.
static SERVED: AtomicU32 = AtomicU32::new(0);

/// Longest `/sleep` sleeps.
const MAX_SLEEP_MS: u64 = 60_000;

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    let path = request.uri().path().to_owned();
    let route = request
        .headers()
        .get("kelp-path-info")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| path.clone());
    match route.as_str() {
        "/crash" => panic!("asked to crash at {path}"),
        "/hog" => hog(),
        "/sleep" => {
            let ms = query(&request, "ms").unwrap_or(1_000).min(MAX_SLEEP_MS);
            wstd::task::sleep(Duration::from_millis(ms).into()).await;
        }
        "/fetch" => {
            let port = query(&request, "port").unwrap_or(80);
            let outgoing = Request::get(format!("http://127.0.0.1:{port}/")).body(Body::empty())?;
            let text = match Client::new().send(outgoing).await {
                Ok(response) => format!("outgoing request answered {}\n", response.status()),
                Err(e) => format!("outgoing request failed: {e:?}\n"),
            };
            return Ok(Response::new(text.into()));
        }
        _ => {}
    }
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_owned());
    let page = format!(
        "<!doctype html>\n<title>http-hello</title>\n<h1>{greeting} from Kelp!</h1>\n<p>path: {}</p>\n<p>requests served by this instance: {served}</p>\n",
        escape(&path)
    );
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/html; charset=utf-8")
        .body(page.into())?)
}

/// A number from the query string: `name=N`.
fn query(request: &Request<Body>, name: &str) -> Option<u64> {
    request.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k == name { v.parse().ok() } else { None }
    })
}

/// Allocates and touches memory, a mebibyte at a time, until the host's
/// limit ends the instance.
fn hog() {
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
