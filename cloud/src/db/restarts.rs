//! `restart_requests`: how many times each service of a device has been
//! asked to restart; a device restarts a service when its count grows.

use std::collections::{BTreeMap, HashMap};

use super::{Db, DbError};

impl Db {
    /// Asks `uuid` to restart `service` once more, and says how many times
    /// it has been asked. The caller counts the change to the fleet's
    /// targets.
    pub async fn request_restart(&self, uuid: &str, service: &str) -> Result<u64, DbError> {
        let count: i64 = sqlx::query_scalar(
            "INSERT INTO restart_requests (uuid, service, count) VALUES ($1, $2, 1) \
             ON CONFLICT (uuid, service) DO UPDATE SET count = restart_requests.count + 1 \
             RETURNING count",
        )
        .bind(uuid)
        .bind(service)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Restart counts of `fleet`'s devices, by uuid.
    pub async fn fleet_restart_requests(
        &self,
        fleet: &str,
    ) -> Result<HashMap<String, BTreeMap<String, u64>>, DbError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT r.uuid, r.service, r.count FROM restart_requests r \
             JOIN devices d ON d.uuid = r.uuid WHERE d.fleet = $1",
        )
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?;
        let mut counts: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
        for (uuid, service, count) in rows {
            counts
                .entry(uuid)
                .or_default()
                .insert(service, u64::try_from(count).unwrap_or(0));
        }
        Ok(counts)
    }
}
