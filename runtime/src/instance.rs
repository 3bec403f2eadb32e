//! One run of a service: a fresh store and instance, from start to exit.

use std::sync::Arc;

use kelp_core::ExitReason;
use wasmtime::Store;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::limits::ServiceLimiter;
use crate::logs::Stream;
use crate::program::{Pre, Program};
use crate::store::{ComponentState, InstanceIo, ModuleState, exit_reason, time_slice};

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
        .stdin(io.stop.clone())
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
                http: wasmtime_wasi_http::WasiHttpCtx::new(),
                stop: io.stop.clone(),
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
            return crate::serve::serve(engine, pre, manifest_grants, io).await;
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
