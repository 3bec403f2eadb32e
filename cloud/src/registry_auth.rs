//! The registry reads its tokens from the data directory once, at start.
//! This layer in front of it refuses, on every request, a token the fleet
//! API has revoked since, so revoking the admin token takes effect on the
//! registry at once too.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kelp_registry::{ApiError, ErrorCode};

use crate::db::Db;
use crate::secret;

/// Passes a request on unless the token it presents (as a bearer token or
/// a basic-auth password, as the registry accepts them) was revoked.
pub async fn refuse_revoked(State(db): State<Db>, req: Request<Body>, next: Next) -> Response {
    if let Some(token) = presented(&req) {
        match db.token_revoked(&secret::hash(&token)).await {
            Ok(true) => return unauthorized(),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot check a registry token");
                return (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response();
            }
        }
    }
    next.run(req).await
}

fn presented(req: &Request<Body>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        return decoded.split_once(':').map(|(_, p)| p.to_owned());
    }
    None
}

/// A 401 as the registry answers one: its own error type writes the OCI
/// body and the basic-auth challenge.
fn unauthorized() -> Response {
    ApiError::Client {
        status: StatusCode::UNAUTHORIZED,
        code: ErrorCode::Unauthorized,
        message: "the token presented was revoked".to_owned(),
        headers: vec![(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"kelp\""),
        )],
    }
    .into_response()
}
