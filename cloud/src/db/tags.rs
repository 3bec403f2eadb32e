//! `device_tags`: a device's tags, name and value.

use std::collections::BTreeMap;

use super::{Db, DbError};

impl Db {
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
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT tag, value FROM device_tags WHERE uuid = $1 ORDER BY tag")
                .bind(uuid)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }
}
