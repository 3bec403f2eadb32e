//! `kelp:service/lifecycle`: how a running service learns that it is asked
//! to stop, without reading stdin. Shaped like the hostcalls (wasmtime's
//! `wasi-config` is the model): private bindings, a borrowed view, and
//! [`add_to_linker`] with the view's getter.

use std::time::Duration;

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, subscribe};

use crate::logs::StopSignal;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "kelp:service/service",
        imports: {
            "kelp:service/lifecycle.sleep": async | trappable,
            default: trappable,
        },
        with: {
            "wasi:io/poll": wasmtime_wasi::p2::bindings::io::poll,
        },
    });
}

use bindings::kelp::service::lifecycle;

/// What the interface works on: the run's stop signal, and the resource
/// table its pollables go in.
pub(crate) struct LifecycleCtxView<'a> {
    pub(crate) stop: &'a StopSignal,
    pub(crate) table: &'a mut ResourceTable,
}

/// Store data that offers `kelp:service/lifecycle`.
pub(crate) trait LifecycleView {
    fn lifecycle(&mut self) -> LifecycleCtxView<'_>;
}

struct HasLifecycle;

impl HasData for HasLifecycle {
    type Data<'a> = LifecycleCtxView<'a>;
}

/// Adds `kelp:service/lifecycle` to a linker that already has WASI 0.2,
/// whose `wasi:io` pollables it hands out.
pub(crate) fn add_to_linker<T: LifecycleView + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    lifecycle::add_to_linker::<T, HasLifecycle>(linker, |t| t.lifecycle())
}

impl lifecycle::Host for LifecycleCtxView<'_> {
    fn stop_requested(&mut self) -> wasmtime::Result<bool> {
        Ok(self.stop.stopping())
    }

    fn subscribe_stop(&mut self) -> wasmtime::Result<wasmtime::component::Resource<DynPollable>> {
        let signal = self.table.push(self.stop.clone())?;
        subscribe(self.table, signal)
    }

    async fn sleep(&mut self, nanoseconds: u64) -> wasmtime::Result<bool> {
        let mut stop = self.stop.clone();
        let asked = tokio::select! {
            () = tokio::time::sleep(Duration::from_nanos(nanoseconds)) => false,
            () = wasmtime_wasi::p2::Pollable::ready(&mut stop) => true,
        };
        Ok(asked || self.stop.stopping())
    }
}
