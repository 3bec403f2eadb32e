//! The `hardware_map` column of `fleets` and of `devices`: the map the
//! cloud gives a fleet's devices, or one device. One module for both,
//! since every read and write takes the scope as a parameter.

use super::{Db, DbError};

impl Db {
    /// The hardware map given to `fleet` (or to a device of it, with
    /// `device`), if any.
    pub async fn hardware_map(
        &self,
        fleet: &str,
        device: Option<&str>,
    ) -> Result<Option<String>, DbError> {
        let q = match device {
            None => {
                sqlx::query_scalar("SELECT hardware_map FROM fleets WHERE name = $1").bind(fleet)
            }
            Some(uuid) => {
                sqlx::query_scalar("SELECT hardware_map FROM devices WHERE uuid = $1").bind(uuid)
            }
        };
        let map: Option<Option<String>> = q.fetch_optional(&self.pool).await?;
        Ok(map.flatten())
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
        Ok(sqlx::query_as(
            "SELECT uuid, hardware_map FROM devices WHERE fleet = $1 AND hardware_map IS NOT NULL",
        )
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?)
    }
}
