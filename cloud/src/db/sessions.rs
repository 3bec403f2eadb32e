//! The dashboard's sign-ins, stored by the hash of their session id.

use super::{Db, DbError, End, now};

/// A signed-in browser's session as stored: never the session id itself.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SessionRow {
    /// The API token the browser signed in with.
    pub token_id: String,
    /// The token every form of this session must carry.
    pub csrf: String,
    pub expires_at: i64,
}

impl Db {
    /// Stores a new session, and drops every session that has expired.
    pub async fn create_session(
        &self,
        id_hash: &str,
        token_id: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), DbError> {
        let at = now();
        self.write(async |tx| {
            sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
                .bind(at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO dashboard_sessions (id_hash, token_id, csrf, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id_hash)
            .bind(token_id)
            .bind(csrf)
            .bind(at)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            Ok(End::Commit(()))
        })
        .await
    }

    /// The live session with this id hash: not expired, and signed in
    /// with a token that is still live.
    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>, DbError> {
        Ok(sqlx::query_as(
            "SELECT s.token_id, s.csrf, s.expires_at FROM dashboard_sessions s \
             JOIN api_tokens t ON t.id = s.token_id \
             WHERE s.id_hash = $1 AND s.expires_at > $2 AND t.revoked_at IS NULL",
        )
        .bind(id_hash)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ends a session; `false` if there was none.
    pub async fn delete_session(&self, id_hash: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
