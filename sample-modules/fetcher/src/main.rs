//! Calls `FETCH_URL` (default `http://localhost:8080/`) with a GET through
//! `wasi:http/outgoing-handler` and logs the status and the body, or the
//! error the host answered with. With `HOLD=N` it first makes N requests
//! to `HOLD_URL` (default: the same URL) and keeps their responses open,
//! unread.

use std::process::ExitCode;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingResponse, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// Most of the answer that is logged; an endpoint is free to send more.
const MAX_BODY: usize = 64 << 10;

fn main() -> ExitCode {
    let url = std::env::var("FETCH_URL").unwrap_or_else(|_| "http://localhost:8080/".into());
    let hold = std::env::var("HOLD")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let hold_url = std::env::var("HOLD_URL").unwrap_or_else(|_| url.clone());
    let mut held = Vec::with_capacity(hold);
    for _ in 0..hold {
        match request(&hold_url) {
            Ok(response) => held.push(response),
            Err(e) => {
                println!("holding {}: {e}", held.len());
                return ExitCode::FAILURE;
            }
        }
    }
    if hold > 0 {
        println!("holding {hold} responses open");
    }
    match fetch(&url) {
        Ok((status, body)) => {
            println!("fetched {url}: {status}");
            for line in body.lines() {
                println!("| {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("fetch {url} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fetch(url: &str) -> Result<(u16, String), String> {
    let response = request(url)?;
    let status = response.status();
    let body = response.consume().map_err(|()| "no body")?;
    let stream = body.stream().map_err(|()| "no body stream")?;
    let mut bytes = Vec::new();
    while bytes.len() < MAX_BODY {
        match stream.blocking_read((MAX_BODY - bytes.len()) as u64) {
            Ok(chunk) => bytes.extend(chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(format!("reading the body: {}", e.to_debug_string()));
            }
        }
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Sends a GET to `url` and waits for the response's head.
fn request(url: &str) -> Result<IncomingResponse, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err("the URL must start with http:// or https://".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "invalid scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("invalid host `{authority}`"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| format!("invalid path `{path}`"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| describe(&e))?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(e))) => Err(describe(&e)),
        Some(Err(())) | None => Err("the response was lost".into()),
    }
}

fn describe(e: &ErrorCode) -> String {
    match e {
        ErrorCode::HttpRequestDenied => "denied by the host (HTTP-request-denied)".into(),
        other => format!("{other:?}"),
    }
}
