//! The web dashboard at `/`: pages rendered on the server from the
//! templates in `cloud/templates/` (compiled in, HTML-escaped by default),
//! one small stylesheet and one small script served from the binary, and
//! no build step. A browser signs in with an API token and then holds a
//! session cookie; every form it posts carries the session's CSRF token.
//!
//! The pages render what [`crate::ops`] reads, and their forms call the
//! same operations as the fleet API's handlers, so a variable set here
//! reaches devices as one set through the API does, refused for the same
//! reasons with the same words.

mod devices;
mod fleets;
mod format;
mod forms;
mod logs;
mod plot;
mod releases;
mod session;
#[cfg(test)]
mod tests;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::ControlPlane;
use crate::db::DbError;
use crate::ops::ApiError;

pub use session::SESSION_LIFETIME;

/// Largest form a page posts. The largest field is a variable's value (at
/// most 16 KiB), which percent-encoding can make three times longer;
/// anything past this is refused before it is parsed.
pub const MAX_FORM_BODY: usize = 64 << 10;

/// What every dashboard response says about how a browser may use it:
/// scripts and styles from this server only (so injected markup cannot
/// run), never inside another site's frame (no clickjacking), and no
/// referrer sent elsewhere (URLs carry device ids).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     form-action 'self'; base-uri 'none'; object-src 'none'";

/// The dashboard's routes. A form that a fleet and a device both have
/// (pin, variables) posts to one handler, which tells the two apart by
/// the path.
pub fn router(cp: ControlPlane) -> Router {
    Router::new()
        .route("/", get(fleets::fleets))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/fleets", post(fleets::create_fleet))
        .route("/fleets/{name}", get(fleets::fleet))
        .route(
            "/fleets/{name}/provisioning-key",
            post(fleets::rotate_provisioning_key),
        )
        .route("/fleets/{name}/pin", post(forms::pin))
        .route("/fleets/{name}/env", post(forms::set_env))
        .route("/fleets/{name}/env/delete", post(forms::delete_env))
        .route("/fleets/{name}/releases/{version}", get(releases::release))
        .route("/devices/{uuid}", get(devices::device))
        .route("/devices/{uuid}/pin", post(forms::pin))
        .route(
            "/devices/{uuid}/services/{service}/restart",
            post(devices::restart_service),
        )
        .route("/devices/{uuid}/env", post(forms::set_env))
        .route("/devices/{uuid}/env/delete", post(forms::delete_env))
        .route("/devices/{uuid}/logs/stream", get(logs::stream))
        .route("/static/dashboard.css", get(stylesheet))
        .route("/static/dashboard.js", get(script))
        .layer(DefaultBodyLimit::max(MAX_FORM_BODY))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(cp)
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages show secrets (a new provisioning key) and live state.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

const STYLESHEET: &str = include_str!("../templates/static/dashboard.css");
const SCRIPT: &str = include_str!("../templates/static/dashboard.js");

/// How long a browser may keep the stylesheet and script: they change only
/// with the binary, and an hour bounds how long an upgrade looks stale.
const ASSET_CACHE: &str = "public, max-age=3600";

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, ASSET_CACHE),
        ],
        STYLESHEET,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, ASSET_CACHE),
        ],
        SCRIPT,
    )
        .into_response()
}

/// What went wrong serving a page: an operation refused or failed (shown
/// to the person as a page that says what; a server fault is logged in
/// full and shown as a bare "internal error"), or, without a session, a
/// trip to the sign-in page.
#[derive(Debug)]
pub enum DashError {
    /// Not signed in, or the session ended.
    SignIn,
    Failed(ApiError),
}

impl DashError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        DashError::Failed(ApiError::new(status, message))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ApiError> for DashError {
    fn from(e: ApiError) -> Self {
        DashError::Failed(e)
    }
}

impl From<DbError> for DashError {
    fn from(e: DbError) -> Self {
        DashError::Failed(e.into())
    }
}

impl From<crate::secret::NoRandomness> for DashError {
    fn from(e: crate::secret::NoRandomness) -> Self {
        DashError::Failed(e.into())
    }
}

impl From<askama::Error> for DashError {
    fn from(e: askama::Error) -> Self {
        DashError::Failed(ApiError::Internal(format!("cannot render a page: {e}")))
    }
}

#[derive(askama::Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

impl IntoResponse for DashError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            DashError::SignIn => return Redirect::to("/login").into_response(),
            DashError::Failed(ApiError::Client {
                status, message, ..
            }) => (status, message),
            DashError::Failed(ApiError::Internal(detail)) => {
                tracing::error!(error = %detail, "dashboard request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("error"),
            message: &message,
        };
        match askama::Template::render(&page) {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "cannot render the error page");
                (status, message).into_response()
            }
        }
    }
}

/// A rendered page, or the error rendering it.
fn render(page: &impl askama::Template) -> Result<Response, DashError> {
    Ok(Html(page.render()?).into_response())
}
