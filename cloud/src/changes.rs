//! Word that something a device's target state depends on has changed, for
//! the requests long-polling it.
//!
//! Every write that can change a target calls [`Changes::notify`] in its own
//! process. On PostgreSQL it also sends `NOTIFY` on [`CHANNEL`], and every
//! process runs [`listen`], which turns each notification into a `notify`,
//! so a request held by one process wakes when another makes the change.
//! SQLite has no such channel; there, and whenever a notification is lost,
//! held requests still look again every [`crate::RECHECK`].

use std::sync::Arc;

use tokio::sync::watch;

/// The PostgreSQL channel changes are announced on.
pub const CHANNEL: &str = "kelp_changes";

/// How long the listener waits before connecting again after losing its
/// connection: long enough not to hammer a database that is restarting.
const RELISTEN_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// A counter of changes that waiters watch, and whether the server is
/// stopping. Cheap to clone.
#[derive(Clone)]
pub struct Changes {
    count: Arc<watch::Sender<u64>>,
    stopping: Arc<watch::Sender<bool>>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            count: Arc::new(watch::Sender::new(0)),
            stopping: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl Changes {
    /// Ends every wait now and every later one at once: the server is
    /// shutting down.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// A receiver that sees [`Changes::stop`].
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Wakes every waiter, which then looks again at its own target.
    pub fn notify(&self) {
        self.count.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every change after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.count.subscribe()
    }
}

/// Turns notifications on [`CHANNEL`] of the PostgreSQL database at `url`
/// into [`Changes::notify`], for as long as the runtime runs.
pub fn listen(url: String, changes: Changes) {
    tokio::spawn(async move {
        loop {
            match sqlx::postgres::PgListener::connect(&url).await {
                Ok(mut listener) => {
                    if let Err(e) = listener.listen(CHANNEL).await {
                        tracing::warn!(error = %e, "cannot LISTEN for changes");
                    } else {
                        // Anything missed while not listening: look again.
                        changes.notify();
                        while let Ok(_notification) = listener.recv().await {
                            changes.notify();
                        }
                        tracing::warn!("lost the connection that listens for changes");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot connect to listen for changes"),
            }
            tokio::time::sleep(RELISTEN_DELAY).await;
        }
    });
}
