//! `/api/v1/fleets/{name}/hardware-map` and
//! `/api/v1/devices/{uuid}/hardware-map`: the hardware maps the cloud
//! gives a fleet's devices, or one device.

use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::extract::{AtDevice, AtFleet, JsonBody, User};
use super::{Answer, Cp, json};
use crate::ops::{self, ErrorBody, HardwareMapView, NewHardwareMap, Scope};

async fn get(cp: Cp, scope: Scope) -> Answer {
    let map = ops::maps::get(&cp, &scope).await?;
    Ok(json(HardwareMapView { map }))
}

async fn set(cp: Cp, user: User, scope: Scope, body: NewHardwareMap) -> Answer {
    ops::maps::set(&cp, &user.token_id, &scope, Some(&body.map)).await?;
    Ok(json(HardwareMapView {
        map: Some(body.map),
    }))
}

async fn delete(cp: Cp, user: User, scope: Scope) -> Answer {
    ops::maps::set(&cp, &user.token_id, &scope, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/fleets/{name}/hardware-map` → `{ map }` (null for none).
#[utoipa::path(get, path = "/api/v1/fleets/{name}/hardware-map", tag = "hardware maps", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), security(("api_token" = [])), responses((status = 200, description = "The fleet's map (null for none).", body = HardwareMapView), (status = 404, description = "No such fleet.", body = ErrorBody)))]
pub(super) async fn fleet_map(cp: Cp, _user: User, at: AtFleet) -> Answer {
    let scope = at.scope(&cp).await?;
    get(cp, scope).await
}

/// `PUT /api/v1/fleets/{name}/hardware-map` `{ map }`: every device of the
/// fleet without a map of its own is given it.
#[utoipa::path(put, path = "/api/v1/fleets/{name}/hardware-map", tag = "hardware maps", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), request_body = NewHardwareMap, security(("api_token" = [])), responses((status = 200, description = "The map as set.", body = HardwareMapView), (status = 404, description = "No such fleet.", body = ErrorBody)))]
pub(super) async fn set_fleet_map(
    cp: Cp,
    u: User,
    at: AtFleet,
    b: JsonBody<NewHardwareMap>,
) -> Answer {
    let scope = at.scope(&cp).await?;
    set(cp, u, scope, b.0).await
}

#[utoipa::path(delete, path = "/api/v1/fleets/{name}/hardware-map", tag = "hardware maps", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), security(("api_token" = [])), responses((status = 204, description = "Removed."), (status = 404, description = "No such fleet.", body = ErrorBody)))]
pub(super) async fn delete_fleet_map(cp: Cp, user: User, at: AtFleet) -> Answer {
    let scope = at.scope(&cp).await?;
    delete(cp, user, scope).await
}

/// `GET /api/v1/devices/{uuid}/hardware-map` → the device's own map.
#[utoipa::path(get, path = "/api/v1/devices/{uuid}/hardware-map", tag = "hardware maps", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), security(("api_token" = [])), responses((status = 200, description = "The device's own map (null for none; its fleet's applies then).", body = HardwareMapView), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn device_map(cp: Cp, _user: User, at: AtDevice) -> Answer {
    let scope = at.scope(&cp).await?;
    get(cp, scope).await
}

/// `PUT /api/v1/devices/{uuid}/hardware-map` `{ map }`: the device's own
/// map, over its fleet's.
#[utoipa::path(put, path = "/api/v1/devices/{uuid}/hardware-map", tag = "hardware maps", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), request_body = NewHardwareMap, security(("api_token" = [])), responses((status = 200, description = "The map as set.", body = HardwareMapView), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn set_device_map(
    cp: Cp,
    u: User,
    at: AtDevice,
    b: JsonBody<NewHardwareMap>,
) -> Answer {
    let scope = at.scope(&cp).await?;
    set(cp, u, scope, b.0).await
}

#[utoipa::path(delete, path = "/api/v1/devices/{uuid}/hardware-map", tag = "hardware maps", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), security(("api_token" = [])), responses((status = 204, description = "Removed; the fleet's map applies."), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn delete_device_map(cp: Cp, user: User, at: AtDevice) -> Answer {
    let scope = at.scope(&cp).await?;
    delete(cp, user, scope).await
}
