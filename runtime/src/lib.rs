//! The Kelp device runtime: runs signed WebAssembly services side by side in
//! one process, each in its own sandbox, with a memory cap, a share of the
//! CPU, a restart policy and a bounded log buffer.
//!
//! A [`Runtime`] owns the wasmtime engine and the compile cache; a
//! [`Supervisor`] runs a set of services on it. The `kelpd` binary wraps them
//! for a device; `kelp run` uses the same pieces for one service.
//!
//! ```no_run
//! use kelp_runtime::{Runtime, RuntimeConfig, ServiceSpec, Supervisor};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let supervisor = Supervisor::new(runtime);
//! let hello = supervisor.start(ServiceSpec::new("hello", "hello.wasm"))?;
//! let status = hello.wait_for(|s| s.last_exit.is_some()).await;
//! println!("{}: {:?}", status.name, status.last_exit);
//! # Ok(()) }
//! ```

mod cache;
pub mod device;
mod engine;
mod instance;
mod lifecycle;
mod limits;
mod logs;
mod net;
mod program;
mod serve;
mod service;
mod store;
mod supervisor;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cache::CacheError;
pub use engine::{
    Allocator, AllocatorChoice, DEFAULT_MAX_SERVICE_MEMORY, DEFAULT_POOL_SLOTS, DEFAULT_TIMESLICE,
    EngineConfig, EngineError,
};
pub use limits::MAX_RESOURCES;
pub use logs::{LogBuffer, LogEvent, LogLine, MAX_BUFFERED_BYTES, MAX_LINE_BYTES, Stream};
pub use net::{
    DEFAULT_BETWEEN_BYTES_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT,
    MAX_HTTP_CONNECTIONS, MAX_NOTED_REFUSALS, MAX_OPEN_LOOKUPS, MAX_RESOLVED_ADDRESSES,
    MAX_SOCKETS,
};
pub use program::{LoadError, LoadStats, MAX_MODULE_SIZE, Program, ProgramKind, read_module};
pub use serve::{
    DRAIN_WAIT, MAX_CONCURRENT_REQUESTS, MAX_REQUEST_BODY, QUEUE_WAIT, REQUEST_TIMEOUT,
};
pub use service::{Backoff, DEFAULT_MEMORY_LIMIT, DEFAULT_STOP_GRACE, ServiceHandle, ServiceSpec};
pub use supervisor::{ApplyReport, OnStart, Supervisor, SupervisorError};

/// Threads the executor may start for blocking work (reading modules,
/// compiling). Services start in bursts — every service at boot — and each
/// extra thread costs a stack and, with glibc, a malloc arena; a handful is
/// enough to keep both cores busy.
pub const MAX_BLOCKING_THREADS: usize = 4;

/// A tokio runtime builder set up for running guests: `threads` workers (one
/// per core if `None`), or the current thread for `Some(0)`.
///
/// Tokio's scheduling intervals are left as they are: a guest gives up its
/// worker at the end of each timeslice with a yield that tokio defers until
/// it has polled its I/O and timer driver and run what that woke, so a busy
/// guest holds sockets and timers up for one timeslice at most, and the
/// executor need not poll its driver more often for everything else.
pub fn executor(threads: Option<usize>) -> tokio::runtime::Builder {
    let mut builder = match threads {
        Some(0) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS);
    builder
}

/// Settings for a [`Runtime`].
#[derive(Clone, Debug, Default)]
pub struct RuntimeConfig {
    pub engine: EngineConfig,
    /// Where compiled code is kept between runs; `None` compiles every time
    /// the process starts.
    pub cache_dir: Option<PathBuf>,
    /// Publisher keys this device trusts. When any are given, a module runs
    /// only if one of them signed it (and its signed manifest agrees with the
    /// file's kind); when none are, signatures are not checked.
    pub trusted_keys: Vec<kelp_core::PublicKey>,
    /// The hardware services may be granted; `None` grants none.
    pub hardware: Option<Arc<kelp_hostcalls::Hardware>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot set up WASI for services: {0}")]
    Linker(wasmtime::Error),
}

/// The engine, the compile cache and the programs loaded so far. Cheap to
/// clone; clones share everything.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: engine::EngineHandle,
    loader: Arc<program::Loader>,
    hardware: Arc<kelp_hostcalls::Hardware>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = engine::EngineHandle::new(config.engine)?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(cache::CompileCache::open(dir, &engine.engine)?),
            None => None,
        };
        let loader = program::Loader::new(engine.engine.clone(), cache, config.trusted_keys)
            .map_err(RuntimeError::Linker)?;
        tracing::debug!(allocator = %engine.allocator, "engine ready");
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                loader: Arc::new(loader),
                hardware: config
                    .hardware
                    .unwrap_or_else(kelp_hostcalls::Hardware::none),
            }),
        })
    }

    /// The publisher keys this runtime trusts.
    pub fn trusted_keys(&self) -> &[kelp_core::PublicKey] {
        self.inner.loader.trusted_keys()
    }

    /// Which allocator the engine chose.
    pub fn allocator(&self) -> Allocator {
        self.inner.engine.allocator
    }

    /// The largest memory limit a service may have here.
    pub fn max_service_memory(&self) -> kelp_core::ByteSize {
        self.inner.engine.config.max_service_memory
    }

    /// The device's hardware.
    pub fn hardware(&self) -> &Arc<kelp_hostcalls::Hardware> {
        &self.inner.hardware
    }

    /// The engine services are compiled and run with: for embedding code
    /// that compiles or instantiates a component with kelpd's settings.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.inner.engine.engine
    }

    /// Loads a `.wasm` file: checks it, compiles it or takes it from the
    /// cache, and links it. Loading the same bytes again while the first
    /// program is alive costs a hash.
    pub async fn load_file(&self, path: &Path) -> Result<Arc<Program>, LoadError> {
        self.inner.loader.load_file(path).await
    }

    /// Like [`Runtime::load_file`], for bytes already in memory; `name` is
    /// what errors call them.
    pub async fn load_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<Arc<Program>, LoadError> {
        self.inner.loader.load_bytes(name, bytes).await
    }

    /// Removes from the compile cache the code of every module but those
    /// whose sha256 is in `keep`: for a device whose modules are gone from
    /// its disk. Returns how many modules' code went.
    pub fn keep_compiled(&self, keep: &[kelp_core::Digest]) -> usize {
        self.inner.loader.keep_compiled(keep)
    }

    pub fn load_stats(&self) -> LoadStats {
        self.inner.loader.stats()
    }

    /// Runs a loaded program once, outside any supervisor: no restarts, no
    /// stop. Its output goes to `invocation.logs`. A program that answers
    /// HTTP is served until the future is dropped.
    pub async fn run(&self, program: &Program, invocation: &Invocation) -> kelp_core::ExitReason {
        let meter = Arc::new(limits::MemoryMeter::default());
        let (_stop, stop) = logs::StopSignal::new();
        instance::run(
            self.engine(),
            program,
            store::InstanceIo {
                name: &invocation.name,
                hardware: self.hardware(),
                grants: invocation.grants.as_ref(),
                args: &invocation.args,
                env: &invocation.env,
                data_dir: invocation.data_dir.as_deref(),
                memory_limit: invocation.memory_limit,
                logs: &invocation.logs,
                meter: &meter,
                stop,
            },
        )
        .await
    }
}

/// One run of a program, for [`Runtime::run`].
#[derive(Clone)]
pub struct Invocation {
    pub name: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub data_dir: Option<PathBuf>,
    pub memory_limit: kelp_core::ByteSize,
    pub logs: Arc<LogBuffer>,
    /// Hardware grants instead of the manifest's (see
    /// [`ServiceSpec::grants`]).
    pub grants: Option<kelp_core::Grants>,
}

impl Invocation {
    pub fn new(name: impl Into<String>) -> Self {
        Invocation {
            name: name.into(),
            args: Vec::new(),
            env: Vec::new(),
            data_dir: None,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            logs: LogBuffer::new(),
            grants: None,
        }
    }
}
