//! When each device was last seen, written to the database in batches
//! rather than once per poll.
//!
//! A poll only notes the time here; every [`SEEN_FLUSH`] what was noted is
//! written in one transaction, each device once, and never moving a time
//! backwards (another process may have seen the device later). So a fleet
//! polling thousands of times a second costs the database one write every
//! few seconds, and `last_seen` (and `online`) lag the truth by at most
//! [`SEEN_FLUSH`], in every process alike. A process that stops writes what
//! it noted; one that crashes loses at most that much.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::db::{self, Db};

/// How often noted sightings are written: short beside
/// [`crate::ONLINE_WINDOW`] (two minutes), so a device that keeps polling
/// never shows as offline, and long enough that a busy fleet's sightings
/// go in a few large writes.
pub const SEEN_FLUSH: Duration = Duration::from_secs(5);

/// Sightings not yet written: uuid → the last time seen. Cheap to clone.
#[derive(Clone, Default)]
pub struct Seen {
    noted: Arc<Mutex<HashMap<String, i64>>>,
}

impl Seen {
    fn noted(&self) -> MutexGuard<'_, HashMap<String, i64>> {
        // Every change under the lock is one insert or a swap: a poisoned
        // map is still a whole map.
        self.noted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that `uuid` was seen now.
    pub fn saw(&self, uuid: &str) {
        let at = db::now();
        let mut noted = self.noted();
        match noted.get_mut(uuid) {
            Some(t) => *t = at.max(*t),
            None => {
                noted.insert(uuid.to_owned(), at);
            }
        }
    }

    /// Writes what was noted. What cannot be written is noted again, for
    /// the next try.
    pub async fn flush(&self, db: &Db) -> Result<(), db::DbError> {
        let batch: Vec<(String, i64)> = std::mem::take(&mut *self.noted()).into_iter().collect();
        let written = db.mark_seen(&batch).await;
        if written.is_err() {
            let mut noted = self.noted();
            for (uuid, at) in batch {
                let t = noted.entry(uuid).or_insert(at);
                *t = at.max(*t);
            }
        }
        written
    }

    /// Flushes every [`SEEN_FLUSH`], until every other clone is dropped.
    pub fn flush_every_while_used(&self, db: Db) {
        let noted = Arc::downgrade(&self.noted);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SEEN_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(noted) = noted.upgrade() else { break };
                if let Err(e) = (Seen { noted }).flush(&db).await {
                    tracing::warn!(error = %e, "cannot record when devices were last seen");
                }
            }
        });
    }
}
