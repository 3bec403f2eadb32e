//! `device_logs`: each device's newest service log lines, numbered in
//! arrival order.

use super::{Db, DbError, End, now_ms};

/// Most log lines kept per device; older ones are dropped as new ones
/// arrive, so a chatty device cannot fill the database.
pub const KEPT_LOG_LINES: i64 = 10_000;

/// One log line as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LogRow {
    /// The line's number among its device's lines, in arrival order
    /// (ignored when adding: the database numbers them).
    pub seq: i64,
    pub time_ms: i64,
    pub service: String,
    pub stream: String,
    pub line: String,
}

impl Db {
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
            let last: i64 = sqlx::query_scalar(
                "UPDATE devices SET log_seq = log_seq + $1 WHERE uuid = $2 RETURNING log_seq",
            )
            .bind(count)
            .bind(uuid)
            .fetch_one(&mut *tx)
            .await?;
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
        let mut lines: Vec<LogRow> = sqlx::query_as(&format!(
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
        if after.is_none() {
            lines.reverse();
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sqlx::AnyPool;

    use super::super::{Db, ScratchSchema, sqlite_url};
    use super::LogRow;

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
