//! The fleet API: `/api/v1/…` for people and tools holding an API token,
//! `/device/v1/…` for devices holding a provisioning key (to register) or
//! their device key. `GET /api/v1/openapi.json` serves the OpenAPI document
//! of every route, built from the handlers' annotations.
//!
//! Handlers live by resource, each a thin layer over [`crate::ops`]: it
//! takes the request apart, calls the operation, and answers in JSON.

mod device;
mod devices;
mod doc;
mod extract;
mod fleets;
mod maps;
mod releases;
mod tokens;
mod variables;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use device::{MAX_WAIT, RECHECK};
pub use extract::MAX_JSON_BODY;

use crate::ControlPlane;
use crate::ops::{self, ApiError, Scope};

/// What every handler answers.
type Answer = Result<Response, ApiError>;

/// The shared state, as handlers take it.
type Cp = State<ControlPlane>;

/// A query string, parsed or refused by [`query`].
type Q<T> = Result<Query<T>, QueryRejection>;

/// The fleet API's routes. Unknown paths under `/api/` and `/device/` get a
/// JSON 404.
pub fn router(cp: ControlPlane) -> Router {
    let (routes, _) = routes().split_for_parts();
    routes
        .route("/api/{*rest}", axum::routing::any(no_route))
        .route("/device/{*rest}", axum::routing::any(no_route))
        .with_state(cp)
}

/// The fleet API's OpenAPI document, as `GET /api/v1/openapi.json` serves
/// it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    doc::finish(routes().into_openapi())
}

/// Every route of the fleet API, each with its documentation: the one table
/// both the router and the OpenAPI document are built from, so a handler
/// cannot be routed without being documented (`routes!` needs the
/// handler's `#[utoipa::path]`).
fn routes() -> OpenApiRouter<ControlPlane> {
    use device::*;
    use devices::*;
    use fleets::*;
    use maps::*;
    use releases::*;
    use tokens::*;
    use variables::*;
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .routes(routes!(doc::serve_openapi))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_fleets, create_fleet))
        .routes(routes!(show_fleet))
        .routes(routes!(rotate_provisioning_key))
        .routes(routes!(list_releases, create_release))
        .routes(routes!(show_release))
        .routes(routes!(pin_fleet))
        .routes(routes!(list_fleet_env))
        .routes(routes!(set_fleet_env, delete_fleet_env))
        .routes(routes!(list_devices))
        .routes(routes!(show_device, update_device))
        .routes(routes!(pin_device))
        .routes(routes!(device_map, set_device_map, delete_device_map))
        .routes(routes!(fleet_map, set_fleet_map, delete_fleet_map))
        .routes(routes!(set_tag, delete_tag))
        .routes(routes!(list_device_env))
        .routes(routes!(set_device_env, delete_device_env))
        .routes(routes!(device_logs))
        .routes(routes!(restart_service))
        .routes(routes!(device_samples))
        .routes(routes!(register))
        .routes(routes!(device_state, report_state))
        .routes(routes!(upload_logs))
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such endpoint; see /api/v1/openapi.json")
}

/// A path's parameters, or a JSON 400 if they are not text.
fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t)
        .map_err(|e| ApiError::field("path", e.body_text()))
}

fn query<T>(q: Q<T>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::field("query", e.body_text()))
}

/// A JSON answer with status 200.
fn json(body: impl serde::Serialize) -> Response {
    axum::Json(body).into_response()
}

/// The fleet or device as it is now, as the API shows it.
async fn now_view(cp: &ControlPlane, scope: &Scope) -> Answer {
    Ok(match scope {
        Scope::Fleet(f) => {
            json(ops::fleets::view(cp, ops::fleets::find(cp, &f.name).await?).await?)
        }
        Scope::Device(d) => {
            json(ops::devices::view(cp, ops::devices::find(cp, &d.uuid).await?).await?)
        }
    })
}
