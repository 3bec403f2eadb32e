//! Services that answer HTTP: components exporting
//! `wasi:http/incoming-handler`, served on the listener or path prefix the
//! device's map binds them to, with a fresh instance for every request.
//!
//! A service that answers HTTP has no `main`: its run, as the supervisor sees
//! it, is the time its binding is served. It ends when the service is
//! stopped; in-flight requests then get [`DRAIN_WAIT`] to finish.
//!
//! Per request the host gives the guest a new store, with the service's
//! memory limit, its environment, its output going to the service's log,
//! and its network grants: outgoing requests and sockets go where a
//! command's would (see [`crate::net`]), the service's instances sharing its
//! outgoing connection limit.
//! A trap, a passed memory limit or a passed deadline ends that instance and
//! that request only (500, or 504 for the deadline); the service keeps
//! answering.
//!
//! Routing follows Spin: behind a path binding (`path = "/hello"`) the guest
//! sees the request's whole path (`/hello/world`); the part after the prefix
//! is in the `kelp-path-info` header (`/world`), the prefix itself in
//! `kelp-base-path`. A longer prefix wins over a shorter one, and a path no
//! binding covers gets 404.

mod listener;
mod request;
mod threads;

use std::net::SocketAddr;
use std::sync::Arc;

use kelp_core::hardware_map::{HardwareMap, HttpBinding};
use kelp_core::{ExitReason, Grants};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::logs::Stream;
use crate::net::NetRun;
use crate::program::Program;
use crate::store::{InstanceIo, ProxyState};

pub(crate) use listener::Binding;
pub use listener::DRAIN_WAIT;
pub use request::{MAX_CONCURRENT_REQUESTS, MAX_REQUEST_BODY, QUEUE_WAIT, REQUEST_TIMEOUT};

/// Why a service that answers HTTP is not served here, if it is not: its
/// grants do not ask for it, or the device's map does not bind it.
pub(crate) fn refusal(name: &str, grants: &Grants, map: &HardwareMap) -> Result<Binding, String> {
    if !grants.network.serve_http {
        return Err(format!(
            "`{name}` answers HTTP but is not served: its manifest does not ask to (add `serve-http = true` under `[grants.network]` in its kelp.toml)"
        ));
    }
    match map.http.get(name) {
        Some(HttpBinding::Listen(addr)) => Ok(Binding {
            addr: *addr,
            prefix: "/".to_owned(),
        }),
        Some(HttpBinding::Path(prefix)) => match map.http_listen {
            Some(addr) => Ok(Binding {
                addr,
                prefix: prefix.clone(),
            }),
            // The map's own check refuses this; a map built in code might not.
            None => Err(format!(
                "`{name}` is not served: its binding `path = \"{prefix}\"` needs `http-listen` under `[network]` in the device's hardware map"
            )),
        },
        None => Err(format!(
            "`{name}` answers HTTP but is not served: the device's hardware map binds it to no port or path (add `[http.{name}]` with `path = \"/{name}\"` or `listen = \"0.0.0.0:8081\"` to the map, or give `kelp run` `--listen ADDR`)"
        )),
    }
}

/// Why a loaded program that answers HTTP would not be served as service
/// `name` on this device; `None` if it would be, or if it is a command.
pub(crate) fn unserved(
    program: &Program,
    name: &str,
    grants: Option<&Grants>,
    hardware: &kelp_hostcalls::Hardware,
) -> Option<String> {
    if !program.answers_http() {
        return None;
    }
    let grants = grants
        .or(program.manifest().map(|m| &m.grants))
        .cloned()
        .unwrap_or_default();
    refusal(name, &grants, &hardware.map()).err()
}

/// Serves a proxy until the service is stopped: the serving counterpart of
/// running a command to its end.
pub(crate) async fn serve(
    engine: &wasmtime::Engine,
    pre: &ProxyPre<ProxyState>,
    manifest_grants: Option<&Grants>,
    io: InstanceIo<'_>,
) -> ExitReason {
    let grants = io.grants.or(manifest_grants).cloned().unwrap_or_default();
    let note = |text: &str| {
        io.logs
            .write(Stream::Stderr, format!("kelp: {text}\n").as_bytes());
    };
    let binding = match refusal(io.name, &grants, &io.hardware.map()) {
        Ok(binding) => binding,
        Err(why) => {
            note(&why);
            return ExitReason::StartFailed { message: why };
        }
    };
    let net = NetRun::new(
        &grants.network,
        io.hardware.map().network_allow.as_deref(),
        io.logs.clone(),
    );
    for notice in net.notices() {
        note(&notice);
    }
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let served = Arc::new(request::Served {
        name: io.name.to_owned(),
        engine: engine.clone(),
        pre: pre.clone(),
        env: io.env.to_vec(),
        memory_limit: io.memory_limit,
        logs: io.logs.clone(),
        permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS)),
        cancelled,
        prefix: binding.prefix.clone(),
        net,
    });
    let registration = match listener::register(&binding, served.clone()).await {
        Ok(r) => r,
        Err(why) => {
            note(&why);
            return ExitReason::StartFailed { message: why };
        }
    };
    // However this ends (stopped, or dropped by the supervisor), no instance
    // of this service outlives it.
    let _cancel_on_drop = CancelOnDrop(cancel);
    note(&format!(
        "answering HTTP at {}",
        url(registration.addr(), &binding.prefix)
    ));
    tracing::info!(service = io.name, addr = %registration.addr(), prefix = %binding.prefix, "serving HTTP");
    let mut stop = io.stop.clone();
    wasmtime_wasi::p2::Pollable::ready(&mut stop).await;
    // No new requests reach it from here; those under way get a moment.
    drop(registration);
    let all = u32::try_from(MAX_CONCURRENT_REQUESTS).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_WAIT, served.permits.acquire_many(all))
        .await
        .is_err()
    {
        note("requests still running after the drain wait were cut off");
    }
    ExitReason::Exited { code: 0 }
}

fn url(addr: SocketAddr, prefix: &str) -> String {
    let host = if addr.ip().is_unspecified() {
        // What a user on the device itself types.
        match addr {
            SocketAddr::V4(_) => format!("127.0.0.1:{}", addr.port()),
            SocketAddr::V6(_) => format!("[::1]:{}", addr.port()),
        }
    } else {
        addr.to_string()
    };
    let path = if prefix == "/" { "/" } else { prefix };
    format!("http://{host}{path}")
}

struct CancelOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}
