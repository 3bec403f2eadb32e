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
//!
//! One module per table holds its rows (mapped by `#[derive(sqlx::FromRow)]`)
//! and its queries, each an `impl Db` block; this module holds the pool, its
//! transactions and what every table shares.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

mod devices;
mod env;
mod fleets;
mod hardware_maps;
mod logs;
mod provisioning_keys;
mod releases;
mod restarts;
mod scratch;
mod services;
mod sessions;
mod tags;
mod tokens;

pub use devices::{DeviceRow, KeyedDevice, NewDevice, Registered, UpdateRow};
pub use env::EnvRow;
pub use fleets::FleetRow;
pub use logs::{KEPT_LOG_LINES, LogRow};
pub use releases::{NewRelease, ReleaseRow};
pub use scratch::ScratchSchema;
pub use services::{ReportedService, ServiceReportRow, ServiceRow};
pub use sessions::SessionRow;
pub use tokens::Revoke;

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
}
