//! `/api/v1/fleets/{name}/releases` and the pins of fleets and devices.

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::extract::{AtDevice, AtFleet, JsonBody, User};
use super::{Answer, Cp, json, now_view, path};
use crate::ops::{self, DeviceView, ErrorBody, FleetView, NewRelease, Pin, ReleaseView, Scope};

#[utoipa::path(post, path = "/api/v1/fleets/{name}/releases", tag = "releases", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), request_body = NewRelease, security(("api_token" = [])), responses((status = 201, description = "The new release, which the fleet's devices that follow it now target.", body = ReleaseView), (status = 404, description = "No such fleet.", body = ErrorBody), (status = 409, description = "The fleet has a release of this version.", body = ErrorBody)))]
pub(super) async fn create_release(
    cp: Cp,
    user: User,
    at: AtFleet,
    JsonBody(body): JsonBody<NewRelease>,
) -> Answer {
    let fleet = at.find(&cp).await?;
    let row = ops::releases::create(&cp, &user.token_id, &fleet.name, &body).await?;
    Ok((StatusCode::CREATED, axum::Json(ops::releases::view(row)?)).into_response())
}

#[utoipa::path(get, path = "/api/v1/fleets/{name}/releases", tag = "releases", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), security(("api_token" = [])), responses((status = 200, description = "The fleet's releases, oldest first.", body = Vec<ReleaseView>), (status = 404, description = "No such fleet.", body = ErrorBody)))]
pub(super) async fn list_releases(cp: Cp, _user: User, at: AtFleet) -> Answer {
    let fleet = at.find(&cp).await?;
    let views = ops::releases::all(&cp, &fleet.name)
        .await?
        .into_iter()
        .map(ops::releases::view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json(views))
}

#[utoipa::path(get, path = "/api/v1/fleets/{name}/releases/{version}", tag = "releases", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("version" = String, Path, description = "The release's version.", pattern = r"^[A-Za-z0-9._+-]{1,64}$")), security(("api_token" = [])), responses((status = 200, description = "The release.", body = ReleaseView), (status = 404, description = "No such fleet, or it has no such release.", body = ErrorBody)))]
pub(super) async fn show_release(
    cp: Cp,
    _user: User,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    let (name, version) = path(p)?;
    let fleet = ops::fleets::find(&cp, &name).await?;
    let release = ops::releases::find(&cp, &fleet.name, &version).await?;
    Ok(json(ops::releases::view(release)?))
}

/// Pins `scope` as `body` says, and answers it as it is now.
async fn pin(cp: Cp, user: User, scope: Scope, body: Pin) -> Answer {
    ops::releases::pin(&cp, &user.token_id, &scope, body.release.as_deref()).await?;
    now_view(&cp, &scope).await
}

#[utoipa::path(put, path = "/api/v1/fleets/{name}/pin", tag = "releases", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), request_body = Pin, security(("api_token" = [])), responses((status = 200, description = "The fleet as pinned.", body = FleetView), (status = 404, description = "No such fleet, or it has no such release.", body = ErrorBody)))]
pub(super) async fn pin_fleet(cp: Cp, user: User, at: AtFleet, body: JsonBody<Pin>) -> Answer {
    let scope = at.scope(&cp).await?;
    pin(cp, user, scope, body.0).await
}

#[utoipa::path(put, path = "/api/v1/devices/{uuid}/pin", tag = "releases", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), request_body = Pin, security(("api_token" = [])), responses((status = 200, description = "The device as pinned.", body = DeviceView), (status = 404, description = "No such device, or its fleet has no such release.", body = ErrorBody)))]
pub(super) async fn pin_device(cp: Cp, user: User, at: AtDevice, body: JsonBody<Pin>) -> Answer {
    let scope = at.scope(&cp).await?;
    pin(cp, user, scope, body.0).await
}
