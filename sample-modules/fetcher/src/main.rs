//! Calls `FETCH_URL` (default `http://localhost:8080/`) with a GET through
//! `wasi:http/outgoing-handler` and logs the status and the body, or the
//! error the host answered with.

use std::process::ExitCode;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// Most of the answer that is logged; an endpoint is free to send more.
const MAX_BODY: usize = 64 << 10;

fn main() -> ExitCode {
    let url = std::env::var("FETCH_URL").unwrap_or_else(|_| "http://localhost:8080/".into());
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
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(describe(&e)),
        Some(Err(())) | None => return Err("the response was lost".into()),
    };
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

fn describe(e: &ErrorCode) -> String {
    match e {
        ErrorCode::HttpRequestDenied => "denied by the host (HTTP-request-denied)".into(),
        other => format!("{other:?}"),
    }
}
