//! Listeners and the services bound to them.
//!
//! Listeners are kept per process, by address: a TCP port belongs to the
//! process, however many runtimes it has. A listener opens with the first
//! service bound to it and closes with the last one; services bound by path
//! share the map's `network.http-listen`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::http::{Request, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::request::{Served, plain, stopped};

/// Connections one listener holds open at once. Each costs a task and a
/// socket; a device's pages need tens. Past this, new connections wait in
/// the kernel's backlog until one closes.
const MAX_CONNECTIONS: usize = 512;

/// How long a stopping service's in-flight requests get to finish before
/// their instances are dropped. Well inside the default stop grace period,
/// so the supervisor never has to cancel the serving itself.
pub const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// How long a client has to send a request's headers. Stops a client that
/// opens connections and trickles bytes from holding them for ever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long binding keeps trying while the address is in use. A service
/// restarting on its own port finds the old listener still closing for a
/// moment; anything holding the port longer is a real conflict.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// Pause between those tries.
const BIND_RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Pause after a failed `accept` (out of file descriptors, say), so that the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where a service is served: an address, and a path prefix on it (`/` for
/// the whole listener).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) addr: SocketAddr,
    pub(crate) prefix: String,
}

struct Route {
    served: Arc<Served>,
    id: u64,
}

type Routes = Arc<RwLock<BTreeMap<String, Route>>>;

struct Listener {
    routes: Routes,
    shutdown: watch::Sender<bool>,
    local: SocketAddr,
}

static LISTENERS: Mutex<BTreeMap<SocketAddr, Listener>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn listeners() -> MutexGuard<'static, BTreeMap<SocketAddr, Listener>> {
    LISTENERS.lock().unwrap_or_else(|p| p.into_inner())
}

fn read(routes: &Routes) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Route>> {
    routes.read().unwrap_or_else(|p| p.into_inner())
}

fn write(routes: &Routes) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Route>> {
    routes.write().unwrap_or_else(|p| p.into_inner())
}

/// A service's place on a listener; dropping it takes the service off, and
/// closes the listener if it was the last.
pub(crate) struct Registration {
    key: SocketAddr,
    prefix: String,
    id: u64,
    local: SocketAddr,
}

impl Registration {
    /// The address actually listened on (the port chosen, for port 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut all = listeners();
        let Some(listener) = all.get(&self.key) else {
            return;
        };
        let empty = {
            let mut routes = write(&listener.routes);
            // A newer version of the service may have taken the route over.
            if routes.get(&self.prefix).is_some_and(|r| r.id == self.id) {
                routes.remove(&self.prefix);
            }
            routes.is_empty()
        };
        if empty {
            let _ = listener.shutdown.send(true);
            all.remove(&self.key);
        }
    }
}

/// Puts a service on its binding's listener, opening the listener if it is
/// not open yet. A newer version of the same service takes its route over
/// (a hand-over update); another service's route is a conflict.
pub(crate) async fn register(
    binding: &Binding,
    served: Arc<Served>,
) -> Result<Registration, String> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let deadline = Instant::now() + BIND_RETRY;
    loop {
        {
            let mut all = listeners();
            if let Some(listener) = all.get(&binding.addr) {
                let mut routes = write(&listener.routes);
                if let Some(other) = routes.get(&binding.prefix)
                    && other.served.name != served.name
                {
                    return Err(format!(
                        "cannot serve at {}{}: `{}` is served there",
                        binding.addr,
                        if binding.prefix == "/" {
                            ""
                        } else {
                            &binding.prefix
                        },
                        other.served.name
                    ));
                }
                routes.insert(binding.prefix.clone(), Route { served, id });
                return Ok(Registration {
                    key: binding.addr,
                    prefix: binding.prefix.clone(),
                    id,
                    local: listener.local,
                });
            }
            match bind(binding.addr) {
                Ok(socket) => {
                    let local = socket.local_addr().unwrap_or(binding.addr);
                    let routes: Routes = Arc::default();
                    write(&routes).insert(binding.prefix.clone(), Route { served, id });
                    let (shutdown, stop) = watch::channel(false);
                    tokio::spawn(accept(socket, routes.clone(), stop));
                    all.insert(
                        binding.addr,
                        Listener {
                            routes,
                            shutdown,
                            local,
                        },
                    );
                    tracing::info!(addr = %local, "HTTP listener open");
                    return Ok(Registration {
                        key: binding.addr,
                        prefix: binding.prefix.clone(),
                        id,
                        local,
                    });
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {}
                Err(e) => return Err(format!("cannot listen on {}: {e}", binding.addr)),
            }
        }
        tokio::time::sleep(BIND_RETRY_INTERVAL).await;
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    // std sets SO_REUSEADDR, so a port whose last connections linger in
    // TIME_WAIT can be listened on again at once.
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket)
}

async fn accept(socket: tokio::net::TcpListener, routes: Routes, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let routes = routes.clone();
                    let stop = stop.clone();
                    hand_over(stream, move |stream| async move {
                        connection(stream, routes, stop).await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot accept an HTTP connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = stopped(&mut stop) => return,
        }
    }
}

/// Starts serving an accepted connection on the next serving thread
/// (see [`super::threads`]), or here if there is none.
fn hand_over<F, Fut>(stream: tokio::net::TcpStream, serve: F)
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(thread) = super::threads::next() else {
        tokio::spawn(serve(stream));
        return;
    };
    // The socket moves to the other thread's poller.
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "cannot hand an HTTP connection over");
            return;
        }
    };
    thread.spawn(async move {
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => serve(stream).await,
            Err(error) => tracing::warn!(%error, "cannot take an HTTP connection over"),
        }
    });
}

async fn connection(
    stream: tokio::net::TcpStream,
    routes: Routes,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req| {
        let routes = routes.clone();
        async move { Ok::<_, Infallible>(route(&routes, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopped(&mut stop) => {
            // The listener is closing: finish the request under way, then
            // close instead of keeping the connection alive.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_WAIT, conn).await;
        }
    }
}

async fn route(routes: &Routes, req: Request<Incoming>) -> Response<HyperOutgoingBody> {
    let path = req.uri().path().to_owned();
    let found = {
        let routes = read(routes);
        longest_match(routes.keys().map(String::as_str), &path)
            .and_then(|(prefix, info)| Some((routes.get(prefix)?.served.clone(), info)))
    };
    match found {
        Some((served, info)) => served.handle(req, info).await,
        None => plain(StatusCode::NOT_FOUND, "no service is bound to this path"),
    }
}

/// The longest prefix that covers `path`, and the rest of the path after it.
fn longest_match<'a>(
    prefixes: impl Iterator<Item = &'a str>,
    path: &str,
) -> Option<(&'a str, String)> {
    prefixes
        .filter_map(|prefix| path_info(prefix, path).map(|info| (prefix, info)))
        .max_by_key(|(prefix, _)| prefix.len())
}

/// The part of `path` after `prefix`, if the prefix covers it: whole
/// segments only (`/hello` covers `/hello` and `/hello/x`, not `/hellox`).
fn path_info(prefix: &str, path: &str) -> Option<String> {
    if prefix == "/" {
        return Some(path.to_owned());
    }
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/".to_owned())
    } else if rest.starts_with('/') {
        Some(rest.to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_whole_segment_prefix_wins() {
        let prefixes = ["/", "/hello", "/hello/admin"];
        let m = |path| longest_match(prefixes.iter().copied(), path);
        assert_eq!(m("/hello"), Some(("/hello", "/".to_owned())));
        assert_eq!(m("/hello/x/y"), Some(("/hello", "/x/y".to_owned())));
        assert_eq!(m("/hello/admin/z"), Some(("/hello/admin", "/z".to_owned())));
        assert_eq!(m("/hellox"), Some(("/", "/hellox".to_owned())));
        let only = ["/hello"];
        assert_eq!(longest_match(only.iter().copied(), "/other"), None);
        assert_eq!(longest_match(only.iter().copied(), "/hellox"), None);
    }
}
