//! The wasmtime engine as a device needs it: epoch-based time slicing, the
//! pooling allocator where the address space allows it, and a capped
//! on-demand allocator everywhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kelp_core::ByteSize;
use serde::{Deserialize, Serialize};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How long a guest runs before it must yield to the others. Short enough that
/// a busy service delays a starting one by at most this much, long enough that
/// the tick thread costs nothing measurable.
pub const DEFAULT_TIMESLICE: Duration = Duration::from_millis(10);

/// Instances the pooling allocator reserves room for unless told otherwise.
/// A service takes one slot; a thousand is more than any one board runs, and
/// costs only address space.
pub const DEFAULT_POOL_SLOTS: u32 = 1_000;

/// The largest linear memory limit a service may ask for. In the pooling
/// allocator it is also the size of each memory slot, so it multiplies into
/// the address space reserved up front.
pub const DEFAULT_MAX_SERVICE_MEMORY: ByteSize = ByteSize::mib(256);

/// Core instances in one component. A Rust `wasm32-wasip2` program is made of
/// a handful (its own module, the preview 1 adapter, shims); this leaves room.
const CORE_INSTANCES_PER_SERVICE: u32 = 8;

/// Linear memories in one service: its own, and one for the adapter.
const MEMORIES_PER_SERVICE: u32 = 2;

/// Tables in one service (function tables of its core modules).
const TABLES_PER_SERVICE: u32 = 4;

/// Guard region after each linear memory. With memories capped well below
/// 4 GiB, bounds are checked explicitly, so a small guard is enough.
const MEMORY_GUARD: u64 = 64 << 10;

/// Bytes at the start of each pooled table zeroed with `memset` when an
/// instance is dropped, rather than handed back to the kernel with
/// `madvise`. Services that answer HTTP drop an instance per request; the
/// system call and the page faults when the slot is next used cost more
/// than clearing a few KiB in place.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Pages of a freed linear memory the guest wrote, up to this many bytes,
/// reset in place (zeroed, or copied back from the module's initial image)
/// and kept mapped, rather than handed back to the kernel. The kernel finds
/// the written pages (`PAGEMAP_SCAN`, Linux 6.7 and later; older kernels
/// fall back to `madvise`). A request's instance writes tens of pages
/// (stack, statics, heap); without this, each of them is a page fault on
/// the next request, and every fault and `madvise` flushes the TLBs of the
/// other cores. Measured with `benches/http.rs`: 17,000 requests/s
/// without, 30,600 with, on the same two cores. A freed slot holds at most
/// this much memory until it is used again.
const LINEAR_MEMORY_KEEP_RESIDENT: usize = 256 << 10;

/// Freed memory slots handed back to the kernel together: one flush of
/// other cores' TLBs per batch instead of one per slot.
const DECOMMIT_BATCH: usize = 16;

/// On the on-demand allocator, address space reserved beyond a memory's
/// current size so that most `memory.grow` calls need no copy.
const ON_DEMAND_GROWTH_RESERVATION: u64 = 16 << 20;

/// Which instance allocator the engine uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocatorChoice {
    /// Pooling if the address space can hold the pool, on-demand otherwise.
    #[default]
    Auto,
    Pooling,
    OnDemand,
}

impl std::str::FromStr for AllocatorChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AllocatorChoice::Auto),
            "pooling" => Ok(AllocatorChoice::Pooling),
            "on-demand" => Ok(AllocatorChoice::OnDemand),
            _ => Err(format!(
                "allocator `{s}` is not one of `auto`, `pooling`, `on-demand`"
            )),
        }
    }
}

/// The allocator an engine ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocator {
    Pooling,
    OnDemand,
}

impl std::fmt::Display for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Allocator::Pooling => "pooling",
            Allocator::OnDemand => "on-demand",
        })
    }
}

/// Settings for the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub allocator: AllocatorChoice,
    /// Services the pooling allocator makes room for.
    pub pool_slots: u32,
    /// Upper bound on any one service's memory limit.
    pub max_service_memory: ByteSize,
    pub timeslice: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            allocator: AllocatorChoice::Auto,
            pool_slots: DEFAULT_POOL_SLOTS,
            max_service_memory: DEFAULT_MAX_SERVICE_MEMORY,
            timeslice: DEFAULT_TIMESLICE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot create the pooling allocator ({slots} slots of {slot_size}): {error}")]
    Pooling {
        slots: u32,
        slot_size: ByteSize,
        error: wasmtime::Error,
    },
    #[error("cannot create the wasmtime engine: {0}")]
    Engine(wasmtime::Error),
    #[error("the pool needs at least one slot")]
    NoSlots,
}

/// A configured wasmtime engine plus the thread that ticks its epoch.
pub(crate) struct EngineHandle {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) allocator: Allocator,
    pub(crate) config: EngineConfig,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl EngineHandle {
    pub(crate) fn new(config: EngineConfig) -> Result<Self, EngineError> {
        if config.pool_slots == 0 {
            return Err(EngineError::NoSlots);
        }
        let (engine, allocator) = match config.allocator {
            AllocatorChoice::Pooling => (pooling_engine(&config)?, Allocator::Pooling),
            AllocatorChoice::OnDemand => (on_demand_engine(&config)?, Allocator::OnDemand),
            AllocatorChoice::Auto => match pooling_engine(&config) {
                Ok(engine) => (engine, Allocator::Pooling),
                Err(error) => {
                    // Expected on boards with a 39-bit address space or a
                    // ulimit on virtual memory: the pool does not fit.
                    tracing::info!(%error, "pooling allocator unavailable, using on-demand");
                    (on_demand_engine(&config)?, Allocator::OnDemand)
                }
            },
        };
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.weak(), config.timeslice, ticker_stop.clone());
        Ok(EngineHandle {
            engine,
            allocator,
            config,
            ticker_stop,
        })
    }
}

fn base_config(config: &EngineConfig) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.wasm_component_model(true);
    c.memory_guard_size(MEMORY_GUARD);
    c.memory_reservation_for_growth(ON_DEMAND_GROWTH_RESERVATION);
    // No memory a service may have is larger than this, so reserving more
    // address space per memory would only be wasted.
    c.memory_reservation(config.max_service_memory.bytes());
    c
}

fn pooling_engine(config: &EngineConfig) -> Result<wasmtime::Engine, EngineError> {
    let slots = config.pool_slots;
    let slot_size = config.max_service_memory;
    let err = |error| EngineError::Pooling {
        slots,
        slot_size,
        error,
    };
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SERVICE))
        .total_memories(slots.saturating_mul(MEMORIES_PER_SERVICE))
        .total_tables(slots.saturating_mul(TABLES_PER_SERVICE))
        .total_stacks(slots)
        .max_core_instances_per_component(CORE_INSTANCES_PER_SERVICE)
        .max_memories_per_component(MEMORIES_PER_SERVICE)
        .max_tables_per_component(TABLES_PER_SERVICE)
        .max_memory_size(usize::try_from(slot_size.bytes()).unwrap_or(usize::MAX))
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto)
        .decommit_batch_size(DECOMMIT_BATCH);
    let mut c = base_config(config);
    // The pool reserves every slot's address space here, at creation: if it
    // does not fit, this fails now rather than on some later start.
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    wasmtime::Engine::new(&c).map_err(err)
}

fn on_demand_engine(config: &EngineConfig) -> Result<wasmtime::Engine, EngineError> {
    let mut c = base_config(config);
    c.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    // Reserve little per memory and let growth move it: on a 39-bit board
    // thousands of 4 GiB reservations would not fit.
    c.memory_reservation(0);
    wasmtime::Engine::new(&c).map_err(EngineError::Engine)
}

fn spawn_ticker(engine: wasmtime::EngineWeak, timeslice: Duration, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("kelp-epoch".into())
        .spawn(move || {
            // Ticks on a fixed schedule rather than sleeping a timeslice after
            // each tick, so that sleep overshoot does not stretch every slice.
            let mut next = std::time::Instant::now() + timeslice;
            while !stop.load(Ordering::Relaxed) {
                let now = std::time::Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
                next += timeslice;
                if next < now {
                    // Fell far behind (a suspended board): start afresh.
                    next = now + timeslice;
                }
            }
        });
    if let Err(error) = spawned {
        // Without the ticker no guest is ever preempted; say so loudly, but a
        // device that cannot spawn one thread has bigger problems.
        tracing::error!(%error, "cannot start the epoch thread; services will not be time-sliced");
    }
}
