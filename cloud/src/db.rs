//! The one data layer: every query the fleet API makes, for SQLite and
//! PostgreSQL alike.
//!
//! It runs on sqlx's `Any` driver, which picks the backend from the URL when
//! the server starts. The alternative, a trait with one implementation per
//! backend, would write every query twice for the sake of two differences
//! that plain SQL avoids: placeholders are `$1, $2, …`, which PostgreSQL
//! requires and SQLite accepts, and columns are only TEXT and BIGINT (times
//! are Unix seconds, JSON is TEXT), which both store and `Any` carries
//! unchanged. Queries are checked by the tests, run against SQLite always
//! and against PostgreSQL when `KELP_TEST_POSTGRES` names one, not by
//! compile-time macros, since no database exists at build time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use kelp_core::api::ServiceSample;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row as _};

mod scratch;
mod sessions;

pub use scratch::ScratchSchema;
pub use sessions::SessionRow;

/// Most connections one server process holds. SQLite in WAL mode lets one
/// writer and many readers through; PostgreSQL's default `max_connections`
/// is 100, so a handful of processes at this size fit under it.
pub const MAX_CONNECTIONS: u32 = 16;

/// How long a SQLite connection waits for another's write lock before the
/// query fails: longer than any one write here takes.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL `{0}` is not sqlite://… or postgres://…")]
    Url(String),
    #[error("data directory {} is not UTF-8; name the database with --database", .0.display())]
    Path(std::path::PathBuf),
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Query(#[from] sqlx::Error),
    /// A lookup made together with others failed; the message is theirs.
    #[error("{0}")]
    Lookup(String),
}

/// How a write transaction's work wants it to end ([`Db::write`]).
enum End<T> {
    Commit(T),
    Rollback(T),
}

/// A pool of connections to the cloud's database, migrated.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    postgres: bool,
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Most log lines kept per device; older ones are dropped as new ones
/// arrive, so a chatty device cannot fill the database.
pub const KEPT_LOG_LINES: i64 = 10_000;

/// Seconds within which a report that says what the last sample said adds
/// no sample; a change of memory or restarts is always stored (a device
/// reports memory at most every 10 seconds).
pub const SAMPLE_EVERY: i64 = 10;

/// Seconds a sample is kept: a day of history, at most 8,640 samples of a
/// service.
pub const KEPT_SAMPLE_AGE: i64 = 24 * 60 * 60;

/// The URL of the SQLite database in a data directory. The path is
/// percent-encoded where a URL would misread it (`%`, `?`, `#`), so a
/// directory named with those still gets its database inside it.
pub fn sqlite_url(data_dir: &Path) -> Result<String, DbError> {
    let path = data_dir.join("kelp.db");
    let text = path
        .to_str()
        .ok_or_else(|| DbError::Path(data_dir.to_owned()))?;
    let mut encoded = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' => encoded.push_str("%25"),
            '?' => encoded.push_str("%3F"),
            '#' => encoded.push_str("%23"),
            c => encoded.push(c),
        }
    }
    Ok(format!("sqlite://{encoded}?mode=rwc"))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

pub use kelp_core::api::TokenInfo;

pub enum Revoke {
    Revoked,
    NotFound,
    /// It is the only token left; revoking it would lock everyone out.
    LastToken,
}

#[derive(Clone, Debug)]
pub struct FleetRow {
    pub name: String,
    pub created_at: i64,
    pub pinned_release: Option<String>,
    /// How many changes the fleet's targets have seen.
    pub generation: i64,
}

#[derive(Clone, Debug)]
pub struct ReleaseRow {
    pub id: String,
    pub fleet: String,
    pub seq: i64,
    pub version: String,
    pub services: String,
    pub created_at: i64,
}

#[derive(Clone, Debug)]
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

/// A device as its own requests need it, with its fleet's change count
/// read in the same query.
#[derive(Clone, Debug)]
pub struct KeyedDevice {
    pub uuid: String,
    pub fleet: String,
    pub pinned_release: Option<String>,
    /// How many changes the fleet's targets had seen when this was read.
    pub generation: i64,
}

/// One service as a device last reported it.
#[derive(Clone, Debug)]
pub struct ServiceRow {
    pub service: String,
    pub state: String,
    pub memory: Option<i64>,
    pub restarts: i64,
    pub last_exit: Option<String>,
    pub updated_at: i64,
}

/// What a device says of one service it runs.
#[derive(Clone, Debug)]
pub struct ServiceReportRow {
    pub state: String,
    pub memory: Option<i64>,
    pub restarts: i64,
    pub last_exit: Option<String>,
}

/// One service in a device's report: its state and memory, or `None` when
/// the device no longer runs it.
#[derive(Clone, Debug)]
pub struct ReportedService {
    pub service: String,
    pub status: Option<ServiceReportRow>,
}

/// One log line as stored.
#[derive(Clone, Debug)]
pub struct LogRow {
    /// The line's number among its device's lines, in arrival order
    /// (ignored when adding: the database numbers them).
    pub seq: i64,
    pub time_ms: i64,
    pub service: String,
    pub stream: String,
    pub line: String,
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

pub enum NewRelease {
    Created(ReleaseRow),
    VersionTaken,
}

/// One environment variable; an empty `device` or `service` means all.
#[derive(Clone, Debug)]
pub struct EnvRow {
    pub device: String,
    pub service: String,
    pub name: String,
    pub value: String,
}

const FLEET_COLUMNS: &str = "name, created_at, pinned_release, generation";
const ENV_COLUMNS: &str = "device, service, name, value";
const RELEASE_COLUMNS: &str = "id, fleet, seq, version, services, created_at";
const DEVICE_COLUMNS: &str = "uuid, fleet, name, arch, agent_version, pinned_release, \
     current_release, created_at, last_seen, update_state, update_release, update_reason, \
     update_at";

fn release_row(row: &sqlx::any::AnyRow) -> Result<ReleaseRow, sqlx::Error> {
    Ok(ReleaseRow {
        id: row.try_get("id")?,
        fleet: row.try_get("fleet")?,
        seq: row.try_get("seq")?,
        version: row.try_get("version")?,
        services: row.try_get("services")?,
        created_at: row.try_get("created_at")?,
    })
}

fn device_row(row: &sqlx::any::AnyRow) -> Result<DeviceRow, sqlx::Error> {
    Ok(DeviceRow {
        uuid: row.try_get("uuid")?,
        fleet: row.try_get("fleet")?,
        name: row.try_get("name")?,
        arch: row.try_get("arch")?,
        agent_version: row.try_get("agent_version")?,
        pinned_release: row.try_get("pinned_release")?,
        current_release: row.try_get("current_release")?,
        created_at: row.try_get("created_at")?,
        last_seen: row.try_get("last_seen")?,
        update: match row.try_get::<Option<String>, _>("update_state")? {
            Some(state) => Some(UpdateRow {
                state,
                release: row
                    .try_get::<Option<String>, _>("update_release")?
                    .unwrap_or_default(),
                reason: row.try_get("update_reason")?,
                at: row.try_get::<Option<i64>, _>("update_at")?.unwrap_or(0),
            }),
            None => None,
        },
    })
}

/// A device as [`KeyedDevice`], its fleet's count read by the same query.
const KEYED_COLUMNS: &str = "uuid, fleet, pinned_release, \
     (SELECT generation FROM fleets WHERE fleets.name = devices.fleet) AS generation";

fn keyed_device(row: &sqlx::any::AnyRow) -> Result<KeyedDevice, sqlx::Error> {
    Ok(KeyedDevice {
        uuid: row.try_get("uuid")?,
        fleet: row.try_get("fleet")?,
        pinned_release: row.try_get("pinned_release")?,
        generation: row.try_get("generation")?,
    })
}

fn env_row(row: &sqlx::any::AnyRow) -> Result<EnvRow, sqlx::Error> {
    Ok(EnvRow {
        device: row.try_get("device")?,
        service: row.try_get("service")?,
        name: row.try_get("name")?,
        value: row.try_get("value")?,
    })
}

fn fleet_row(row: &sqlx::any::AnyRow) -> Result<FleetRow, sqlx::Error> {
    Ok(FleetRow {
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        pinned_release: row.try_get("pinned_release")?,
        generation: row.try_get("generation")?,
    })
}

/// Most devices one statement marks as seen: well under SQLite's limit of
/// 32,766 parameters and PostgreSQL's of 65,535.
const SEEN_BATCH: usize = 500;

impl Db {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://…`) and
    /// brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(DbError::Url(url.to_owned()));
        }
        sqlx::any::install_default_drivers();
        let options: AnyConnectOptions = url.parse().map_err(DbError::Connect)?;
        let pool = AnyPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // No ping before every query, which would add a round trip to
            // each of a device's polls: the pool already pings a connection
            // as it comes back and closes it if broken, so at most the one
            // request that found it broken fails.
            .test_before_acquire(false)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query(&format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"))
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(DbError::Connect)?;
        let db = Db {
            pool,
            postgres: !url.starts_with("sqlite:"),
        };
        if url.starts_with("sqlite:") {
            // WAL lets readers on while one connection writes, and it is a
            // property of the file, so setting it once is enough.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&db.pool)
                .await
                .map_err(DbError::Connect)?;
        }
        MIGRATOR.run(&db.pool).await?;
        Ok(db)
    }

    /// Tells every process listening on this database that something the
    /// targets of `fleet` depend on changed (PostgreSQL only; SQLite has no
    /// channel).
    pub async fn announce_change(&self, fleet: &str) -> Result<(), DbError> {
        if self.postgres {
            // NOTIFY takes no parameters, so the payload is spelled into the
            // statement, which only a checked fleet name (lowercase letters,
            // digits, `-`) may be; anything else wakes every fleet instead.
            let payload = if fleet
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                fleet
            } else {
                ""
            };
            sqlx::raw_sql(&format!("NOTIFY {}, '{payload}'", crate::changes::CHANNEL))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock at once (`BEGIN IMMEDIATE`): a transaction that read first and
    /// then found another had written meanwhile would fail outright
    /// (`SQLITE_BUSY`), whereas one waiting for the lock at its start
    /// waits out the busy timeout. PostgreSQL takes row locks as it goes.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        if self.postgres {
            self.pool.begin().await
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        }
    }

    /// Runs `work` in a write transaction ([`Db::begin`]) and ends it before
    /// returning: commits or rolls back as the work says, and rolls back when
    /// the work fails. (A dropped transaction is rolled back later, when a
    /// task of sqlx's hands its connection back to the pool; until then it
    /// holds its locks.)
    async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> Result<End<T>, DbError>,
    ) -> Result<T, DbError> {
        let mut tx = self.begin().await?;
        match work(&mut tx).await {
            Ok(End::Commit(value)) => {
                tx.commit().await?;
                Ok(value)
            }
            Ok(End::Rollback(value)) => {
                tx.rollback().await?;
                Ok(value)
            }
            Err(error) => {
                // The work's error is the one to report. A rollback that
                // fails too is left to sqlx, which tries it again before the
                // connection is used next.
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }

    /// Whether this is PostgreSQL (which can announce changes to other
    /// processes) rather than SQLite.
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// Closes every connection, waiting for queries in flight.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // --- API tokens ---

    /// Adds a token (by hash) unless that hash is already known; a token
    /// revoked earlier stays revoked.
    pub async fn adopt_token(&self, id: &str, name: &str, hash: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(hash)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn create_token(&self, id: &str, name: &str, hash: &str) -> Result<i64, DbError> {
        let created_at = now();
        sqlx::query("INSERT INTO api_tokens (id, name, hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(name)
            .bind(hash)
            .bind(created_at)
            .execute(&self.pool)
            .await?;
        Ok(created_at)
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, DbError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM api_tokens WHERE revoked_at IS NULL \
             ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// The id of the live token with this hash.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT id FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<Revoke, DbError> {
        self.write(async |tx| {
            if let Some(lock) = self.serialize_writes("api_tokens") {
                sqlx::query(&lock).execute(&mut *tx).await?;
            }
            let revoked = sqlx::query(
                "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if revoked.rows_affected() == 0 {
                return Ok(End::Rollback(Revoke::NotFound));
            }
            let live: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM api_tokens WHERE revoked_at IS NULL")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            if live == 0 {
                return Ok(End::Rollback(Revoke::LastToken));
            }
            Ok(End::Commit(Revoke::Revoked))
        })
        .await
    }

    /// The statement that makes a transaction's writes to `table` wait for
    /// every other transaction writing it, for a read-then-write that must
    /// not interleave with another (two revocations that would each leave
    /// the other's token as the last one). On SQLite [`Db::begin`] already
    /// runs one writing transaction at a time; PostgreSQL needs the table
    /// locked.
    fn serialize_writes(&self, table: &'static str) -> Option<String> {
        self.postgres
            .then(|| format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
    }

    // --- fleets and provisioning keys ---

    /// Creates a fleet with its first provisioning key; `false` if the name
    /// is taken.
    pub async fn create_fleet(
        &self,
        name: &str,
        key_id: &str,
        key_hash: &str,
    ) -> Result<bool, DbError> {
        self.write(async |tx| {
            let created_at = now();
            let inserted = sqlx::query("INSERT INTO fleets (name, created_at) VALUES ($1, $2)")
                .bind(name)
                .bind(created_at)
                .execute(&mut *tx)
                .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => return Ok(End::Rollback(false)),
                Err(e) => return Err(e.into()),
            }
            sqlx::query(
                "INSERT INTO provisioning_keys (id, fleet, hash, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(key_id)
            .bind(name)
            .bind(key_hash)
            .bind(created_at)
            .execute(&mut *tx)
            .await?;
            Ok(End::Commit(true))
        })
        .await
    }

    pub async fn fleets(&self) -> Result<Vec<FleetRow>, DbError> {
        let rows = sqlx::query(&format!("SELECT {FLEET_COLUMNS} FROM fleets ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(fleet_row).collect::<Result<_, _>>()?)
    }

    pub async fn fleet(&self, name: &str) -> Result<Option<FleetRow>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {FLEET_COLUMNS} FROM fleets WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(fleet_row).transpose()?)
    }

    /// The hardware map given to `fleet` (or to a device of it, with
    /// `device`), if any.
    pub async fn hardware_map(
        &self,
        fleet: &str,
        device: Option<&str>,
    ) -> Result<Option<String>, DbError> {
        let row = match device {
            None => {
                sqlx::query("SELECT hardware_map FROM fleets WHERE name = $1")
                    .bind(fleet)
                    .fetch_optional(&self.pool)
                    .await?
            }
            Some(uuid) => {
                sqlx::query("SELECT hardware_map FROM devices WHERE uuid = $1")
                    .bind(uuid)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        Ok(match row {
            Some(r) => r.try_get("hardware_map")?,
            None => None,
        })
    }

    /// Gives `fleet` (or its device `device`) a hardware map, or takes it
    /// away with `None`.
    pub async fn set_hardware_map(
        &self,
        fleet: &str,
        device: Option<&str>,
        map: Option<&str>,
    ) -> Result<(), DbError> {
        let q = match device {
            None => sqlx::query("UPDATE fleets SET hardware_map = $1 WHERE name = $2")
                .bind(map)
                .bind(fleet),
            Some(uuid) => sqlx::query("UPDATE devices SET hardware_map = $1 WHERE uuid = $2")
                .bind(map)
                .bind(uuid),
        };
        q.execute(&self.pool).await?;
        Ok(())
    }

    /// The devices of `fleet` given a map of their own, with it.
    pub async fn device_hardware_maps(
        &self,
        fleet: &str,
    ) -> Result<Vec<(String, String)>, DbError> {
        let rows = sqlx::query(
            "SELECT uuid, hardware_map FROM devices WHERE fleet = $1 AND hardware_map IS NOT NULL",
        )
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("uuid")?, r.try_get("hardware_map")?)))
            .collect()
    }

    /// Counts one more change to what `fleet`'s targets depend on.
    pub async fn bump_generation(&self, fleet: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE fleets SET generation = generation + 1 WHERE name = $1")
            .bind(fleet)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replaces a fleet's provisioning key; the old one stops working at once.
    pub async fn rotate_provisioning_key(
        &self,
        fleet: &str,
        key_id: &str,
        key_hash: &str,
    ) -> Result<(), DbError> {
        self.write(async |tx| {
            // Two rotations at once must not each leave their own key live.
            if let Some(lock) = self.serialize_writes("provisioning_keys") {
                sqlx::query(&lock).execute(&mut *tx).await?;
            }
            let at = now();
            sqlx::query(
            "UPDATE provisioning_keys SET revoked_at = $1 WHERE fleet = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(fleet)
        .execute(&mut *tx)
        .await?;
            sqlx::query(
            "INSERT INTO provisioning_keys (id, fleet, hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(key_id)
        .bind(fleet)
        .bind(key_hash)
        .bind(at)
        .execute(&mut *tx)
        .await?;
            Ok(End::Commit(()))
        })
        .await
    }

    /// The fleet whose live provisioning key has this hash.
    pub async fn provisioning_key_by_hash(&self, hash: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query(
            "SELECT fleet FROM provisioning_keys WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("fleet")).transpose()?)
    }

    // --- devices ---

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
            let existing = sqlx::query("SELECT fleet FROM devices WHERE uuid = $1")
                .bind(d.uuid)
                .fetch_optional(&mut *tx)
                .await?;
            let registered = match existing {
                Some(row) => {
                    let fleet: String = row.try_get("fleet")?;
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
        let mut q = sqlx::query(&sql);
        for hash in hashes {
            q = q.bind(*hash);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| Ok((row.try_get("key_hash")?, keyed_device(row)?)))
            .collect()
    }

    /// The device `uuid` as [`Db::devices_by_key_hashes`] reads it.
    pub async fn keyed_device_by_uuid(&self, uuid: &str) -> Result<Option<KeyedDevice>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {KEYED_COLUMNS} FROM devices WHERE uuid = $1"
        ))
        .bind(uuid)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(keyed_device).transpose()?)
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
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE ($1 = '' OR fleet = $1) AND uuid > $2 \
             ORDER BY uuid LIMIT $3"
        ))
        .bind(fleet.unwrap_or(""))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(device_row).collect::<Result<_, _>>()?)
    }

    pub async fn device(&self, uuid: &str) -> Result<Option<DeviceRow>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE uuid = $1"
        ))
        .bind(uuid)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(device_row).transpose()?)
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
        let mut by_time: std::collections::BTreeMap<i64, Vec<&str>> = Default::default();
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

    // --- releases and pins ---

    /// Adds a release after the fleet's latest.
    pub async fn create_release(
        &self,
        fleet: &str,
        id: &str,
        version: &str,
        services: &str,
    ) -> Result<NewRelease, DbError> {
        // Two servers creating releases for one fleet at once can pick the
        // same `seq`; the loser's insert fails the UNIQUE and tries again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_create_release(fleet, id, version, services).await {
                Err(DbError::Query(e)) if is_unique_violation(&e) && attempt < 5 => continue,
                other => return other,
            }
        }
    }

    async fn try_create_release(
        &self,
        fleet: &str,
        id: &str,
        version: &str,
        services: &str,
    ) -> Result<NewRelease, DbError> {
        self.write(async |tx| {
            let taken = sqlx::query("SELECT id FROM releases WHERE fleet = $1 AND version = $2")
                .bind(fleet)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if taken {
                return Ok(End::Rollback(NewRelease::VersionTaken));
            }
            let seq: i64 = sqlx::query(
                "SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM releases WHERE fleet = $1",
            )
            .bind(fleet)
            .fetch_one(&mut *tx)
            .await?
            .try_get("next")?;
            let row = ReleaseRow {
                id: id.to_owned(),
                fleet: fleet.to_owned(),
                seq,
                version: version.to_owned(),
                services: services.to_owned(),
                created_at: now(),
            };
            sqlx::query(
                "INSERT INTO releases (id, fleet, seq, version, services, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&row.id)
            .bind(&row.fleet)
            .bind(row.seq)
            .bind(&row.version)
            .bind(&row.services)
            .bind(row.created_at)
            .execute(&mut *tx)
            .await?;
            Ok(End::Commit(NewRelease::Created(row)))
        })
        .await
    }

    pub async fn releases(&self, fleet: &str) -> Result<Vec<ReleaseRow>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE fleet = $1 ORDER BY seq"
        ))
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(release_row).collect::<Result<_, _>>()?)
    }

    pub async fn release_by_version(
        &self,
        fleet: &str,
        version: &str,
    ) -> Result<Option<ReleaseRow>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE fleet = $1 AND version = $2"
        ))
        .bind(fleet)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(release_row).transpose()?)
    }

    pub async fn release_by_id(&self, id: &str) -> Result<Option<ReleaseRow>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(release_row).transpose()?)
    }

    pub async fn latest_release(&self, fleet: &str) -> Result<Option<ReleaseRow>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE fleet = $1 ORDER BY seq DESC LIMIT 1"
        ))
        .bind(fleet)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(release_row).transpose()?)
    }

    /// Pins a fleet to a release id, or with `None` lets it track its latest.
    pub async fn pin_fleet(&self, fleet: &str, release: Option<&str>) -> Result<(), DbError> {
        sqlx::query("UPDATE fleets SET pinned_release = $1 WHERE name = $2")
            .bind(release)
            .bind(fleet)
            .execute(&self.pool)
            .await?;
        Ok(())
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

    /// Sets a device's tag `tag` to `value`.
    pub async fn set_tag(&self, uuid: &str, tag: &str, value: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO device_tags (uuid, tag, value) VALUES ($1, $2, $3) \
             ON CONFLICT (uuid, tag) DO UPDATE SET value = excluded.value",
        )
        .bind(uuid)
        .bind(tag)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a device's tag; false if it had none by that name.
    pub async fn delete_tag(&self, uuid: &str, tag: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM device_tags WHERE uuid = $1 AND tag = $2")
            .bind(uuid)
            .bind(tag)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn device_tags(&self, uuid: &str) -> Result<BTreeMap<String, String>, DbError> {
        let rows = sqlx::query("SELECT tag, value FROM device_tags WHERE uuid = $1 ORDER BY tag")
            .bind(uuid)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("tag")?, r.try_get("value")?)))
            .collect()
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

    /// The release a device should run: its own pin, else its fleet's pin,
    /// else its fleet's latest.
    pub async fn target_release(&self, device: &DeviceRow) -> Result<Option<ReleaseRow>, DbError> {
        if let Some(id) = &device.pinned_release {
            return self.release_by_id(id).await;
        }
        let fleet = self.fleet(&device.fleet).await?;
        match fleet.and_then(|f| f.pinned_release) {
            Some(id) => self.release_by_id(&id).await,
            None => self.latest_release(&device.fleet).await,
        }
    }

    // --- environment variables ---

    /// Every variable of a fleet, at every scope.
    pub async fn fleet_env(&self, fleet: &str) -> Result<Vec<EnvRow>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM env_vars WHERE fleet = $1"
        ))
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(env_row).collect::<Result<_, _>>()?)
    }

    /// The variables set at one scope (`device` and `service` empty for
    /// the whole fleet and every service).
    pub async fn env_at(
        &self,
        fleet: &str,
        device: &str,
        service: &str,
    ) -> Result<Vec<EnvRow>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM env_vars \
             WHERE fleet = $1 AND device = $2 AND service = $3 ORDER BY name"
        ))
        .bind(fleet)
        .bind(device)
        .bind(service)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(env_row).collect::<Result<_, _>>()?)
    }

    pub async fn set_env(&self, fleet: &str, v: &EnvRow) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO env_vars (fleet, device, service, name, value) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (fleet, device, service, name) DO UPDATE SET value = excluded.value",
        )
        .bind(fleet)
        .bind(&v.device)
        .bind(&v.service)
        .bind(&v.name)
        .bind(&v.value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a variable; `false` if there was none.
    pub async fn delete_env(
        &self,
        fleet: &str,
        device: &str,
        service: &str,
        name: &str,
    ) -> Result<bool, DbError> {
        let done = sqlx::query(
            "DELETE FROM env_vars WHERE fleet = $1 AND device = $2 AND service = $3 AND name = $4",
        )
        .bind(fleet)
        .bind(device)
        .bind(service)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    // --- what devices report ---

    /// Records what a device reports: the release it runs (when given) and
    /// each named service's state and memory (`None` for a service it no
    /// longer runs). Services not named keep what they had.
    pub async fn report_state(
        &self,
        uuid: &str,
        release: Option<&str>,
        services: &[ReportedService],
        update: Option<(&str, &str, Option<&str>)>,
    ) -> Result<(), DbError> {
        self.write(async |tx| {
            let at = now();
            sqlx::query(
            "UPDATE devices SET last_seen = $1, current_release = COALESCE($2, current_release) \
             WHERE uuid = $3",
        )
        .bind(at)
        .bind(release)
        .bind(uuid)
        .execute(&mut *tx)
        .await?;
            if let Some((state, release, reason)) = update {
                sqlx::query(
                "UPDATE devices SET update_state = $1, update_release = $2, update_reason = $3, \
                 update_at = $4 WHERE uuid = $5",
            )
            .bind(state)
            .bind(release)
            .bind(reason)
            .bind(at)
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
            }
            for ReportedService { service, status } in services {
                match status {
                    Some(r) => {
                        sqlx::query(
                            "INSERT INTO device_services \
                             (uuid, service, state, memory, restarts, last_exit, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7) \
                             ON CONFLICT (uuid, service) DO UPDATE SET state = excluded.state, \
                             memory = excluded.memory, restarts = excluded.restarts, \
                             last_exit = excluded.last_exit, updated_at = excluded.updated_at",
                        )
                        .bind(uuid)
                        .bind(service)
                        .bind(&r.state)
                        .bind(r.memory)
                        .bind(r.restarts)
                        .bind(&r.last_exit)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                        // A sample unless one this recent says the same.
                        sqlx::query(
                            "INSERT INTO service_samples (uuid, service, at, memory, restarts) \
                             SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (\
                             SELECT 1 FROM service_samples WHERE uuid = $1 AND service = $2 \
                             AND at > $6 AND restarts = $5 AND memory IS NOT DISTINCT FROM $4)",
                        )
                        .bind(uuid)
                        .bind(service)
                        .bind(at)
                        .bind(r.memory)
                        .bind(r.restarts)
                        .bind(at - SAMPLE_EVERY)
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM device_services WHERE uuid = $1 AND service = $2")
                            .bind(uuid)
                            .bind(service)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            if !services.is_empty() {
                sqlx::query("DELETE FROM service_samples WHERE uuid = $1 AND at < $2")
                    .bind(uuid)
                    .bind(at - KEPT_SAMPLE_AGE)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(End::Commit(()))
        })
        .await
    }

    /// Each service's samples since `since` (seconds), oldest first.
    pub async fn service_samples(
        &self,
        uuid: &str,
        since: i64,
    ) -> Result<BTreeMap<String, Vec<ServiceSample>>, DbError> {
        let rows = sqlx::query(
            "SELECT service, at, memory, restarts FROM service_samples \
             WHERE uuid = $1 AND at >= $2 ORDER BY service, at",
        )
        .bind(uuid)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut samples: BTreeMap<String, Vec<ServiceSample>> = BTreeMap::new();
        for r in &rows {
            samples
                .entry(r.try_get("service")?)
                .or_default()
                .push(ServiceSample {
                    at: r.try_get("at")?,
                    memory: r.try_get("memory")?,
                    restarts: r.try_get("restarts")?,
                });
        }
        Ok(samples)
    }

    /// Asks `uuid` to restart `service` once more, and says how many times
    /// it has been asked. The caller counts the change to the fleet's
    /// targets.
    pub async fn request_restart(&self, uuid: &str, service: &str) -> Result<u64, DbError> {
        let count: i64 = sqlx::query(
            "INSERT INTO restart_requests (uuid, service, count) VALUES ($1, $2, 1) \
             ON CONFLICT (uuid, service) DO UPDATE SET count = restart_requests.count + 1 \
             RETURNING count",
        )
        .bind(uuid)
        .bind(service)
        .fetch_one(&self.pool)
        .await?
        .try_get("count")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Restart counts of `fleet`'s devices, by uuid.
    pub async fn fleet_restart_requests(
        &self,
        fleet: &str,
    ) -> Result<HashMap<String, BTreeMap<String, u64>>, DbError> {
        let rows = sqlx::query(
            "SELECT r.uuid, r.service, r.count FROM restart_requests r \
             JOIN devices d ON d.uuid = r.uuid WHERE d.fleet = $1",
        )
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?;
        let mut counts: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
        for r in &rows {
            let count: i64 = r.try_get("count")?;
            counts
                .entry(r.try_get("uuid")?)
                .or_default()
                .insert(r.try_get("service")?, u64::try_from(count).unwrap_or(0));
        }
        Ok(counts)
    }

    pub async fn device_services(&self, uuid: &str) -> Result<Vec<ServiceRow>, DbError> {
        let rows = sqlx::query(
            "SELECT service, state, memory, restarts, last_exit, updated_at FROM device_services \
             WHERE uuid = $1 ORDER BY service",
        )
        .bind(uuid)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ServiceRow {
                    service: r.try_get("service")?,
                    state: r.try_get("state")?,
                    memory: r.try_get("memory")?,
                    restarts: r.try_get("restarts")?,
                    last_exit: r.try_get("last_exit")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// Stores a batch of log lines in order, numbering them after the
    /// device's last line, then drops the device's oldest beyond
    /// [`KEPT_LOG_LINES`].
    pub async fn add_logs(&self, uuid: &str, lines: &[LogRow]) -> Result<(), DbError> {
        if lines.is_empty() {
            return Ok(());
        }
        self.write(async |tx| {
            let received = now_ms();
            let count = i64::try_from(lines.len()).unwrap_or(i64::MAX);
            // Updating the device's row takes its numbers and, on PostgreSQL,
            // holds the row until this batch commits: another batch of the same
            // device waits here, so lines become visible in number order.
            let last: i64 = sqlx::query(
                "UPDATE devices SET log_seq = log_seq + $1 WHERE uuid = $2 RETURNING log_seq",
            )
            .bind(count)
            .bind(uuid)
            .fetch_one(&mut *tx)
            .await?
            .try_get("log_seq")?;
            let first = last - count + 1;
            for (idx, l) in (0_i64..).zip(lines) {
                sqlx::query(
                    "INSERT INTO device_logs (id, uuid, received_ms, idx, seq, time_ms, service, \
                     stream, line) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(uuid)
                .bind(received)
                .bind(idx)
                .bind(first + idx)
                .bind(l.time_ms)
                .bind(&l.service)
                .bind(&l.stream)
                .bind(&l.line)
                .execute(&mut *tx)
                .await?;
            }
            // Numbers run without gaps, so the lines beyond the newest
            // KEPT_LOG_LINES are those numbered at or below the last minus it.
            sqlx::query("DELETE FROM device_logs WHERE uuid = $1 AND seq <= $2")
                .bind(uuid)
                .bind(last - KEPT_LOG_LINES)
                .execute(&mut *tx)
                .await?;
            Ok(End::Commit(()))
        })
        .await
    }

    /// A device's log lines, oldest first: with `after`, the first `limit`
    /// numbered after it; without, the newest `limit`. With `service`
    /// non-empty, that service's lines alone.
    pub async fn logs(
        &self,
        uuid: &str,
        service: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<LogRow>, DbError> {
        let order = if after.is_some() { "ASC" } else { "DESC" };
        let rows = sqlx::query(&format!(
            "SELECT seq, time_ms, service, stream, line FROM device_logs \
             WHERE uuid = $1 AND ($2 = '' OR service = $2) AND seq > $3 \
             ORDER BY seq {order} LIMIT $4"
        ))
        .bind(uuid)
        .bind(service)
        .bind(after.unwrap_or(0))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = rows
            .iter()
            .map(|r| {
                Ok(LogRow {
                    seq: r.try_get("seq")?,
                    time_ms: r.try_get("time_ms")?,
                    service: r.try_get("service")?,
                    stream: r.try_get("stream")?,
                    line: r.try_get("line")?,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        if after.is_none() {
            lines.reverse();
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_database_lands_in_a_data_directory_whatever_its_name() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("odd ?#% name");
        std::fs::create_dir(&dir).unwrap();
        let db = Db::connect(&sqlite_url(&dir).unwrap()).await.unwrap();
        db.adopt_token("t", "admin", "sha256:00").await.unwrap();
        db.close().await;
        assert!(dir.join("kelp.db").is_file());
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("odd ?#% name")]);
    }

    /// Lines stored before lines had numbers get them, on SQLite and (when
    /// `KELP_TEST_POSTGRES` names a server) on PostgreSQL.
    #[tokio::test]
    async fn log_lines_kept_from_before_numbering_are_numbered_in_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        numbers_old_log_lines(&sqlite_url(dir.path()).unwrap()).await;
        if let Ok(base) = std::env::var("KELP_TEST_POSTGRES") {
            let schema = ScratchSchema::create(&base, "kelp_unit").await.unwrap();
            numbers_old_log_lines(&schema.url()).await;
            schema.remove().await.unwrap();
        }
    }

    async fn numbers_old_log_lines(url: &str) {
        // A database at the schema before log lines had numbers, with lines.
        let before = tempfile::tempdir().unwrap();
        let all = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for entry in std::fs::read_dir(&all).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_str().unwrap() < "0004" {
                std::fs::copy(entry.path(), before.path().join(entry.file_name())).unwrap();
            }
        }
        sqlx::any::install_default_drivers();
        let pool = AnyPool::connect(url).await.unwrap();
        sqlx::migrate::Migrator::new(before.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::raw_sql(
            "INSERT INTO fleets (name, created_at) VALUES ('f', 0); \
             INSERT INTO devices (uuid, fleet, name, arch, agent_version, key_hash, created_at, \
             last_seen) VALUES ('d', 'f', 'd', 'x86_64', '1', 'h', 0, 0); \
             INSERT INTO device_logs (id, uuid, received_ms, idx, time_ms, service, stream, line) \
             VALUES ('1', 'd', 2000, 0, 0, 'web', 'stdout', 'c'), \
             ('2', 'd', 1000, 1, 0, 'web', 'stdout', 'b'), \
             ('3', 'd', 1000, 0, 0, 'web', 'stdout', 'a');",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let db = Db::connect(url).await.unwrap();
        let numbered = |lines: Vec<LogRow>| -> Vec<(i64, String)> {
            lines.into_iter().map(|l| (l.seq, l.line)).collect()
        };
        let kept = db.logs("d", "", None, 10).await.unwrap();
        assert_eq!(
            numbered(kept),
            [
                (1, "a".to_owned()),
                (2, "b".to_owned()),
                (3, "c".to_owned())
            ]
        );
        // New lines go on from the last number.
        let line = LogRow {
            seq: 0,
            time_ms: 0,
            service: "web".to_owned(),
            stream: "stdout".to_owned(),
            line: "d".to_owned(),
        };
        db.add_logs("d", &[line]).await.unwrap();
        let new = db.logs("d", "", Some(3), 10).await.unwrap();
        assert_eq!(numbered(new), [(4, "d".to_owned())]);
        db.close().await;
    }
}
