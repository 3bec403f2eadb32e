//! `releases`: each fleet's releases in order, and which one a device
//! should run.

use super::{Db, DbError, DeviceRow, End, is_unique_violation, now};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ReleaseRow {
    pub id: String,
    pub fleet: String,
    pub seq: i64,
    pub version: String,
    pub services: String,
    pub created_at: i64,
}

pub enum NewRelease {
    Created(ReleaseRow),
    VersionTaken,
}

const RELEASE_COLUMNS: &str = "id, fleet, seq, version, services, created_at";

impl Db {
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
            let seq: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM releases WHERE fleet = $1",
            )
            .bind(fleet)
            .fetch_one(&mut *tx)
            .await?;
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
        Ok(sqlx::query_as(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE fleet = $1 ORDER BY seq"
        ))
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn release_by_version(
        &self,
        fleet: &str,
        version: &str,
    ) -> Result<Option<ReleaseRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE fleet = $1 AND version = $2"
        ))
        .bind(fleet)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn release_by_id(&self, id: &str) -> Result<Option<ReleaseRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn latest_release(&self, fleet: &str) -> Result<Option<ReleaseRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE fleet = $1 ORDER BY seq DESC LIMIT 1"
        ))
        .bind(fleet)
        .fetch_optional(&self.pool)
        .await?)
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
}
