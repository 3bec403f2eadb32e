//! The dashboard's sessions: a browser signs in with a live API token and
//! then holds a session id, whose sha256 alone is stored.

use super::ApiError;
use crate::db::{self, SessionRow};
use crate::{ControlPlane, secret};

/// Opens a session for `token` lasting `lifetime` seconds and returns its
/// id (for the cookie; only its hash is kept), or `None` if `token` is not
/// a live API token.
pub async fn open(
    cp: &ControlPlane,
    token: &str,
    lifetime: i64,
) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let Some(token_id) = super::tokens::live(cp, token).await? else {
        return Ok(None);
    };
    let id = secret::new_secret("")?;
    let csrf = secret::new_secret("")?;
    cp.db
        .create_session(
            &secret::hash(&id),
            &token_id,
            &csrf,
            db::now().saturating_add(lifetime),
        )
        .await?;
    tracing::info!(token = %token_id, "signed in to the dashboard");
    Ok(Some(id))
}

/// The live session whose id has the sha256 `id_hash`.
pub async fn find(cp: &ControlPlane, id_hash: &str) -> Result<Option<SessionRow>, ApiError> {
    Ok(cp.db.session(id_hash).await?)
}

/// Ends the session whose id has the sha256 `id_hash`.
pub async fn close(cp: &ControlPlane, id_hash: &str, token_id: &str) -> Result<(), ApiError> {
    cp.db.delete_session(id_hash).await?;
    tracing::info!(token = %token_id, "signed out of the dashboard");
    Ok(())
}
