//! One run of a service: a fresh store and instance, from start to exit.

use std::path::Path;
use std::sync::Arc;

use kelp_core::{ByteSize, ExitReason, Grants};
use kelp_hostcalls::Hardware;
use wasmtime::component::ResourceTableError;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::limits::{MemoryLimitExceeded, MemoryMeter, ServiceLimiter};
use crate::logs::{LogBuffer, StopSignal, Stream};
use crate::program::{ComponentState, ModuleState, Pre, Program};

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
    pub(crate) stdin: StopSignal,
}

/// Runs `program` once, to its end, and says why it ended. Dropping the
/// future cancels the guest wherever it is.
pub(crate) async fn run(
    engine: &wasmtime::Engine,
    program: &Program,
    io: InstanceIo<'_>,
) -> ExitReason {
    let mut wasi = WasiCtxBuilder::new();
    let mut argv = Vec::with_capacity(io.args.len() + 1);
    argv.push(io.name.to_owned());
    argv.extend(io.args.iter().cloned());
    wasi.args(&argv)
        .envs(io.env)
        .stdin(io.stdin.clone())
        .stdout(io.logs.stream(Stream::Stdout))
        .stderr(io.logs.stream(Stream::Stderr));
    if let Some(dir) = io.data_dir {
        // cap-std resolves every guest path beneath this directory: `..`,
        // absolute paths and symlinks that lead out all fail with EPERM/ENOENT.
        if let Err(e) = wasi.preopened_dir(dir, "/data", FsPerms::ReadWrite) {
            return ExitReason::StartFailed {
                message: format!("cannot open data directory `{}`: {e}", dir.display()),
            };
        }
    }
    let limiter = ServiceLimiter::new(io.memory_limit, io.meter.clone());
    let result = match &program.pre {
        Pre::Component(pre) => {
            let grants = io
                .grants
                .or(program.manifest().map(|m| &m.grants))
                .cloned()
                .unwrap_or_default();
            let mut hardware = io.hardware.service(io.name, &grants);
            for notice in hardware.notices() {
                io.logs
                    .write(Stream::Stderr, format!("kelp: {notice}\n").as_bytes());
            }
            let net = crate::net::NetRun::new(
                &grants.network,
                io.hardware.map().network_allow.as_deref(),
                io.logs.clone(),
            );
            for notice in net.notices() {
                io.logs
                    .write(Stream::Stderr, format!("kelp: {notice}\n").as_bytes());
            }
            net.configure(&mut wasi);
            let logs = io.logs.clone();
            hardware.set_notify(Arc::new(move |note: &str| {
                logs.write(Stream::Stderr, format!("kelp: {note}\n").as_bytes());
            }));
            let state = ComponentState {
                ctx: wasi.build(),
                table: crate::limits::resource_table(),
                limiter,
                hardware,
                net,
                http: crate::net::HttpState::new(),
            };
            let mut store = Store::new(engine, state);
            store.limiter(|s| &mut s.limiter);
            time_slice(&mut store);
            match pre.instantiate_async(&mut store).await {
                Ok(command) => match command.wasi_cli_run().call_run(&mut store).await {
                    Ok(Ok(())) => Ok(0),
                    Ok(Err(())) => Ok(1),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
        Pre::Proxy(pre) => {
            let manifest_grants = program.manifest().map(|m| &m.grants);
            return crate::http::serve(engine, pre, manifest_grants, io).await;
        }
        Pre::Module(pre) => {
            let state = ModuleState {
                ctx: wasi.build_p1(),
                limiter,
            };
            let mut store = Store::new(engine, state);
            store.limiter(|s| &mut s.limiter);
            time_slice(&mut store);
            match pre.instantiate_async(&mut store).await {
                Ok(instance) => match instance.get_typed_func::<(), ()>(&mut store, "_start") {
                    Ok(start) => start.call_async(&mut store, ()).await.map(|()| 0),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
    };
    let over_limit = io.meter.exceeded();
    io.meter.reset();
    match result {
        Ok(code) => ExitReason::Exited { code },
        Err(e) => exit_reason(&e, io.memory_limit, over_limit),
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
