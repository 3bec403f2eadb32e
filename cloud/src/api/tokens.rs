//! `/api/v1/tokens`: API tokens.

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::extract::{JsonBody, User};
use super::{Answer, Cp, json, path};
use crate::ops::{self, ErrorBody, NewToken, TokenCreated, TokenInfo};

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", security(("api_token" = [])), responses((status = 200, description = "The live tokens, oldest first; never the tokens themselves.", body = Vec<TokenInfo>)))]
pub(super) async fn list_tokens(cp: Cp, _user: User) -> Answer {
    Ok(json(ops::tokens::all(&cp).await?))
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken, security(("api_token" = [])), responses((status = 201, description = "The new token, shown this once.", body = TokenCreated)))]
pub(super) async fn create_token(cp: Cp, user: User, JsonBody(body): JsonBody<NewToken>) -> Answer {
    let created = ops::tokens::create(&cp, &user.token_id, &body.name).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "The token's id.", pattern = r"^[0-9A-Fa-f-]{36}$")), security(("api_token" = [])), responses((status = 204, description = "Revoked; it no longer works here or on the registry."), (status = 404, description = "No live token with this id.", body = ErrorBody), (status = 409, description = "It is the only live token.", body = ErrorBody)))]
pub(super) async fn revoke_token(
    cp: Cp,
    user: User,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    ops::tokens::revoke(&cp, &user.token_id, &path(id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
