//! The threads HTTP connections are served on: one per core, each with an
//! executor of its own.
//!
//! A connection, with every request on it and every request's instance, stays
//! on the thread it was handed to; connections are dealt out in turn. On the
//! shared, work-stealing executor a request's steps (read, instantiate, answer,
//! free) were handed between its workers, with a cross-thread wake-up each
//! time. Here they run one after another on one thread, and each thread
//! polls its sockets when it has run out of work.
//!
//! The price: a guest that computes for a long time delays the other
//! connections on its thread, by one timeslice at a time (its instance yields
//! like any other), while they wait for it rather than move to the idle
//! thread.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;

struct Threads {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static THREADS: OnceLock<Threads> = OnceLock::new();

/// The executor of the thread the next connection goes to, or `None` if no
/// serving thread could be started (the caller serves on its own executor).
pub(super) fn next() -> Option<&'static Handle> {
    let threads = THREADS.get_or_init(start);
    if threads.handles.is_empty() {
        return None;
    }
    let i = threads.next.fetch_add(1, Ordering::Relaxed) % threads.handles.len();
    threads.handles.get(i)
}

fn start() -> Threads {
    let count = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        match spawn(i) {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                tracing::warn!(%error, "cannot start an HTTP serving thread");
                break;
            }
        }
    }
    Threads {
        handles,
        next: AtomicUsize::new(0),
    }
}

/// A thread that runs its executor for as long as the process lives.
fn spawn(i: usize) -> std::io::Result<Handle> {
    let runtime = crate::executor(Some(0)).build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("kelpd-http-{i}"))
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}
