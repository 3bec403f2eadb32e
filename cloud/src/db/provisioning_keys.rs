//! `provisioning_keys`: the keys devices register into a fleet with, by
//! hash; one is live per fleet.

use super::{Db, DbError, End, now};

impl Db {
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
        Ok(sqlx::query_scalar(
            "SELECT fleet FROM provisioning_keys WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?)
    }
}
