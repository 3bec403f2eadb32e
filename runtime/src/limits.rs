//! Per-service resource limits, enforced as the guest asks for more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kelp_core::ByteSize;

/// Elements any one table may hold. Function tables of real programs hold a
/// few thousand; this stops a guest from using tables as a way around its
/// memory limit.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Instances, tables and memories one service may create. A component made
/// by the Rust toolchain needs a handful of each.
const MAX_INSTANCES: usize = 32;
const MAX_TABLES: usize = 32;
const MAX_MEMORIES: usize = 8;

/// Resources (streams, sockets, HTTP requests and headers, pollables…) one
/// instance may hold at once. Each lives in kelpd's memory, outside the
/// guest's memory limit; a service holds tens to hundreds. Past it the
/// guest traps, and its exit reason says it held too many.
pub const MAX_RESOURCES: usize = 10_000;

/// Why an instance that reached [`MAX_RESOURCES`] ended.
pub(crate) fn too_many_resources() -> String {
    format!(
        "held more resources (streams, sockets, requests, pollables) at once than the {MAX_RESOURCES} allowed"
    )
}

/// An instance's resource table, bounded by [`MAX_RESOURCES`].
pub(crate) fn resource_table() -> wasmtime::component::ResourceTable {
    let mut table = wasmtime::component::ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

/// Memory accounting shared between a running instance and whoever asks for
/// the service's status.
#[derive(Debug, Default)]
pub(crate) struct MemoryMeter {
    in_use: AtomicU64,
    exceeded: AtomicBool,
}

impl MemoryMeter {
    pub(crate) fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }

    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    pub(crate) fn reset(&self) {
        self.in_use.store(0, Ordering::Relaxed);
        self.exceeded.store(false, Ordering::Relaxed);
    }
}

/// Error a guest's `memory.grow` turns into when it would pass the limit; it
/// traps the guest, and the supervisor reports the limit as the reason.
#[derive(Debug, thiserror::Error)]
#[error("memory limit {0} exceeded")]
pub(crate) struct MemoryLimitExceeded(pub(crate) ByteSize);

pub(crate) struct ServiceLimiter {
    limit: ByteSize,
    meter: Arc<MemoryMeter>,
}

impl ServiceLimiter {
    pub(crate) fn new(limit: ByteSize, meter: Arc<MemoryMeter>) -> Self {
        meter.reset();
        ServiceLimiter { limit, meter }
    }
}

impl wasmtime::ResourceLimiter for ServiceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let others = self.meter.in_use().saturating_sub(current as u64);
        let total = others.saturating_add(desired as u64);
        if total > self.limit.bytes() {
            self.meter.exceeded.store(true, Ordering::Relaxed);
            // An error rather than `Ok(false)`: allocators in guest languages
            // tend to abort on a failed grow with a message that hides the
            // cause. Trapping here names it.
            return Err(MemoryLimitExceeded(self.limit).into());
        }
        self.meter.in_use.store(total, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn counts_every_memory_and_refuses_past_the_limit() {
        let meter = Arc::new(MemoryMeter::default());
        let mut l = ServiceLimiter::new(ByteSize::mib(4), meter.clone());
        assert!(l.memory_growing(0, 2 << 20, None).unwrap());
        assert!(l.memory_growing(0, 1 << 20, None).unwrap());
        assert_eq!(meter.in_use(), 3 << 20);
        let err = l.memory_growing(1 << 20, 3 << 20, None).unwrap_err();
        assert_eq!(err.to_string(), "memory limit 4 MiB exceeded");
        assert!(meter.exceeded());
        assert_eq!(meter.in_use(), 3 << 20);
    }
}
