//! API tokens.

use kelp_core::api::{TokenCreated, TokenInfo};

use super::{ApiError, check_id, check_text};
use crate::db::Revoke;
use crate::{ControlPlane, secret};

/// The live tokens, oldest first; never the tokens themselves.
pub async fn all(cp: &ControlPlane) -> Result<Vec<TokenInfo>, ApiError> {
    Ok(cp.db.tokens().await?)
}

/// The id of the live API token `token`, if it is one.
pub async fn live(cp: &ControlPlane, token: &str) -> Result<Option<String>, ApiError> {
    Ok(cp.db.token_by_hash(&secret::hash(token)).await?)
}

/// Makes a token named `name`, returned this once.
pub async fn create(cp: &ControlPlane, by: &str, name: &str) -> Result<TokenCreated, ApiError> {
    check_text("name", name)?;
    let token = secret::new_secret("")?;
    let id = secret::new_id();
    let created_at = cp.db.create_token(&id, name, &secret::hash(&token)).await?;
    tracing::info!(by, token = %id, "API token created");
    Ok(TokenCreated {
        id,
        name: name.to_owned(),
        token,
        created_at,
    })
}

/// Revokes token `id`: it stops working here and on the registry. A 404
/// if no live token has the id, a 409 if it is the last live one.
pub async fn revoke(cp: &ControlPlane, by: &str, id: &str) -> Result<(), ApiError> {
    check_id("id", id)?;
    match cp.db.revoke_token(id).await? {
        Revoke::Revoked => {
            tracing::info!(by, token = %id, "API token revoked");
            Ok(())
        }
        Revoke::NotFound => Err(ApiError::not_found(format!("no live token with id `{id}`"))),
        Revoke::LastToken => Err(ApiError::conflict(
            "this is the only live token; create another before revoking it",
        )),
    }
}
