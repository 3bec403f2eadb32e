//! http-hello's instance alone: what kelpd does for every request, without
//! the HTTP connection around it, timed step by step.
//!
//! The engine is kelpd's (a [`kelp_runtime::Runtime`] with its default
//! settings: the pooling allocator, its memory resets and epoch
//! interruption); the linker offers WASI and `wasi:http` as kelpd's does.
//! The store leaves out what kelpd adds to it (the memory limiter, the
//! network grants, the log streams, the service's environment), so this is
//! the instance's cost without them. Requests run one after another on a
//! current-thread executor, as on one of kelpd's serving threads.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The average time of each step, per request.
pub struct Cycle {
    /// A store made and the request handed to it.
    pub setup: Duration,
    pub instantiate: Duration,
    /// The guest's handler, from its call to its return.
    pub handler: Duration,
    /// The store dropped: the instance's memory, tables and stack reset and
    /// given back to the pool.
    pub free: Duration,
}

impl Cycle {
    /// Instantiation, handler and free: the instance's own cost.
    pub fn total(&self) -> Duration {
        self.instantiate + self.handler + self.free
    }
}

struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

/// Runs `requests` requests untimed, then `requests` timed, each checked
/// against http-hello's page.
pub fn measure(requests: u32) -> Cycle {
    let runtime = kelp_runtime::Runtime::new(Default::default()).unwrap();
    let engine = runtime.engine().clone();
    let wasm = std::fs::read(kelp_tests::artifacts::HTTP_HELLO).unwrap();
    let component = Component::new(&engine, wasm).unwrap();
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    let pre = ProxyPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let expected = super::page(super::PATH);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut sum = [Duration::ZERO; 4];
            for i in 0..2 * requests {
                let steps = one(&engine, &pre, &expected).await;
                if i >= requests {
                    for (total, step) in sum.iter_mut().zip(steps) {
                        *total += step;
                    }
                }
            }
            let [setup, instantiate, handler, free] = sum.map(|d| d / requests);
            Cycle {
                setup,
                instantiate,
                handler,
                free,
            }
        })
}

/// One request: its steps' times, in [`Cycle`]'s order.
async fn one(engine: &wasmtime::Engine, pre: &ProxyPre<State>, expected: &str) -> [Duration; 4] {
    let t0 = Instant::now();
    let mut store = Store::new(
        engine,
        State {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        },
    );
    store.epoch_deadline_async_yield_and_update(1);
    let request = hyper::Request::get(format!("http://127.0.0.1{}", super::PATH))
        .body(
            Empty::<Bytes>::new().map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
        )
        .unwrap();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let request = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .unwrap();
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .unwrap();
    let t1 = Instant::now();
    let proxy = pre.instantiate_async(&mut store).await.unwrap();
    let t2 = Instant::now();
    proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut store, request, out)
        .await
        .unwrap();
    let t3 = Instant::now();
    drop(store);
    let t4 = Instant::now();
    let response = receiver.await.unwrap().unwrap();
    assert_eq!(response.status(), hyper::StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, expected.as_bytes());
    [t1 - t0, t2 - t1, t3 - t2, t4 - t3]
}
