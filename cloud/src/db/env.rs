//! `env_vars`: environment variables set for a fleet or one of its
//! devices, for every service or one.

use super::{Db, DbError};

/// One environment variable; an empty `device` or `service` means all.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EnvRow {
    pub device: String,
    pub service: String,
    pub name: String,
    pub value: String,
}

const ENV_COLUMNS: &str = "device, service, name, value";

impl Db {
    /// Every variable of a fleet, at every scope.
    pub async fn fleet_env(&self, fleet: &str) -> Result<Vec<EnvRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ENV_COLUMNS} FROM env_vars WHERE fleet = $1"
        ))
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The variables set at one scope (`device` and `service` empty for
    /// the whole fleet and every service).
    pub async fn env_at(
        &self,
        fleet: &str,
        device: &str,
        service: &str,
    ) -> Result<Vec<EnvRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ENV_COLUMNS} FROM env_vars \
             WHERE fleet = $1 AND device = $2 AND service = $3 ORDER BY name"
        ))
        .bind(fleet)
        .bind(device)
        .bind(service)
        .fetch_all(&self.pool)
        .await?)
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
}
