//! Device keys looked up many at a time.
//!
//! Every request a device makes is checked against the database: the key's
//! sha256 is looked up afresh each time, so a key replaced by a new
//! registration stops working at once, in every process. Under load many
//! such lookups wait at any moment; rather than one query each, they go to
//! the database together. A lookup that finds fewer than [`IN_FLIGHT`]
//! under way starts at once, alone; those that arrive while all are busy
//! wait, and go together in the next, up to [`MAX_KEYS`] in one query.
//! Nothing is kept between lookups: each request is answered by a query
//! that started after it arrived.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::db::{Db, DbError, KeyedDevice};

/// Most keys one query looks up. A batch is padded up to the next of a few
/// sizes (repeating a key changes nothing), so each connection prepares a
/// handful of statements rather than one per batch size.
pub const MAX_KEYS: usize = 128;
const BATCH_SIZES: [usize; 4] = [1, 8, 32, MAX_KEYS];

/// Lookups under way at once: a few of the pool's connections, leaving the
/// rest to everything else.
pub const IN_FLIGHT: usize = 4;

type Reply = Result<Option<KeyedDevice>, String>;

/// The way to the task that looks keys up. Cheap to clone; the task ends
/// when the last clone is dropped.
#[derive(Clone)]
pub struct KeyLookups {
    tx: mpsc::UnboundedSender<(String, oneshot::Sender<Reply>)>,
}

impl KeyLookups {
    /// Starts the task that looks keys up in `db`.
    pub fn start(db: Db) -> KeyLookups {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, oneshot::Sender<Reply>)>();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            while let Some(first) = rx.recv().await {
                // Whatever arrives while every slot is busy joins this batch.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_KEYS {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let db = db.clone();
                tokio::spawn(async move {
                    answer(&db, batch).await;
                    drop(slot);
                });
            }
        });
        KeyLookups { tx }
    }

    /// The device whose key has the sha256 `hash`.
    pub async fn device(&self, hash: String) -> Result<Option<KeyedDevice>, DbError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || DbError::Lookup("the key lookups stopped".to_owned());
        self.tx.send((hash, reply)).map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(DbError::Lookup)
    }
}

async fn answer(db: &Db, batch: Vec<(String, oneshot::Sender<Reply>)>) {
    let size = BATCH_SIZES
        .into_iter()
        .find(|&s| s >= batch.len())
        .unwrap_or(MAX_KEYS);
    let mut hashes: Vec<&str> = batch.iter().map(|(h, _)| h.as_str()).collect();
    let pad = hashes[0];
    hashes.resize(size, pad);
    match db.devices_by_key_hashes(&hashes).await {
        Ok(found) => {
            let found: HashMap<String, KeyedDevice> = found.into_iter().collect();
            for (hash, reply) in batch {
                // A request that gave up no longer listens; nothing to do.
                let _ = reply.send(Ok(found.get(&hash).cloned()));
            }
        }
        Err(e) => {
            let e = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
