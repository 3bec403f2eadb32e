//! One request: a fresh store and instance, the guest's handler called, its
//! response streamed back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::http::{HeaderValue, Request, Response};
use kelp_core::{ByteSize, ExitReason};
use wasmtime::Store;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use crate::limits::{MemoryMeter, ServiceLimiter};
use crate::logs::{LogBuffer, Stream};
use crate::net::NetRun;
use crate::store::{ProxyState, exit_reason, time_slice};

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

/// Header naming the part of the path after the binding's prefix.
pub(crate) const PATH_INFO: &str = "kelp-path-info";
/// Header naming the binding's prefix.
pub(crate) const BASE_PATH: &str = "kelp-base-path";

/// One service as its listener serves it.
pub(crate) struct Served {
    pub(crate) name: String,
    pub(crate) engine: wasmtime::Engine,
    pub(crate) pre: ProxyPre<ProxyState>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) memory_limit: ByteSize,
    pub(crate) logs: Arc<LogBuffer>,
    /// One permit per request under way, [`MAX_CONCURRENT_REQUESTS`] in all.
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
    /// Becomes true when the service stops for good: instances still running
    /// are dropped.
    pub(crate) cancelled: tokio::sync::watch::Receiver<bool>,
    pub(crate) prefix: String,
    /// The service's network rights; each instance gets its own lookups.
    pub(crate) net: NetRun,
}

/// How one instance's work ended.
enum Outcome {
    Done,
    Failed(ExitReason),
    TimedOut,
    Cancelled,
}

/// A response made by the host, not the guest.
pub(crate) fn plain(status: StatusCode, text: &str) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(format!("{text}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Served {
    fn note(&self, text: &str) {
        self.logs
            .write(Stream::Stderr, format!("kelp: {text}\n").as_bytes());
    }

    /// Answers one request with a fresh instance.
    pub(crate) async fn handle(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        path_info: String,
    ) -> Response<HyperOutgoingBody> {
        let what = format!("{} {}", req.method(), req.uri().path());
        let permit = match tokio::time::timeout(QUEUE_WAIT, self.permits.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => permit,
            // Closed: the service is stopping.
            Ok(Err(_)) => return plain(StatusCode::SERVICE_UNAVAILABLE, "service is stopping"),
            Err(_) => {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "service is busy: {MAX_CONCURRENT_REQUESTS} requests are under way; try again"
                    ),
                );
            }
        };
        if *self.cancelled.borrow() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "service is stopping");
        }
        let too_long = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > MAX_REQUEST_BODY);
        if too_long {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is larger than {MAX_REQUEST_BODY} bytes"),
            );
        }
        // The client's own values of these would lie to the guest.
        let headers = req.headers_mut();
        headers.remove(PATH_INFO);
        headers.remove(BASE_PATH);
        if let (Ok(info), Ok(base)) = (
            HeaderValue::from_str(&path_info),
            HeaderValue::from_str(&self.prefix),
        ) {
            headers.insert(PATH_INFO, info);
            headers.insert(BASE_PATH, base);
        }
        let req = req.map(|body| {
            Limited::new(
                body,
                usize::try_from(MAX_REQUEST_BODY).unwrap_or(usize::MAX),
            )
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => wasmtime_wasi_http::Error::from(*e),
                Err(_) => wasmtime_wasi_http::Error::HttpRequestBodySize(Some(MAX_REQUEST_BODY)),
            })
        });

        let (limiter, meter) = limiter(self.memory_limit);
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(std::slice::from_ref(&self.name))
            .envs(&self.env)
            .stdout(self.logs.stream(Stream::Stdout))
            .stderr(self.logs.stream(Stream::Stderr));
        let net = self.net.instance();
        net.configure(&mut wasi);
        let mut store = Store::new(
            &self.engine,
            ProxyState {
                wasi: wasi.build(),
                http: WasiHttpCtx::new(),
                table: crate::limits::resource_table(),
                limiter,
                net,
            },
        );
        store.limiter(|s| &mut s.limiter);
        time_slice(&mut store);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let resources = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .and_then(|req| {
                let out = store.data_mut().http().new_response_outparam(sender)?;
                Ok((req, out))
            });
        let (guest_req, out) = match resources {
            Ok(r) => r,
            Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
        };

        // The instance runs in a task of its own: it may go on writing the
        // response body after handing over status and headers.
        let this = self.clone();
        let pre = self.pre.clone();
        let mut cancelled = self.cancelled.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, guest_req, out)
                    .await
            };
            let outcome = tokio::select! {
                result = tokio::time::timeout(REQUEST_TIMEOUT, run) => match result {
                    Ok(Ok(())) => Outcome::Done,
                    Ok(Err(e)) => {
                        if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
                            Outcome::Failed(ExitReason::StartFailed { message: e.to_string() })
                        } else {
                            Outcome::Failed(exit_reason(&e, this.memory_limit, meter.exceeded()))
                        }
                    }
                    Err(_) => Outcome::TimedOut,
                },
                () = stopped(&mut cancelled) => Outcome::Cancelled,
            };
            drop(store);
            this.logs.flush();
            match &outcome {
                Outcome::Done | Outcome::Cancelled => {}
                Outcome::Failed(reason) => this.note(&format!("request `{what}` {reason}")),
                Outcome::TimedOut => this.note(&format!(
                    "request `{what}` took longer than {}s and was cut off",
                    REQUEST_TIMEOUT.as_secs()
                )),
            }
            outcome
        });

        match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                self.note(&format!("the handler answered an error: {code:?}"));
                plain(StatusCode::INTERNAL_SERVER_ERROR, "the service failed")
            }
            // The store is gone without a response: the task says why.
            Err(_) => match task.await {
                Ok(Outcome::TimedOut) => plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the service did not answer in time",
                ),
                Ok(Outcome::Cancelled) => {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "service is stopping")
                }
                Ok(Outcome::Failed(ExitReason::StartFailed { .. })) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no instance could be started; try again",
                ),
                Ok(Outcome::Failed(_)) => {
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "the service failed")
                }
                Ok(Outcome::Done) => {
                    self.note("the handler returned without a response");
                    plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the service gave no response",
                    )
                }
                Err(e) => {
                    tracing::error!(service = %self.name, error = %e, "request task failed");
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "the service failed")
                }
            },
        }
    }
}

/// The memory limit every request's instance gets.
fn limiter(limit: ByteSize) -> (ServiceLimiter, Arc<MemoryMeter>) {
    let meter = Arc::new(MemoryMeter::default());
    (ServiceLimiter::new(limit, meter.clone()), meter)
}

/// Returns once `flag` is true (or its sender is gone).
pub(crate) async fn stopped(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}
