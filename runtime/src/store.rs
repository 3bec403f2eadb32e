//! What one instance of a service holds: the store data of a command
//! component, a core module and a request's HTTP handler, every view the
//! host interfaces borrow from them, and the linkers they are prepared
//! with. Capabilities (`net`, the hostcalls, the stop signal) each know only
//! their own view; this is the one place that knows them all.

use std::path::Path;
use std::sync::Arc;

use kelp_core::{ByteSize, ExitReason, Grants};
use kelp_hostcalls::{Hardware, HardwareCtx, HardwareCtxView, HardwareView};
use wasmtime::component::{Linker as ComponentLinker, ResourceTable, ResourceTableError};
use wasmtime::{Linker, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::limits::{MemoryLimitExceeded, MemoryMeter, ServiceLimiter};
use crate::logs::{LogBuffer, StopSignal};
use crate::net::{NetRun, NetView};

/// What one run of a service gets from the host.
pub(crate) struct InstanceIo<'a> {
    pub(crate) name: &'a str,
    pub(crate) hardware: &'a Arc<Hardware>,
    /// Grants instead of the manifest's.
    pub(crate) grants: Option<&'a Grants>,
    pub(crate) args: &'a [String],
    pub(crate) env: &'a [(String, String)],
    pub(crate) data_dir: Option<&'a Path>,
    pub(crate) memory_limit: ByteSize,
    pub(crate) logs: &'a Arc<LogBuffer>,
    pub(crate) meter: &'a Arc<MemoryMeter>,
    /// Becomes ready when the service is asked to stop: its stdin closes,
    /// and `kelp:service/lifecycle` tells it.
    pub(crate) stop: StopSignal,
}

/// Store data of a component instance run as a command.
pub(crate) struct ComponentState {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: ServiceLimiter,
    pub(crate) hardware: HardwareCtx,
    pub(crate) net: NetRun,
    pub(crate) http: WasiHttpCtx,
    pub(crate) stop: StopSignal,
}

impl HardwareView for ComponentState {
    fn hardware(&mut self) -> HardwareCtxView<'_> {
        HardwareCtxView {
            ctx: &mut self.hardware,
            table: &mut self.table,
        }
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl NetView for ComponentState {
    fn net(&self) -> &NetRun {
        &self.net
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.net,
        }
    }
}

impl crate::lifecycle::LifecycleView for ComponentState {
    fn lifecycle(&mut self) -> crate::lifecycle::LifecycleCtxView<'_> {
        crate::lifecycle::LifecycleCtxView {
            stop: &self.stop,
            table: &mut self.table,
        }
    }
}

/// Store data of a WASI preview 1 core module instance.
pub(crate) struct ModuleState {
    pub(crate) ctx: WasiP1Ctx,
    pub(crate) limiter: ServiceLimiter,
}

/// Store data of one request's instance, for a component that answers
/// HTTP.
pub(crate) struct ProxyState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: ServiceLimiter,
    /// The service's network grants, with this instance's lookups: its
    /// sockets and outgoing requests go where a command's would.
    pub(crate) net: NetRun,
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

impl NetView for ProxyState {
    fn net(&self) -> &NetRun {
        &self.net
    }
}

/// The linkers programs are prepared with, one per kind of store.
pub(crate) struct Linkers {
    /// Commands: WASI 0.2 (sockets and name lookups checked against the
    /// grants), outgoing `wasi:http`, the hardware interfaces and
    /// `kelp:service/lifecycle`.
    pub(crate) component: ComponentLinker<ComponentState>,
    /// Handlers of HTTP requests: WASI 0.2 (name lookups checked against
    /// the grants) and `wasi:http`. Hardware interfaces are not offered: a
    /// request's instance lives for one request, and GPIO lines and buses
    /// are held by one holder at a time. Nor is the stop signal: the host
    /// stops sending requests, and drains those under way.
    pub(crate) proxy: ComponentLinker<ProxyState>,
    /// WASI preview 1 core modules.
    pub(crate) module: Linker<ModuleState>,
}

impl Linkers {
    pub(crate) fn new(engine: &wasmtime::Engine) -> wasmtime::Result<Self> {
        let mut component = ComponentLinker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component)?;
        crate::net::add_to_linker(&mut component)?;
        kelp_hostcalls::add_to_linker(&mut component)?;
        crate::lifecycle::add_to_linker(&mut component)?;

        let mut proxy = ComponentLinker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut proxy)?;
        crate::net::add_to_linker(&mut proxy)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut proxy)?;

        let mut module = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module, |s: &mut ModuleState| &mut s.ctx)?;
        Ok(Linkers {
            component,
            proxy,
            module,
        })
    }
}

/// Every instance yields to the executor once per epoch tick. The first
/// deadline must be set too, or a new store starts with a deadline of zero and
/// waits a whole timeslice before running at all.
///
/// The yield is tokio's own: the guest's task is put back only after the
/// worker has polled its I/O and timer driver and run the tasks that woke,
/// where a plain wake-up would put it straight back in the queue, in front of
/// sockets and timers that are ready. A busy guest thus delays the rest by
/// one timeslice, and the executor keeps tokio's default intervals.
pub(crate) fn time_slice<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| {
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
}

/// Why an instance's run ended in an error, as the service's status says.
pub(crate) fn exit_reason(e: &wasmtime::Error, limit: ByteSize, over_limit: bool) -> ExitReason {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return ExitReason::Exited { code: exit.0 };
    }
    // A guest whose grow was refused may also die of the refusal in its own
    // way (an allocator's abort); the limit is still the reason.
    if over_limit || e.downcast_ref::<MemoryLimitExceeded>().is_some() {
        return ExitReason::MemoryLimit { limit };
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return ExitReason::Trapped {
            message: trap.to_string(),
        };
    }
    if let Some(ResourceTableError::Full) = e.downcast_ref::<ResourceTableError>() {
        return ExitReason::Trapped {
            message: crate::limits::too_many_resources(),
        };
    }
    ExitReason::Trapped {
        message: e
            .chain()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(": "),
    }
}
