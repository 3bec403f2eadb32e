//! Word that something a device's target state depends on has changed, for
//! the requests long-polling it.
//!
//! For now the word comes from this process: every write that can change a
//! target calls [`Changes::notify`]. Several processes behind one PostgreSQL
//! database will also need each other's writes; a task that `LISTEN`s on a
//! channel and calls `notify` for each message feeds the same waiters, with
//! no change to them.

use std::sync::Arc;

use tokio::sync::watch;

/// A counter of changes that waiters watch. Cheap to clone.
#[derive(Clone)]
pub struct Changes(Arc<watch::Sender<u64>>);

impl Default for Changes {
    fn default() -> Self {
        Changes(Arc::new(watch::Sender::new(0)))
    }
}

impl Changes {
    /// Wakes every waiter, which then looks again at its own target.
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every change after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
