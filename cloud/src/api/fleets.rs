//! `/api/v1/fleets`: fleets and their provisioning keys.

use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::extract::{AtFleet, JsonBody, User};
use super::{Answer, Cp, json};
use crate::ops::{self, ErrorBody, FleetCreated, FleetView, NewFleet, ProvisioningKeyCreated};

#[utoipa::path(post, path = "/api/v1/fleets", tag = "fleets", request_body = NewFleet, security(("api_token" = [])), responses((status = 201, description = "The new fleet and its provisioning key, shown this once.", body = FleetCreated), (status = 409, description = "A fleet of this name exists.", body = ErrorBody)))]
pub(super) async fn create_fleet(cp: Cp, user: User, JsonBody(body): JsonBody<NewFleet>) -> Answer {
    let created = ops::fleets::create(&cp, &user.token_id, &body.name).await?;
    let view = FleetCreated {
        fleet: ops::fleets::view(&cp, created.fleet).await?,
        provisioning_key: created.provisioning_key,
    };
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

#[utoipa::path(get, path = "/api/v1/fleets", tag = "fleets", security(("api_token" = [])), responses((status = 200, description = "Every fleet, by name.", body = Vec<FleetView>)))]
pub(super) async fn list_fleets(cp: Cp, _user: User) -> Answer {
    let mut views = Vec::new();
    for f in ops::fleets::all(&cp).await? {
        views.push(ops::fleets::view(&cp, f).await?);
    }
    Ok(json(views))
}

#[utoipa::path(get, path = "/api/v1/fleets/{name}", tag = "fleets", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), security(("api_token" = [])), responses((status = 200, description = "The fleet.", body = FleetView), (status = 404, description = "No such fleet.", body = ErrorBody)))]
pub(super) async fn show_fleet(cp: Cp, _user: User, at: AtFleet) -> Answer {
    let fleet = at.find(&cp).await?;
    Ok(json(ops::fleets::view(&cp, fleet).await?))
}

#[utoipa::path(post, path = "/api/v1/fleets/{name}/provisioning-key", tag = "fleets", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")), security(("api_token" = [])), responses((status = 201, description = "The fleet's new provisioning key, shown this once; the previous one no longer works.", body = ProvisioningKeyCreated), (status = 404, description = "No such fleet.", body = ErrorBody)))]
pub(super) async fn rotate_provisioning_key(cp: Cp, user: User, at: AtFleet) -> Answer {
    let fleet = at.find(&cp).await?;
    let key = ops::fleets::rotate_provisioning_key(&cp, &user.token_id, &fleet).await?;
    let body = ProvisioningKeyCreated {
        fleet: fleet.name,
        provisioning_key: key,
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}
