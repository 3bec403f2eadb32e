//! `api_tokens`: the tokens people and tools call the API with, stored
//! by hash.

pub use kelp_core::api::TokenInfo;

use super::{Db, DbError, End, now};

pub enum Revoke {
    Revoked,
    NotFound,
    /// It is the only token left; revoking it would lock everyone out.
    LastToken,
}

/// A live token as listed: never its hash.
#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    name: String,
    created_at: i64,
}

impl From<TokenRow> for TokenInfo {
    fn from(r: TokenRow) -> Self {
        TokenInfo {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
        }
    }
}

impl Db {
    /// Adds a token (by hash) unless that hash is already known; a token
    /// revoked earlier stays revoked.
    pub async fn adopt_token(&self, id: &str, name: &str, hash: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(hash)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn create_token(&self, id: &str, name: &str, hash: &str) -> Result<i64, DbError> {
        let created_at = now();
        sqlx::query("INSERT INTO api_tokens (id, name, hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(name)
            .bind(hash)
            .bind(created_at)
            .execute(&self.pool)
            .await?;
        Ok(created_at)
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, DbError> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, name, created_at FROM api_tokens WHERE revoked_at IS NULL \
             ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(TokenInfo::from).collect())
    }

    /// The id of the live token with this hash.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<String>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn revoke_token(&self, id: &str) -> Result<Revoke, DbError> {
        self.write(async |tx| {
            if let Some(lock) = self.serialize_writes("api_tokens") {
                sqlx::query(&lock).execute(&mut *tx).await?;
            }
            let revoked = sqlx::query(
                "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if revoked.rows_affected() == 0 {
                return Ok(End::Rollback(Revoke::NotFound));
            }
            let live: i64 =
                sqlx::query_scalar("SELECT COUNT(*) AS n FROM api_tokens WHERE revoked_at IS NULL")
                    .fetch_one(&mut *tx)
                    .await?;
            if live == 0 {
                return Ok(End::Rollback(Revoke::LastToken));
            }
            Ok(End::Commit(Revoke::Revoked))
        })
        .await
    }
}
