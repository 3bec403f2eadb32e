//! `fleets`: each fleet, its pin and the count of changes its targets
//! have seen. A new fleet's first provisioning key is written with it.

use super::{Db, DbError, End, is_unique_violation, now};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct FleetRow {
    pub name: String,
    pub created_at: i64,
    pub pinned_release: Option<String>,
    /// How many changes the fleet's targets have seen.
    pub generation: i64,
}

const FLEET_COLUMNS: &str = "name, created_at, pinned_release, generation";

impl Db {
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
        Ok(
            sqlx::query_as(&format!("SELECT {FLEET_COLUMNS} FROM fleets ORDER BY name"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn fleet(&self, name: &str) -> Result<Option<FleetRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {FLEET_COLUMNS} FROM fleets WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Counts one more change to what `fleet`'s targets depend on.
    pub async fn bump_generation(&self, fleet: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE fleets SET generation = generation + 1 WHERE name = $1")
            .bind(fleet)
            .execute(&self.pool)
            .await?;
        Ok(())
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
}
