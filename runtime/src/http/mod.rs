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
use std::time::Duration;

use kelp_core::hardware_map::{HardwareMap, HttpBinding};
use kelp_core::{ByteSize, ExitReason, Grants};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::instance::InstanceIo;
use crate::limits::ServiceLimiter;
use crate::logs::Stream;
use crate::net::NetRun;

pub(crate) use listener::Binding;

/// Requests one service handles at once, each in its own instance. Every
/// one holds a pool slot and up to the service's memory limit; 32 keeps a
/// service with the default 64 MiB limit under 2 GiB at its worst, and is
/// far inside the engine's default [`crate::DEFAULT_POOL_SLOTS`]. A device
/// running several HTTP services needs that many slots per service; past
/// the pool's size a request gets 503, never a crash.
pub const MAX_CONCURRENT_REQUESTS: usize = 32;

/// How long a request waits for one of the [`MAX_CONCURRENT_REQUESTS`]
/// places before it is answered 503. Long enough to ride out a burst of
/// quick requests; short enough that a stuck service sheds load instead of
/// queueing without bound.
pub const QUEUE_WAIT: Duration = Duration::from_millis(500);

/// Longest one request's instance may live, from instantiation to the last
/// byte of its response. A handler still running then is dropped; the client
/// gets 504 if no response had started. Generous for a device serving pages
/// and small APIs; a guest in an endless loop is cut off all the same.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request body a guest is handed. Devices serve pages and small
/// API calls; a bigger body is refused with 413 (by its `content-length`) or
/// cut off with an error when it gets there, before it costs the host more.
pub const MAX_REQUEST_BODY: u64 = 1 << 20;

/// How long a stopping service's in-flight requests get to finish before
/// their instances are dropped. Well inside the default stop grace period,
/// so the supervisor never has to cancel the serving itself.
pub const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Store data of one request's instance.
pub(crate) struct ProxyState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limiter: ServiceLimiter,
    /// The service's network grants, with this instance's lookups: its
    /// sockets and outgoing requests go where a command's would.
    net: NetRun,
}

impl WasiView for ProxyState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ProxyState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.net,
        }
    }
}

impl crate::net::NetView for ProxyState {
    fn net(&self) -> &NetRun {
        &self.net
    }
}

/// The linker proxies are prepared with: WASI 0.2 (name lookups checked
/// against the grants) and `wasi:http`. Hardware interfaces are not
/// offered: a request's instance lives for one request, and GPIO lines and
/// buses are held by one holder at a time.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<ProxyState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::net::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// Whether a component answers HTTP rather than running as a command: it
/// exports `wasi:http/incoming-handler`. Such a component may export
/// `wasi:cli/run` as well (a Rust binary for wasm32-wasip2 always does, with
/// an empty `main`); as with `wasmtime serve`, the handler is what it is for.
pub(crate) fn is_proxy(engine: &wasmtime::Engine, component: &Component) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name.starts_with("wasi:http/incoming-handler@0.2"))
}

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
    program: &crate::Program,
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
    let mut stop = io.stdin.clone();
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

/// The memory limit every request's instance gets.
fn limiter(limit: ByteSize) -> (ServiceLimiter, Arc<crate::limits::MemoryMeter>) {
    let meter = Arc::new(crate::limits::MemoryMeter::default());
    (ServiceLimiter::new(limit, meter.clone()), meter)
}

/// Returns once `flag` is true (or its sender is gone).
async fn stopped(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}
