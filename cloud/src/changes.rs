//! Word that something a device's target state depends on has changed, for
//! the requests long-polling it.
//!
//! Word is per fleet: a change in one fleet wakes only the requests of that
//! fleet's devices, each of which then reads its own target again. Every
//! write that can change a target calls [`Changes::notify`] in its own
//! process. On PostgreSQL it also sends `NOTIFY` on [`CHANNEL`] with the
//! fleet's name, and every process runs [`listen`], which turns each
//! notification into a `notify`, so a request held by one process wakes
//! when another makes the change.
//! SQLite has no such channel; there, and whenever a notification is lost,
//! held requests still look again every [`crate::RECHECK`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// The PostgreSQL channel changes are announced on.
pub const CHANNEL: &str = "kelp_changes";

/// How long the listener waits before connecting again after losing its
/// connection: long enough not to hammer a database that is restarting.
const RELISTEN_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// A counter of changes per fleet that waiters watch, and whether the
/// server is stopping. Cheap to clone.
#[derive(Clone)]
pub struct Changes {
    fleets: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    stopping: Arc<watch::Sender<bool>>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            fleets: Arc::default(),
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

    fn fleets(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // Every change to the map is one insert or one retain: a poisoned
        // map is still a whole map.
        self.fleets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waiters of `fleet`, which then look again at their own
    /// targets.
    pub fn notify(&self, fleet: &str) {
        if let Some(tx) = self.fleets().get(fleet) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every waiter of every fleet.
    pub fn notify_all(&self) {
        for tx in self.fleets().values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A receiver that sees every change to `fleet` after this call.
    pub fn subscribe(&self, fleet: &str) -> watch::Receiver<u64> {
        let mut fleets = self.fleets();
        // Forget fleets nobody waits on any more, so the map stays as small
        // as the set of fleets with a device waiting.
        fleets.retain(|_, tx| tx.receiver_count() > 0);
        fleets
            .entry(fleet.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
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
                        changes.notify_all();
                        while let Ok(notification) = listener.recv().await {
                            match notification.payload() {
                                "" => changes.notify_all(),
                                fleet => changes.notify(fleet),
                            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_wakes_the_waiters_of_its_fleet_only() {
        let changes = Changes::default();
        let mut a = changes.subscribe("a");
        let b = changes.subscribe("b");
        changes.notify("a");
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap());
        a.mark_unchanged();
        changes.notify_all();
        assert!(a.has_changed().unwrap() && b.has_changed().unwrap());

        // Fleets nobody waits on are forgotten.
        drop((a, b));
        let _c = changes.subscribe("c");
        assert_eq!(changes.fleets().len(), 1);
    }
}
