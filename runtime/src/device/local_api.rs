//! The local device API: HTTP on a Unix socket in kelpd's data directory,
//! for whoever is on the device (and may open the socket), with or without
//! a cloud.
//!
//! ```sh
//! curl --unix-socket /var/lib/kelp/kelpd.sock http://kelpd/v1/status
//! curl --unix-socket /var/lib/kelp/kelpd.sock -X POST http://kelpd/v1/services/web/restart
//! curl --unix-socket /var/lib/kelp/kelpd.sock "http://kelpd/v1/services/web/logs?lines=50"
//! ```
//!
//! - `GET /v1/status`: what `status.json` holds: the release running and how
//!   its update went, each service's state, and what was refused and why.
//! - `POST /v1/services/{name}/restart`: stops and starts a service.
//! - `GET /v1/services/{name}/logs[?lines=N]`: its newest N output lines
//!   (default 100, at most 1000), oldest first.
//!
//! Errors are JSON `{ "error": "…" }` with a 4xx status. The socket is made
//! readable and writable by its owner and group only.

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use super::node::{Node, RECENT_LINES};

/// The socket's file name in the data directory.
pub const SOCKET: &str = "kelpd.sock";

/// Lines a log request gets unless it asks.
const DEFAULT_LINES: usize = 100;

/// Starts serving on `path`, replacing a socket left by an earlier run.
pub fn serve(node: Arc<Node>, path: &Path) -> std::io::Result<JoinHandle<()>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "something other than a socket is in the way",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "local API: cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let node = node.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let node = node.clone();
                    async move { Ok::<_, Infallible>(answer(&node, req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(%error, "local API connection ended");
                }
            });
        }
    }))
}

async fn answer(node: &Node, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["v1", "status"]) => json(StatusCode::OK, &node.status()),
        (&Method::POST, ["v1", "services", name, "restart"]) => {
            if node.supervisor.service(name).is_none() {
                return no_service(name);
            }
            match node.supervisor.restart(name).await {
                Ok(_) => json(StatusCode::OK, &serde_json::json!({ "restarted": name })),
                Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
            }
        }
        (&Method::GET, ["v1", "services", name, "logs"]) => {
            let lines = match lines_asked(&query) {
                Ok(n) => n,
                Err(why) => return error(StatusCode::BAD_REQUEST, &why),
            };
            match node.logs.recent(name, lines) {
                Some(recent) => json(StatusCode::OK, &serde_json::json!({ "lines": recent })),
                None if node.supervisor.service(name).is_some() => {
                    json(StatusCode::OK, &serde_json::json!({ "lines": [] }))
                }
                None => no_service(name),
            }
        }
        (_, ["v1", "status"])
        | (_, ["v1", "services", _, "restart"])
        | (_, ["v1", "services", _, "logs"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not allowed on {path}", req.method()),
        ),
        _ => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
    }
}

/// `lines=N` from a query string.
fn lines_asked(query: &str) -> Result<usize, String> {
    let mut lines = DEFAULT_LINES;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("lines", n)) => {
                lines = n
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=RECENT_LINES).contains(n))
                    .ok_or_else(|| format!("`lines` must be a number from 1 to {RECENT_LINES}"))?;
            }
            _ => return Err(format!("unknown query parameter `{pair}`")),
        }
    }
    Ok(lines)
}

fn no_service(name: &str) -> Response<Full<Bytes>> {
    error(StatusCode::NOT_FOUND, &format!("no service named `{name}`"))
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_unknown_parameters_refused() {
        assert_eq!(lines_asked(""), Ok(DEFAULT_LINES));
        assert_eq!(lines_asked("lines=5"), Ok(5));
        assert!(lines_asked("lines=0").is_err());
        assert!(lines_asked("lines=100000").is_err());
        assert!(lines_asked("lines=x").unwrap_err().contains("`lines`"));
        assert!(lines_asked("follow=1").unwrap_err().contains("`follow=1`"));
    }
}
