//! The fleet API: `/api/v1/…` for people and tools holding an API token,
//! `/device/v1/…` for devices holding a provisioning key (to register) or
//! their device key. `GET /api/v1/openapi.json` serves the OpenAPI document
//! of every route, built from the handlers' annotations below.

mod doc;
mod error;
mod extract;
mod targets;
mod types;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use extract::MAX_JSON_BODY;
pub use targets::{MAX_COPY_AGE, Targets};
pub use types::*;

use crate::ControlPlane;
use crate::db::{
    self, DeviceRow, EnvRow, FleetRow, KeyedDevice, NewDevice, Registered, ReleaseRow, Revoke,
};
use crate::secret;
use extract::{DeviceKey, JsonBody, ProvisioningKey, User};
use targets::Target;

/// Longest a device may long-poll its target state (`?wait=`). Longer waits
/// are cut to this: short enough to pass through proxies that drop idle
/// connections after a minute or two, long enough that an idle fleet costs
/// one request per device per minute.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How often a held `?wait=` request looks at the database again even
/// without word of a change: another process serving the same database may
/// have changed the target, and this bounds how late its devices hear. A
/// look that finds the fleet's change count where it was costs one small
/// read.
pub const RECHECK: Duration = Duration::from_secs(5);

/// Most devices one page of `GET /api/v1/devices` holds, and the default.
/// Each device costs a few queries to show, so a page is bounded rather
/// than a whole fleet of thousands read for one request.
pub const MAX_DEVICE_PAGE: i64 = 500;

/// A device counts as online if it asked for its target this recently: two
/// of its longest polls, so one slow round trip does not flap it offline.
pub const ONLINE_WINDOW: i64 = 2 * 60;

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

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::field("query", e.body_text()))
}

// --- tokens ---

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", security(("api_token" = [])), responses((status = 200, description = "The live tokens, oldest first; never the tokens themselves.", body = Vec<TokenInfo>)))]
async fn list_tokens(State(cp): State<ControlPlane>, _user: User) -> Result<Response, ApiError> {
    Ok(axum::Json(cp.db.tokens().await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken, security(("api_token" = [])), responses((status = 201, description = "The new token, shown this once.", body = TokenCreated)))]
async fn create_token(
    State(cp): State<ControlPlane>,
    user: User,
    JsonBody(body): JsonBody<NewToken>,
) -> Result<Response, ApiError> {
    check_text("name", &body.name)?;
    let token = secret::new_secret("")?;
    let id = secret::new_id();
    let created_at = cp
        .db
        .create_token(&id, &body.name, &secret::hash(&token))
        .await?;
    tracing::info!(by = %user.token_id, token = %id, "API token created");
    let created = TokenCreated {
        id,
        name: body.name,
        token,
        created_at,
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "The token's id.", pattern = r"^[0-9A-Fa-f-]{36}$")), security(("api_token" = [])), responses((status = 204, description = "Revoked; it no longer works here or on the registry."), (status = 404, description = "No live token with this id.", body = ErrorBody), (status = 409, description = "It is the only live token.", body = ErrorBody)))]
async fn revoke_token(
    State(cp): State<ControlPlane>,
    user: User,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path(id)?;
    check_id("id", &id)?;
    match cp.db.revoke_token(&id).await? {
        Revoke::Revoked => {
            tracing::info!(by = %user.token_id, token = %id, "API token revoked");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Revoke::NotFound => Err(ApiError::not_found(format!("no live token with id `{id}`"))),
        Revoke::LastToken => Err(ApiError::conflict(
            "this is the only live token; create another before revoking it",
        )),
    }
}

// --- fleets ---

/// The version of release `id`, read only if it is not `known` already.
async fn version_of(
    cp: &ControlPlane,
    id: Option<&str>,
    known: Option<&ReleaseRow>,
) -> Result<Option<String>, ApiError> {
    let Some(id) = id else {
        return Ok(None);
    };
    if let Some(r) = known.filter(|r| r.id == id) {
        return Ok(Some(r.version.clone()));
    }
    Ok(cp.db.release_by_id(id).await?.map(|r| r.version))
}

async fn fleet_view(cp: &ControlPlane, f: FleetRow) -> Result<FleetView, ApiError> {
    let latest = cp.db.latest_release(&f.name).await?;
    let pinned = version_of(cp, f.pinned_release.as_deref(), latest.as_ref()).await?;
    Ok(FleetView {
        name: f.name,
        created_at: f.created_at,
        pinned_release: pinned,
        latest_release: latest.map(|r| r.version),
    })
}

async fn find_fleet(cp: &ControlPlane, name: &str) -> Result<FleetRow, ApiError> {
    check_fleet_name("name", name)?;
    cp.db
        .fleet(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no fleet named `{name}`")))
}

#[utoipa::path(post, path = "/api/v1/fleets", tag = "fleets", request_body = NewFleet, security(("api_token" = [])), responses((status = 201, description = "The new fleet and its provisioning key, shown this once.", body = FleetCreated), (status = 409, description = "A fleet of this name exists.", body = ErrorBody)))]
async fn create_fleet(
    State(cp): State<ControlPlane>,
    user: User,
    JsonBody(body): JsonBody<NewFleet>,
) -> Result<Response, ApiError> {
    check_fleet_name("name", &body.name)?;
    let key = secret::new_secret(secret::PROVISIONING_PREFIX)?;
    let created = cp
        .db
        .create_fleet(&body.name, &secret::new_id(), &secret::hash(&key))
        .await?;
    if !created {
        return Err(ApiError::conflict(format!(
            "a fleet named `{}` already exists",
            body.name
        )));
    }
    tracing::info!(by = %user.token_id, fleet = %body.name, "fleet created");
    let fleet = find_fleet(&cp, &body.name).await?;
    let view = FleetCreated {
        fleet: fleet_view(&cp, fleet).await?,
        provisioning_key: key,
    };
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

#[utoipa::path(get, path = "/api/v1/fleets", tag = "fleets", security(("api_token" = [])), responses((status = 200, description = "Every fleet, by name.", body = Vec<FleetView>)))]
async fn list_fleets(State(cp): State<ControlPlane>, _user: User) -> Result<Response, ApiError> {
    let mut views = Vec::new();
    for f in cp.db.fleets().await? {
        views.push(fleet_view(&cp, f).await?);
    }
    Ok(axum::Json(views).into_response())
}

#[utoipa::path(get, path = "/api/v1/fleets/{name}", tag = "fleets", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), security(("api_token" = [])), responses((status = 200, description = "The fleet.", body = FleetView), (status = 404, description = "No such fleet.", body = ErrorBody)))]
async fn show_fleet(
    State(cp): State<ControlPlane>,
    _user: User,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let fleet = find_fleet(&cp, &path(name)?).await?;
    Ok(axum::Json(fleet_view(&cp, fleet).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/fleets/{name}/provisioning-key", tag = "fleets", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), security(("api_token" = [])), responses((status = 201, description = "The fleet's new provisioning key, shown this once; the previous one no longer works.", body = ProvisioningKeyCreated), (status = 404, description = "No such fleet.", body = ErrorBody)))]
async fn rotate_provisioning_key(
    State(cp): State<ControlPlane>,
    user: User,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let fleet = find_fleet(&cp, &path(name)?).await?;
    let key = secret::new_secret(secret::PROVISIONING_PREFIX)?;
    cp.db
        .rotate_provisioning_key(&fleet.name, &secret::new_id(), &secret::hash(&key))
        .await?;
    tracing::info!(by = %user.token_id, fleet = %fleet.name, "provisioning key rotated");
    let body = ProvisioningKeyCreated {
        fleet: fleet.name,
        provisioning_key: key,
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

// --- releases and pins ---

fn release_view(r: ReleaseRow) -> Result<ReleaseView, ApiError> {
    let services: BTreeMap<String, ServiceSpec> =
        serde_json::from_str(&r.services).map_err(|e| {
            ApiError::Internal(format!(
                "stored services of release {} do not parse: {e}",
                r.id
            ))
        })?;
    Ok(ReleaseView {
        id: r.id,
        fleet: r.fleet,
        version: r.version,
        created_at: r.created_at,
        services,
    })
}

#[utoipa::path(post, path = "/api/v1/fleets/{name}/releases", tag = "releases", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), request_body = NewRelease, security(("api_token" = [])), responses((status = 201, description = "The new release, which the fleet's devices that follow it now target.", body = ReleaseView), (status = 404, description = "No such fleet.", body = ErrorBody), (status = 409, description = "The fleet has a release of this version.", body = ErrorBody)))]
async fn create_release(
    State(cp): State<ControlPlane>,
    user: User,
    name: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<NewRelease>,
) -> Result<Response, ApiError> {
    let fleet = find_fleet(&cp, &path(name)?).await?;
    check_release(&body)?;
    let services = serde_json::to_string(&body.services)
        .map_err(|e| ApiError::Internal(format!("cannot encode services: {e}")))?;
    let created = cp
        .db
        .create_release(&fleet.name, &secret::new_id(), &body.version, &services)
        .await?;
    match created {
        db::NewRelease::Created(row) => {
            tracing::info!(by = %user.token_id, fleet = %fleet.name, version = %row.version, "release created");
            cp.changed(&fleet.name).await;
            Ok((StatusCode::CREATED, axum::Json(release_view(row)?)).into_response())
        }
        db::NewRelease::VersionTaken => Err(ApiError::conflict(format!(
            "fleet `{}` already has a release `{}`",
            fleet.name, body.version
        ))),
    }
}

#[utoipa::path(get, path = "/api/v1/fleets/{name}/releases", tag = "releases", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), security(("api_token" = [])), responses((status = 200, description = "The fleet's releases, oldest first.", body = Vec<ReleaseView>), (status = 404, description = "No such fleet.", body = ErrorBody)))]
async fn list_releases(
    State(cp): State<ControlPlane>,
    _user: User,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let fleet = find_fleet(&cp, &path(name)?).await?;
    let views = cp
        .db
        .releases(&fleet.name)
        .await?
        .into_iter()
        .map(release_view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(views).into_response())
}

async fn find_release(
    cp: &ControlPlane,
    fleet: &str,
    version: &str,
) -> Result<ReleaseRow, ApiError> {
    check_word("release", version)?;
    cp.db
        .release_by_version(fleet, version)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("fleet `{fleet}` has no release `{version}`")))
}

#[utoipa::path(get, path = "/api/v1/fleets/{name}/releases/{version}", tag = "releases", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("version" = String, Path, description = "The release's version.", pattern = r"^[A-Za-z0-9._+-]{1,64}$")), security(("api_token" = [])), responses((status = 200, description = "The release.", body = ReleaseView), (status = 404, description = "No such fleet, or it has no such release.", body = ErrorBody)))]
async fn show_release(
    State(cp): State<ControlPlane>,
    _user: User,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (name, version) = path(p)?;
    let fleet = find_fleet(&cp, &name).await?;
    let release = find_release(&cp, &fleet.name, &version).await?;
    Ok(axum::Json(release_view(release)?).into_response())
}

#[utoipa::path(put, path = "/api/v1/fleets/{name}/pin", tag = "releases", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), request_body = Pin, security(("api_token" = [])), responses((status = 200, description = "The fleet as pinned.", body = FleetView), (status = 404, description = "No such fleet, or it has no such release.", body = ErrorBody)))]
async fn pin_fleet(
    State(cp): State<ControlPlane>,
    user: User,
    name: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<Pin>,
) -> Result<Response, ApiError> {
    let fleet = find_fleet(&cp, &path(name)?).await?;
    let release = match &body.release {
        Some(v) => Some(find_release(&cp, &fleet.name, v).await?.id),
        None => None,
    };
    cp.db.pin_fleet(&fleet.name, release.as_deref()).await?;
    tracing::info!(by = %user.token_id, fleet = %fleet.name, release = ?body.release, "fleet pinned");
    cp.changed(&fleet.name).await;
    let fleet = find_fleet(&cp, &fleet.name).await?;
    Ok(axum::Json(fleet_view(&cp, fleet).await?).into_response())
}

// --- devices ---

async fn find_device(cp: &ControlPlane, uuid: &str) -> Result<DeviceRow, ApiError> {
    check_uuid("uuid", uuid)?;
    cp.db
        .device(uuid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no device with uuid `{uuid}`")))
}

async fn device_view(cp: &ControlPlane, d: DeviceRow) -> Result<DeviceView, ApiError> {
    // A pinned device's target is its pin, and a device that is up to date
    // runs its target: neither is read a second time.
    let target = cp.db.target_release(&d).await?;
    let pinned = version_of(cp, d.pinned_release.as_deref(), target.as_ref()).await?;
    let current = version_of(cp, d.current_release.as_deref(), target.as_ref()).await?;
    let tags = cp.db.device_tags(&d.uuid).await?;
    // Only this server writes the state, from the same enum it parses to.
    let update = match d.update.and_then(|u| Some((u.state.parse().ok()?, u))) {
        Some((state, u)) => Some(UpdateView {
            state,
            release: version_of(cp, Some(&u.release), target.as_ref()).await?,
            reason: u.reason,
            at: u.at,
        }),
        None => None,
    };
    let services = cp
        .db
        .device_services(&d.uuid)
        .await?
        .into_iter()
        .map(|s| {
            let view = ServiceStatusView {
                state: s.state,
                memory: s.memory,
                restarts: s.restarts,
                last_exit: s.last_exit,
                updated_at: s.updated_at,
            };
            (s.service, view)
        })
        .collect();
    Ok(DeviceView {
        online: db::now().saturating_sub(d.last_seen) <= ONLINE_WINDOW,
        uuid: d.uuid,
        name: d.name,
        fleet: d.fleet,
        arch: d.arch,
        agent_version: d.agent_version,
        last_seen: d.last_seen,
        created_at: d.created_at,
        pinned_release: pinned,
        target_release: target.map(|r| r.version),
        current_release: current,
        services,
        update,
        tags,
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeviceFilter {
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    fleet: Option<String>,
    /// Only devices whose uuid sorts after this one: the last uuid of the
    /// previous page.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    after: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(DeviceFilter), security(("api_token" = [])), responses((status = 200, description = "One page of devices, by uuid.", body = Vec<DeviceView>), (status = 404, description = "No fleet of the name `fleet` gives.", body = ErrorBody)))]
async fn list_devices(
    State(cp): State<ControlPlane>,
    _user: User,
    filter: Result<Query<DeviceFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let filter = query(filter)?;
    if let Some(fleet) = &filter.fleet {
        check_fleet_name("fleet", fleet)?;
        find_fleet(&cp, fleet).await?;
    }
    if let Some(after) = &filter.after {
        check_uuid("after", after)?;
    }
    let limit = filter.limit.unwrap_or(MAX_DEVICE_PAGE);
    if !(1..=MAX_DEVICE_PAGE).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("limit must be 1 to {MAX_DEVICE_PAGE}"),
        ));
    }
    let page = cp
        .db
        .devices(
            filter.fleet.as_deref(),
            filter.after.as_deref().unwrap_or(""),
            limit,
        )
        .await?;
    let mut views = Vec::with_capacity(page.len());
    for d in page {
        views.push(device_view(&cp, d).await?);
    }
    Ok(axum::Json(views).into_response())
}

#[utoipa::path(get, path = "/api/v1/devices/{uuid}", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), security(("api_token" = [])), responses((status = 200, description = "The device.", body = DeviceView), (status = 404, description = "No such device.", body = ErrorBody)))]
async fn show_device(
    State(cp): State<ControlPlane>,
    _user: User,
    uuid: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let device = find_device(&cp, &path(uuid)?).await?;
    Ok(axum::Json(device_view(&cp, device).await?).into_response())
}

/// `PATCH /api/v1/devices/{uuid}`: renames a device. The name is only
/// shown to people, so no device's target changes.
#[utoipa::path(patch, path = "/api/v1/devices/{uuid}", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), request_body = DeviceUpdate, security(("api_token" = [])), responses((status = 200, description = "The device as it is now.", body = DeviceView), (status = 404, description = "No such device.", body = ErrorBody)))]
async fn update_device(
    State(cp): State<ControlPlane>,
    user: User,
    uuid: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<DeviceUpdate>,
) -> Result<Response, ApiError> {
    let device = find_device(&cp, &path(uuid)?).await?;
    if let Some(name) = &body.name {
        check_text("name", name)?;
        cp.db.rename_device(&device.uuid, name).await?;
        tracing::info!(by = %user.token_id, uuid = %device.uuid, name = %name, "device renamed");
    }
    let device = find_device(&cp, &device.uuid).await?;
    Ok(axum::Json(device_view(&cp, device).await?).into_response())
}

#[utoipa::path(put, path = "/api/v1/devices/{uuid}/pin", tag = "releases", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), request_body = Pin, security(("api_token" = [])), responses((status = 200, description = "The device as pinned.", body = DeviceView), (status = 404, description = "No such device, or its fleet has no such release.", body = ErrorBody)))]
async fn pin_device(
    State(cp): State<ControlPlane>,
    user: User,
    uuid: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<Pin>,
) -> Result<Response, ApiError> {
    let device = find_device(&cp, &path(uuid)?).await?;
    let release = match &body.release {
        Some(v) => Some(find_release(&cp, &device.fleet, v).await?.id),
        None => None,
    };
    cp.db.pin_device(&device.uuid, release.as_deref()).await?;
    tracing::info!(by = %user.token_id, uuid = %device.uuid, release = ?body.release, "device pinned");
    cp.changed(&device.fleet).await;
    let device = find_device(&cp, &device.uuid).await?;
    Ok(axum::Json(device_view(&cp, device).await?).into_response())
}

/// Largest hardware map given from the cloud (a device reads one up to
/// this size from a file, too).
const MAX_MAP: usize = 256 << 10;

/// Refuses a map a device would refuse, naming the line at fault.
fn check_map(map: &str) -> Result<(), ApiError> {
    if map.len() > MAX_MAP {
        return Err(ApiError::field(
            "map",
            format!("a hardware map is at most {MAX_MAP} bytes"),
        ));
    }
    kelp_core::hardware_map::HardwareMap::parse(map)
        .map(|_| ())
        .map_err(|e| ApiError::field("map", format!("not a hardware map: {e}")))
}

fn map_answer(map: Option<String>) -> Response {
    axum::Json(HardwareMapView { map }).into_response()
}

/// `GET /api/v1/fleets/{name}/hardware-map` → `{ map }` (null for none).
#[utoipa::path(get, path = "/api/v1/fleets/{name}/hardware-map", tag = "hardware maps", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), security(("api_token" = [])), responses((status = 200, description = "The fleet's map (null for none).", body = HardwareMapView), (status = 404, description = "No such fleet.", body = ErrorBody)))]
async fn fleet_map(
    State(cp): State<ControlPlane>,
    _user: User,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let fleet = find_fleet(&cp, &path(name)?).await?;
    Ok(map_answer(cp.db.hardware_map(&fleet.name, None).await?))
}

/// `PUT /api/v1/fleets/{name}/hardware-map` `{ map }`: every device of the
/// fleet without a map of its own is given it.
#[utoipa::path(put, path = "/api/v1/fleets/{name}/hardware-map", tag = "hardware maps", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), request_body = NewHardwareMap, security(("api_token" = [])), responses((status = 200, description = "The map as set.", body = HardwareMapView), (status = 404, description = "No such fleet.", body = ErrorBody)))]
async fn set_fleet_map(
    State(cp): State<ControlPlane>,
    user: User,
    name: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<NewHardwareMap>,
) -> Result<Response, ApiError> {
    let fleet = find_fleet(&cp, &path(name)?).await?;
    check_map(&body.map)?;
    cp.db
        .set_hardware_map(&fleet.name, None, Some(&body.map))
        .await?;
    tracing::info!(by = %user.token_id, fleet = %fleet.name, "fleet hardware map set");
    cp.changed(&fleet.name).await;
    Ok(map_answer(Some(body.map)))
}

#[utoipa::path(delete, path = "/api/v1/fleets/{name}/hardware-map", tag = "hardware maps", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), security(("api_token" = [])), responses((status = 204, description = "Removed."), (status = 404, description = "No such fleet.", body = ErrorBody)))]
async fn delete_fleet_map(
    State(cp): State<ControlPlane>,
    user: User,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let fleet = find_fleet(&cp, &path(name)?).await?;
    cp.db.set_hardware_map(&fleet.name, None, None).await?;
    tracing::info!(by = %user.token_id, fleet = %fleet.name, "fleet hardware map removed");
    cp.changed(&fleet.name).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/devices/{uuid}/hardware-map` → the device's own map.
#[utoipa::path(get, path = "/api/v1/devices/{uuid}/hardware-map", tag = "hardware maps", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), security(("api_token" = [])), responses((status = 200, description = "The device's own map (null for none; its fleet's applies then).", body = HardwareMapView), (status = 404, description = "No such device.", body = ErrorBody)))]
async fn device_map(
    State(cp): State<ControlPlane>,
    _user: User,
    uuid: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let device = find_device(&cp, &path(uuid)?).await?;
    Ok(map_answer(
        cp.db
            .hardware_map(&device.fleet, Some(&device.uuid))
            .await?,
    ))
}

/// `PUT /api/v1/devices/{uuid}/hardware-map` `{ map }`: the device's own
/// map, over its fleet's.
#[utoipa::path(put, path = "/api/v1/devices/{uuid}/hardware-map", tag = "hardware maps", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), request_body = NewHardwareMap, security(("api_token" = [])), responses((status = 200, description = "The map as set.", body = HardwareMapView), (status = 404, description = "No such device.", body = ErrorBody)))]
async fn set_device_map(
    State(cp): State<ControlPlane>,
    user: User,
    uuid: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<NewHardwareMap>,
) -> Result<Response, ApiError> {
    let device = find_device(&cp, &path(uuid)?).await?;
    check_map(&body.map)?;
    cp.db
        .set_hardware_map(&device.fleet, Some(&device.uuid), Some(&body.map))
        .await?;
    tracing::info!(by = %user.token_id, uuid = %device.uuid, "device hardware map set");
    cp.changed(&device.fleet).await;
    Ok(map_answer(Some(body.map)))
}

#[utoipa::path(delete, path = "/api/v1/devices/{uuid}/hardware-map", tag = "hardware maps", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), security(("api_token" = [])), responses((status = 204, description = "Removed; the fleet's map applies."), (status = 404, description = "No such device.", body = ErrorBody)))]
async fn delete_device_map(
    State(cp): State<ControlPlane>,
    user: User,
    uuid: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let device = find_device(&cp, &path(uuid)?).await?;
    cp.db
        .set_hardware_map(&device.fleet, Some(&device.uuid), None)
        .await?;
    tracing::info!(by = %user.token_id, uuid = %device.uuid, "device hardware map removed");
    cp.changed(&device.fleet).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Longest tag value.
const MAX_TAG_VALUE: usize = 1024;

/// `PUT /api/v1/devices/{uuid}/tags/{tag}`: sets a tag; answers the device.
#[utoipa::path(put, path = "/api/v1/devices/{uuid}/tags/{tag}", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("tag" = String, Path, description = "The tag's name.", pattern = r"^[A-Za-z0-9._+-]{1,64}$")), request_body = TagValue, security(("api_token" = [])), responses((status = 200, description = "The device with the tag set.", body = DeviceView), (status = 404, description = "No such device.", body = ErrorBody)))]
async fn set_tag(
    State(cp): State<ControlPlane>,
    _user: User,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(body): JsonBody<TagValue>,
) -> Result<Response, ApiError> {
    let (uuid, tag) = path(p)?;
    check_word("tag", &tag)?;
    if body.value.chars().count() > MAX_TAG_VALUE || body.value.chars().any(char::is_control) {
        return Err(ApiError::field(
            "value",
            format!(
                "a tag's value is at most {MAX_TAG_VALUE} characters, none of them control characters"
            ),
        ));
    }
    let device = find_device(&cp, &uuid).await?;
    cp.db.set_tag(&device.uuid, &tag, &body.value).await?;
    Ok(axum::Json(device_view(&cp, device).await?).into_response())
}

/// `DELETE /api/v1/devices/{uuid}/tags/{tag}`.
#[utoipa::path(delete, path = "/api/v1/devices/{uuid}/tags/{tag}", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("tag" = String, Path, description = "The tag's name.", pattern = r"^[A-Za-z0-9._+-]{1,64}$")), security(("api_token" = [])), responses((status = 204, description = "Removed."), (status = 404, description = "No such device, or it has no such tag.", body = ErrorBody)))]
async fn delete_tag(
    State(cp): State<ControlPlane>,
    _user: User,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (uuid, tag) = path(p)?;
    check_word("tag", &tag)?;
    let device = find_device(&cp, &uuid).await?;
    if cp.db.delete_tag(&device.uuid, &tag).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "device `{uuid}` has no tag `{tag}`"
        )))
    }
}

/// Registers a device into the fleet whose provisioning key it presents.
/// Registering an existing uuid again (a re-flashed device that lost its
/// key) hands out a new key and the old one stops working; only the hash
/// is stored, so the old key cannot be handed out again. A uuid registered
/// in another fleet is refused, never moved.
#[utoipa::path(post, path = "/device/v1/register", tag = "device", request_body = Register, security(("provisioning_key" = [])), responses((status = 201, description = "Registered; the device key is shown this once.", body = RegisteredDevice), (status = 200, description = "Registered again (a re-flashed device): a new device key; the old one no longer works.", body = RegisteredDevice), (status = 403, description = "The uuid belongs to another fleet.", body = ErrorBody)))]
async fn register(
    State(cp): State<ControlPlane>,
    key: ProvisioningKey,
    JsonBody(body): JsonBody<Register>,
) -> Result<Response, ApiError> {
    check_uuid("uuid", &body.uuid)?;
    if let Some(name) = &body.name {
        check_text("name", name)?;
    }
    check_word("arch", &body.arch)?;
    check_word("agent_version", &body.agent_version)?;
    let device_key = secret::new_secret(secret::DEVICE_PREFIX)?;
    let registered = cp
        .db
        .register_device(&NewDevice {
            uuid: &body.uuid,
            fleet: &key.fleet,
            name: body.name.as_deref(),
            arch: &body.arch,
            agent_version: &body.agent_version,
            key_hash: &secret::hash(&device_key),
        })
        .await?;
    let status = match registered {
        Registered::New => StatusCode::CREATED,
        Registered::Again => StatusCode::OK,
        Registered::OtherFleet(_) => {
            return Err(ApiError::forbidden(format!(
                "device `{}` belongs to another fleet; this provisioning key cannot register it",
                body.uuid
            )));
        }
    };
    tracing::info!(uuid = %body.uuid, fleet = %key.fleet, "device registered");
    let out = RegisteredDevice {
        uuid: body.uuid,
        fleet: key.fleet,
        device_key,
    };
    Ok((status, axum::Json(out)).into_response())
}

// --- target state ---

/// The release's env for `service` with the stored variables over it, from
/// the weakest scope to the strongest: fleet, fleet and service, device,
/// device and service.
fn apply_env(
    mut base: BTreeMap<String, String>,
    vars: &[EnvRow],
    service: &str,
) -> BTreeMap<String, String> {
    let rank = |v: &EnvRow| match (v.device.is_empty(), v.service.is_empty()) {
        (true, true) => Some(0),
        (true, false) if v.service == service => Some(1),
        (false, true) => Some(2),
        (false, false) if v.service == service => Some(3),
        _ => None,
    };
    let mut applicable: Vec<(u8, &EnvRow)> = vars
        .iter()
        .filter_map(|v| rank(v).map(|r| (r, v)))
        .collect();
    applicable.sort_by_key(|(r, _)| *r);
    for (_, v) in applicable {
        base.insert(v.name.clone(), v.value.clone());
    }
    base
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StateQuery {
    /// Seconds to wait for the target to differ from `If-None-Match`; at
    /// most a minute is waited, however many are asked for.
    #[param(minimum = 0)]
    wait: Option<i64>,
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == etag || tag == "*"
        })
}

/// The answer to a device that holds `target` and whose `If-None-Match`
/// is in `headers`: the target, unless the device has it already.
fn changed_target(headers: &HeaderMap, target: &Target) -> Option<Response> {
    if etag_matches(headers, &target.etag) {
        return None;
    }
    let mut response = (StatusCode::OK, target.body.clone()).into_response();
    let h = response.headers_mut();
    h.insert(header::ETAG, target.etag_header.clone());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Some(response)
}

fn not_modified(target: &Target) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    response
        .headers_mut()
        .insert(header::ETAG, target.etag_header.clone());
    response
}

/// `GET /device/v1/state`: the calling device's target. With
/// `If-None-Match` naming the current ETag the answer is 304; with `?wait=N`
/// as well, the request is held until the target changes or N seconds (at
/// most [`MAX_WAIT`]) pass.
#[utoipa::path(get, path = "/device/v1/state", tag = "device", params(StateQuery, ("If-None-Match" = Option<String>, Header, description = "The ETag of the target the device holds.")), security(("device_key" = [])), responses((status = 200, description = "The calling device's target state.", body = TargetState, headers(("ETag" = String, description = "The target's version, for `If-None-Match`."))), (status = 304, description = "The target is the one `If-None-Match` names.", headers(("ETag" = String)))))]
async fn device_state(
    State(cp): State<ControlPlane>,
    DeviceKey { device }: DeviceKey,
    q: Result<Query<StateQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let wait = u64::try_from(q.wait.unwrap_or(0))
        .map_err(|_| ApiError::field("wait", "wait is a number of seconds, 0 or more"))?;
    let wait = Duration::from_secs(wait).min(MAX_WAIT);
    cp.seen.saw(&device.uuid);
    if wait.is_zero() {
        // The key's lookup read the change count: one query in all while
        // the fleet's copy is current.
        let target = cp.targets.of(&cp.db, &device).await?;
        return Ok(changed_target(&headers, &target).unwrap_or_else(|| not_modified(&target)));
    }
    let deadline = tokio::time::Instant::now() + wait;
    // The fleet the key found holds for the whole wait: a device never
    // moves to another. Subscribe before reading the target again, so a
    // change since the key was looked up, or between that read and the
    // wait, still wakes this request.
    let uuid = device.uuid;
    let fleet = device.fleet;
    let mut changes = cp.changes.subscribe(&fleet);
    let mut stopping = cp.changes.stopping();
    let mut device = device_now(&cp, &uuid).await?;
    let mut target = cp.targets.of(&cp.db, &device).await?;
    loop {
        if let Some(response) = changed_target(&headers, &target) {
            return Ok(response);
        }
        let now = tokio::time::Instant::now();
        let stopped = *stopping.borrow();
        if now >= deadline || stopped {
            return Ok(not_modified(&target));
        }
        // Wait for word of a change, the next recheck or the end of the
        // wait. A server shutting down answers at once rather than keep
        // every held device (and so its own exit) waiting out the wait.
        let until = deadline.min(now + RECHECK);
        let told = tokio::select! {
            woke = tokio::time::timeout_at(until, changes.changed()) => match woke {
                Ok(Ok(())) => true,
                Ok(Err(_)) => {
                    // No sender left: no more word will come; wait out the time.
                    tokio::time::sleep_until(until).await;
                    false
                }
                Err(_) => false,
            },
            // The borrow `wait_for` returns is not `Send`; drop it here.
            () = async { drop(stopping.wait_for(|s| *s).await) } => false,
        };
        // Work the target out again only if it may have changed: when told
        // so, or when another process counted a change this one was not
        // told of. A recheck that finds nothing costs one small read.
        let now = device_now(&cp, &uuid).await?;
        if told || now.generation != device.generation {
            device = now;
            target = cp.targets.of(&cp.db, &device).await?;
        }
    }
}

/// The device `uuid` as stored now, with its fleet's change count.
async fn device_now(cp: &ControlPlane, uuid: &str) -> Result<KeyedDevice, ApiError> {
    cp.db
        .keyed_device_by_uuid(uuid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no device with uuid `{uuid}`")))
}

// --- what devices report ---

/// `PATCH /device/v1/state`: the calling device says what changed.
#[utoipa::path(patch, path = "/device/v1/state", tag = "device", request_body = CurrentState, security(("device_key" = [])), responses((status = 204, description = "Recorded.")))]
async fn report_state(
    State(cp): State<ControlPlane>,
    DeviceKey { device: row }: DeviceKey,
    JsonBody(body): JsonBody<CurrentState>,
) -> Result<Response, ApiError> {
    if let Some(id) = &body.release {
        check_release_of(&cp, &row.fleet, "release", id).await?;
    }
    if body.services.len() > MAX_SERVICES {
        return Err(ApiError::field(
            "services",
            format!("a device reports at most {MAX_SERVICES} services at once"),
        ));
    }
    let mut services = Vec::with_capacity(body.services.len());
    for (name, report) in body.services {
        let at = format!("services.{name}");
        check_service_name(&at, &name)?;
        let report = match report {
            Some(r) => {
                let memory =
                    r.memory.map(i64::try_from).transpose().map_err(|_| {
                        ApiError::field(format!("{at}.memory"), "memory is too large")
                    })?;
                if let Some(why) = &r.last_exit
                    && why.len() > MAX_EXIT_REASON
                {
                    return Err(ApiError::field(
                        format!("{at}.last_exit"),
                        format!("an exit reason is at most {MAX_EXIT_REASON} bytes"),
                    ));
                }
                Some(db::ServiceReportRow {
                    // Display spells a state as its JSON name does.
                    state: r.state.to_string(),
                    memory,
                    restarts: i64::from(r.restarts),
                    last_exit: r.last_exit,
                })
            }
            None => None,
        };
        services.push(db::ReportedService {
            service: name,
            status: report,
        });
    }
    if let Some(update) = &body.update {
        check_release_of(&cp, &row.fleet, "update.release", &update.release).await?;
        if let Some(reason) = &update.reason
            && reason.len() > MAX_REASON
        {
            return Err(ApiError::field(
                "update.reason",
                format!("a reason is at most {MAX_REASON} bytes"),
            ));
        }
    }
    let update = body
        .update
        .as_ref()
        .map(|u| (u.state.to_string(), u.release.as_str(), u.reason.as_deref()));
    cp.db
        .report_state(
            &row.uuid,
            body.release.as_deref(),
            &services,
            update.as_ref().map(|(s, r, why)| (s.as_str(), *r, *why)),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Longest reason a device may give for an update's outcome.
const MAX_REASON: usize = 4096;

/// Refuses `id` unless it names a release of `fleet`.
async fn check_release_of(
    cp: &ControlPlane,
    fleet: &str,
    field: &str,
    id: &str,
) -> Result<(), ApiError> {
    check_id(field, id)?;
    let known = match cp.db.release_by_id(id).await? {
        Some(r) => r.fleet == fleet,
        None => false,
    };
    if known {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            "not the id of a release of this device's fleet",
        ))
    }
}

/// `POST /device/v1/logs`: a batch of the calling device's log lines.
#[utoipa::path(post, path = "/device/v1/logs", tag = "device", request_body = LogBatch, security(("device_key" = [])), responses((status = 204, description = "Stored.")))]
async fn upload_logs(
    State(cp): State<ControlPlane>,
    DeviceKey { device }: DeviceKey,
    JsonBody(body): JsonBody<LogBatch>,
) -> Result<Response, ApiError> {
    if body.lines.len() > MAX_LOG_BATCH {
        return Err(ApiError::field(
            "lines",
            format!("a batch holds at most {MAX_LOG_BATCH} lines"),
        ));
    }
    let mut rows = Vec::with_capacity(body.lines.len());
    for (i, l) in body.lines.into_iter().enumerate() {
        check_service_name(&format!("lines[{i}].service"), &l.service)?;
        if l.line.len() > MAX_LOG_LINE {
            return Err(ApiError::field(
                format!("lines[{i}].line"),
                format!("a log line is at most {MAX_LOG_LINE} bytes"),
            ));
        }
        let stream = match l.stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        };
        // PostgreSQL text cannot hold NUL; a service that prints one
        // should not get its whole batch refused for ever.
        let line = if l.line.contains('\0') {
            l.line.replace('\0', "\u{fffd}")
        } else {
            l.line
        };
        rows.push(db::LogRow {
            seq: 0,
            time_ms: l.time,
            service: l.service,
            stream: stream.to_owned(),
            line,
        });
    }
    cp.db.add_logs(&device.uuid, &rows).await?;
    cp.logs.notify(&device.uuid);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only lines numbered after this one: the last `id` the caller saw.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Only this service's lines.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    service: Option<String>,
}

/// `GET /api/v1/devices/{uuid}/logs[?limit=N][&after=ID][&service=NAME]`:
/// the newest lines, or with `after` the first lines after that one; oldest
/// first either way.
#[utoipa::path(get, path = "/api/v1/devices/{uuid}/logs", tag = "logs", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), LogQuery), security(("api_token" = [])), responses((status = 200, description = "Log lines, oldest first. To follow the log, ask again with `after` set to the last `id` seen.", body = Vec<StoredLogLine>), (status = 404, description = "No such device.", body = ErrorBody)))]
async fn device_logs(
    State(cp): State<ControlPlane>,
    _user: User,
    uuid: Result<Path<String>, PathRejection>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let device = find_device(&cp, &path(uuid)?).await?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(DEFAULT_LOG_READ);
    if !(1..=MAX_LOG_READ).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("limit must be 1 to {MAX_LOG_READ}"),
        ));
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::field(
            "after",
            "after is the id of a log line, 0 or more",
        ));
    }
    let service = match &q.service {
        Some(s) => {
            check_service_name("service", s)?;
            s.as_str()
        }
        None => "",
    };
    let lines: Vec<StoredLogLine> = cp
        .db
        .logs(&device.uuid, service, q.after, limit)
        .await?
        .into_iter()
        .map(|l| StoredLogLine {
            id: l.seq,
            time: l.time_ms,
            service: l.service,
            stream: if l.stream == "stderr" {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            },
            line: l.line,
        })
        .collect();
    Ok(axum::Json(lines).into_response())
}

/// `POST /api/v1/devices/{uuid}/services/{service}/restart`: asks the
/// device to restart one service it runs.
#[utoipa::path(post, path = "/api/v1/devices/{uuid}/services/{service}/restart", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("service" = String, Path, description = "A service the device reports.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")), security(("api_token" = [])), responses((status = 202, description = "Asked: the device restarts the service when it next hears from the cloud.", body = RestartRequested), (status = 404, description = "No such device, or it reports no such service.", body = ErrorBody)))]
async fn restart_service(
    State(cp): State<ControlPlane>,
    user: User,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (uuid, service) = path(p)?;
    check_service_name("service", &service)?;
    let device = find_device(&cp, &uuid).await?;
    let runs = cp
        .db
        .device_services(&device.uuid)
        .await?
        .iter()
        .any(|s| s.service == service);
    if !runs {
        return Err(ApiError::not_found(format!(
            "device `{}` reports no service `{service}`",
            device.uuid
        )));
    }
    let count = cp.db.request_restart(&device.uuid, &service).await?;
    tracing::info!(by = %user.token_id, uuid = %device.uuid, %service, count, "restart asked for");
    cp.changed(&device.fleet).await;
    let body = RestartRequested { service, count };
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SamplesQuery {
    /// Seconds since the epoch; the last hour when absent.
    since: Option<i64>,
}

/// `GET /api/v1/devices/{uuid}/samples?since=`: each service's memory and
/// restarts over time.
#[utoipa::path(get, path = "/api/v1/devices/{uuid}/samples", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), SamplesQuery), security(("api_token" = [])), responses((status = 200, description = "Each service's samples (memory, restarts), oldest first, kept for a day.", body = BTreeMap<String, Vec<ServiceSample>>), (status = 404, description = "No such device.", body = ErrorBody)))]
async fn device_samples(
    State(cp): State<ControlPlane>,
    _user: User,
    uuid: Result<Path<String>, PathRejection>,
    q: Result<Query<SamplesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let device = find_device(&cp, &path(uuid)?).await?;
    let since = query(q)?.since.unwrap_or_else(|| db::now() - 60 * 60);
    let samples: ServiceSamples = cp.db.service_samples(&device.uuid, since).await?;
    Ok(axum::Json(samples).into_response())
}

// --- environment variables ---

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EnvScope {
    /// Only this service of the release; all services when absent.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    service: Option<String>,
}

fn scope_service(scope: &EnvScope) -> Result<String, ApiError> {
    match &scope.service {
        Some(s) => {
            check_service_name("service", s)?;
            Ok(s.clone())
        }
        None => Ok(String::new()),
    }
}

async fn list_env(
    cp: &ControlPlane,
    fleet: &str,
    device: &str,
    service: &str,
) -> Result<Response, ApiError> {
    let vars: Vec<EnvView> = cp
        .db
        .env_at(fleet, device, service)
        .await?
        .into_iter()
        .map(|v| EnvView {
            name: v.name,
            value: v.value,
        })
        .collect();
    Ok(axum::Json(vars).into_response())
}

async fn set_env(
    cp: &ControlPlane,
    user: &User,
    fleet: &str,
    device: &str,
    service: String,
    key: String,
    value: String,
) -> Result<Response, ApiError> {
    check_env_name("key", &key)?;
    check_env_value("value", &value)?;
    let row = EnvRow {
        device: device.to_owned(),
        service,
        name: key,
        value,
    };
    cp.db.set_env(fleet, &row).await?;
    tracing::info!(by = %user.token_id, fleet, device, service = %row.service, name = %row.name, "variable set");
    cp.changed(fleet).await;
    Ok(axum::Json(EnvView {
        name: row.name,
        value: row.value,
    })
    .into_response())
}

async fn delete_env(
    cp: &ControlPlane,
    user: &User,
    fleet: &str,
    device: &str,
    service: &str,
    key: &str,
) -> Result<Response, ApiError> {
    check_env_name("key", key)?;
    if !cp.db.delete_env(fleet, device, service, key).await? {
        return Err(ApiError::not_found(format!(
            "no variable `{key}` at this scope"
        )));
    }
    tracing::info!(by = %user.token_id, fleet, device, service, name = key, "variable deleted");
    cp.changed(fleet).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/v1/fleets/{name}/env", tag = "variables", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), EnvScope), security(("api_token" = [])), responses((status = 200, description = "The fleet's variables at this scope.", body = Vec<EnvView>), (status = 404, description = "No such fleet.", body = ErrorBody)))]
async fn list_fleet_env(
    State(cp): State<ControlPlane>,
    _user: User,
    name: Result<Path<String>, PathRejection>,
    scope: Result<Query<EnvScope>, QueryRejection>,
) -> Result<Response, ApiError> {
    let fleet = find_fleet(&cp, &path(name)?).await?;
    let service = scope_service(&query(scope)?)?;
    list_env(&cp, &fleet.name, "", &service).await
}

#[utoipa::path(put, path = "/api/v1/fleets/{name}/env/{key}", tag = "variables", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), request_body = EnvValue, security(("api_token" = [])), responses((status = 200, description = "The variable as set.", body = EnvView), (status = 404, description = "No such fleet.", body = ErrorBody)))]
async fn set_fleet_env(
    State(cp): State<ControlPlane>,
    user: User,
    p: Result<Path<(String, String)>, PathRejection>,
    scope: Result<Query<EnvScope>, QueryRejection>,
    JsonBody(body): JsonBody<EnvValue>,
) -> Result<Response, ApiError> {
    let (name, key) = path(p)?;
    let fleet = find_fleet(&cp, &name).await?;
    let service = scope_service(&query(scope)?)?;
    set_env(&cp, &user, &fleet.name, "", service, key, body.value).await
}

#[utoipa::path(delete, path = "/api/v1/fleets/{name}/env/{key}", tag = "variables", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), security(("api_token" = [])), responses((status = 204, description = "Deleted."), (status = 404, description = "No such fleet, or no such variable at this scope.", body = ErrorBody)))]
async fn delete_fleet_env(
    State(cp): State<ControlPlane>,
    user: User,
    p: Result<Path<(String, String)>, PathRejection>,
    scope: Result<Query<EnvScope>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (name, key) = path(p)?;
    let fleet = find_fleet(&cp, &name).await?;
    let service = scope_service(&query(scope)?)?;
    delete_env(&cp, &user, &fleet.name, "", &service, &key).await
}

#[utoipa::path(get, path = "/api/v1/devices/{uuid}/env", tag = "variables", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), EnvScope), security(("api_token" = [])), responses((status = 200, description = "The device's own variables at this scope.", body = Vec<EnvView>), (status = 404, description = "No such device.", body = ErrorBody)))]
async fn list_device_env(
    State(cp): State<ControlPlane>,
    _user: User,
    uuid: Result<Path<String>, PathRejection>,
    scope: Result<Query<EnvScope>, QueryRejection>,
) -> Result<Response, ApiError> {
    let device = find_device(&cp, &path(uuid)?).await?;
    let service = scope_service(&query(scope)?)?;
    list_env(&cp, &device.fleet, &device.uuid, &service).await
}

#[utoipa::path(put, path = "/api/v1/devices/{uuid}/env/{key}", tag = "variables", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), request_body = EnvValue, security(("api_token" = [])), responses((status = 200, description = "The variable as set.", body = EnvView), (status = 404, description = "No such device.", body = ErrorBody)))]
async fn set_device_env(
    State(cp): State<ControlPlane>,
    user: User,
    p: Result<Path<(String, String)>, PathRejection>,
    scope: Result<Query<EnvScope>, QueryRejection>,
    JsonBody(body): JsonBody<EnvValue>,
) -> Result<Response, ApiError> {
    let (uuid, key) = path(p)?;
    let device = find_device(&cp, &uuid).await?;
    let service = scope_service(&query(scope)?)?;
    set_env(
        &cp,
        &user,
        &device.fleet,
        &device.uuid,
        service,
        key,
        body.value,
    )
    .await
}

#[utoipa::path(delete, path = "/api/v1/devices/{uuid}/env/{key}", tag = "variables", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), security(("api_token" = [])), responses((status = 204, description = "Deleted."), (status = 404, description = "No such device, or no such variable at this scope.", body = ErrorBody)))]
async fn delete_device_env(
    State(cp): State<ControlPlane>,
    user: User,
    p: Result<Path<(String, String)>, PathRejection>,
    scope: Result<Query<EnvScope>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (uuid, key) = path(p)?;
    let device = find_device(&cp, &uuid).await?;
    let service = scope_service(&query(scope)?)?;
    delete_env(&cp, &user, &device.fleet, &device.uuid, &service, &key).await
}
