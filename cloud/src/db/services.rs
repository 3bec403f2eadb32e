//! `device_services` and `service_samples`: each service as a device last
//! reported it, and a day of samples of its memory and restarts. A
//! device's report writes both, with the device's own row, in one
//! transaction.

use std::collections::BTreeMap;

use kelp_core::api::ServiceSample;

use super::{Db, DbError, End, now};

/// Seconds within which a report that says what the last sample said adds
/// no sample; a change of memory or restarts is always stored (a device
/// reports memory at most every 10 seconds).
pub const SAMPLE_EVERY: i64 = 10;

/// Seconds a sample is kept: a day of history, at most 8,640 samples of a
/// service.
pub const KEPT_SAMPLE_AGE: i64 = 24 * 60 * 60;

/// One service as a device last reported it.
#[derive(Clone, Debug, sqlx::FromRow)]
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

/// One sample as stored.
#[derive(sqlx::FromRow)]
struct SampleRow {
    service: String,
    at: i64,
    memory: Option<i64>,
    restarts: i64,
}

impl Db {
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

    pub async fn device_services(&self, uuid: &str) -> Result<Vec<ServiceRow>, DbError> {
        Ok(sqlx::query_as(
            "SELECT service, state, memory, restarts, last_exit, updated_at FROM device_services \
             WHERE uuid = $1 ORDER BY service",
        )
        .bind(uuid)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Each service's samples since `since` (seconds), oldest first.
    pub async fn service_samples(
        &self,
        uuid: &str,
        since: i64,
    ) -> Result<BTreeMap<String, Vec<ServiceSample>>, DbError> {
        let rows: Vec<SampleRow> = sqlx::query_as(
            "SELECT service, at, memory, restarts FROM service_samples \
             WHERE uuid = $1 AND at >= $2 ORDER BY service, at",
        )
        .bind(uuid)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut samples: BTreeMap<String, Vec<ServiceSample>> = BTreeMap::new();
        for r in rows {
            samples.entry(r.service).or_default().push(ServiceSample {
                at: r.at,
                memory: r.memory,
                restarts: r.restarts,
            });
        }
        Ok(samples)
    }
}
