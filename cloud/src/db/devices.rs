//! `devices`: each registered device, its key's hash, its pin and what it
//! last said of itself.

use std::collections::BTreeMap;

use super::{Db, DbError, End, is_unique_violation, now};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeviceRow {
    pub uuid: String,
    pub fleet: String,
    pub name: String,
    pub arch: String,
    pub agent_version: String,
    pub pinned_release: Option<String>,
    pub current_release: Option<String>,
    pub created_at: i64,
    pub last_seen: i64,
    #[sqlx(flatten, try_from = "UpdateColumns")]
    pub update: Option<UpdateRow>,
}

/// How a device's last update went, as it reported it.
#[derive(Clone, Debug)]
pub struct UpdateRow {
    pub state: String,
    /// The release's id.
    pub release: String,
    pub reason: Option<String>,
    pub at: i64,
}

/// The columns [`UpdateRow`] is stored in, all empty until a device first
/// reports an update.
#[derive(sqlx::FromRow)]
struct UpdateColumns {
    update_state: Option<String>,
    update_release: Option<String>,
    update_reason: Option<String>,
    update_at: Option<i64>,
}

impl From<UpdateColumns> for Option<UpdateRow> {
    fn from(c: UpdateColumns) -> Self {
        Some(UpdateRow {
            state: c.update_state?,
            release: c.update_release.unwrap_or_default(),
            reason: c.update_reason,
            at: c.update_at.unwrap_or(0),
        })
    }
}

/// A device as its own requests need it, with its fleet's change count
/// read in the same query.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct KeyedDevice {
    pub uuid: String,
    pub fleet: String,
    pub pinned_release: Option<String>,
    /// How many changes the fleet's targets had seen when this was read.
    pub generation: i64,
}

/// A [`KeyedDevice`] with the hash of the key it was found by.
#[derive(sqlx::FromRow)]
struct KeyedByHash {
    key_hash: String,
    #[sqlx(flatten)]
    device: KeyedDevice,
}

pub struct NewDevice<'a> {
    pub uuid: &'a str,
    pub fleet: &'a str,
    pub name: Option<&'a str>,
    pub arch: &'a str,
    pub agent_version: &'a str,
    pub key_hash: &'a str,
}

pub enum Registered {
    New,
    Again,
    /// The uuid is already a device of this other fleet.
    OtherFleet(String),
}

const DEVICE_COLUMNS: &str = "uuid, fleet, name, arch, agent_version, pinned_release, \
     current_release, created_at, last_seen, update_state, update_release, update_reason, \
     update_at";

/// A device as [`KeyedDevice`], its fleet's count read by the same query.
const KEYED_COLUMNS: &str = "uuid, fleet, pinned_release, \
     (SELECT generation FROM fleets WHERE fleets.name = devices.fleet) AS generation";

/// Most devices one statement marks as seen: well under SQLite's limit of
/// 32,766 parameters and PostgreSQL's of 65,535.
const SEEN_BATCH: usize = 500;

impl Db {
    /// Registers a device, or registers it again with a new key (the old key
    /// stops working). A device never moves to another fleet this way.
    pub async fn register_device(&self, d: &NewDevice<'_>) -> Result<Registered, DbError> {
        // Two requests registering one new uuid at once both find no row;
        // the second insert fails the primary key, and its retry finds the
        // device the first one made.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_register_device(d).await {
                Err(DbError::Query(e)) if is_unique_violation(&e) && attempt < 3 => continue,
                other => return other,
            }
        }
    }

    async fn try_register_device(&self, d: &NewDevice<'_>) -> Result<Registered, DbError> {
        self.write(async |tx| {
            let at = now();
            let existing: Option<String> =
                sqlx::query_scalar("SELECT fleet FROM devices WHERE uuid = $1")
                    .bind(d.uuid)
                    .fetch_optional(&mut *tx)
                    .await?;
            let registered = match existing {
                Some(fleet) => {
                    if fleet != d.fleet {
                        return Ok(End::Rollback(Registered::OtherFleet(fleet)));
                    }
                    sqlx::query(
                        "UPDATE devices SET name = COALESCE($1, name), arch = $2, \
                         agent_version = $3, key_hash = $4, last_seen = $5 WHERE uuid = $6",
                    )
                    .bind(d.name)
                    .bind(d.arch)
                    .bind(d.agent_version)
                    .bind(d.key_hash)
                    .bind(at)
                    .bind(d.uuid)
                    .execute(&mut *tx)
                    .await?;
                    Registered::Again
                }
                None => {
                    sqlx::query(
                        "INSERT INTO devices (uuid, fleet, name, arch, agent_version, key_hash, \
                         created_at, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(d.uuid)
                    .bind(d.fleet)
                    .bind(d.name.unwrap_or(d.uuid))
                    .bind(d.arch)
                    .bind(d.agent_version)
                    .bind(d.key_hash)
                    .bind(at)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                    Registered::New
                }
            };
            Ok(End::Commit(registered))
        })
        .await
    }

    /// The devices whose keys have these hashes, each with the hash and
    /// its fleet's change count: a device's poll needs nothing else from
    /// the database while the count says its fleet's targets are
    /// unchanged. The keys module gathers many requests' hashes into one call.
    pub async fn devices_by_key_hashes(
        &self,
        hashes: &[&str],
    ) -> Result<Vec<(String, KeyedDevice)>, DbError> {
        let list: Vec<String> = (1..=hashes.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT key_hash, {KEYED_COLUMNS} FROM devices WHERE key_hash IN ({})",
            list.join(", ")
        );
        let mut q = sqlx::query_as(&sql);
        for hash in hashes {
            q = q.bind(*hash);
        }
        let rows: Vec<KeyedByHash> = q.fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| (r.key_hash, r.device)).collect())
    }

    /// The device `uuid` as [`Db::devices_by_key_hashes`] reads it.
    pub async fn keyed_device_by_uuid(&self, uuid: &str) -> Result<Option<KeyedDevice>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {KEYED_COLUMNS} FROM devices WHERE uuid = $1"
        ))
        .bind(uuid)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Up to `limit` devices (of `fleet`, if given) whose uuids sort after
    /// `after`, in uuid order.
    pub async fn devices(
        &self,
        fleet: Option<&str>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<DeviceRow>, DbError> {
        // An absent fleet matches every fleet: `$1 IS NULL` needs a type
        // PostgreSQL can infer, so the empty string stands for "any".
        Ok(sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE ($1 = '' OR fleet = $1) AND uuid > $2 \
             ORDER BY uuid LIMIT $3"
        ))
        .bind(fleet.unwrap_or(""))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn device(&self, uuid: &str) -> Result<Option<DeviceRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE uuid = $1"
        ))
        .bind(uuid)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records when each device was last seen, in one transaction; a
    /// time older than the one stored (another process saw the device
    /// later) changes nothing.
    pub async fn mark_seen(&self, seen: &[(String, i64)]) -> Result<(), DbError> {
        if seen.is_empty() {
            return Ok(());
        }
        // One statement per distinct time, naming many devices at once:
        // a batch gathered over a few seconds holds a few distinct times.
        let mut by_time: BTreeMap<i64, Vec<&str>> = Default::default();
        for (uuid, at) in seen {
            by_time.entry(*at).or_default().push(uuid);
        }
        self.write(async |tx| {
            for (at, uuids) in by_time {
                for chunk in uuids.chunks(SEEN_BATCH) {
                    let list: Vec<String> =
                        (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
                    let sql = format!(
                        "UPDATE devices SET last_seen = $1 WHERE last_seen < $1 AND uuid IN ({})",
                        list.join(", ")
                    );
                    let mut q = sqlx::query(&sql).bind(at);
                    for uuid in chunk {
                        q = q.bind(*uuid);
                    }
                    q.execute(&mut *tx).await?;
                }
            }
            Ok(End::Commit(()))
        })
        .await
    }

    /// Gives a device a new name (the uuid, its key, stays).
    pub async fn rename_device(&self, uuid: &str, name: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE devices SET name = $1 WHERE uuid = $2")
            .bind(name)
            .bind(uuid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Pins a device to a release id, or with `None` lets it follow its fleet.
    pub async fn pin_device(&self, uuid: &str, release: Option<&str>) -> Result<(), DbError> {
        sqlx::query("UPDATE devices SET pinned_release = $1 WHERE uuid = $2")
            .bind(release)
            .bind(uuid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
