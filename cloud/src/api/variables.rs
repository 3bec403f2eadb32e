//! `/api/v1/fleets/{name}/env` and `/api/v1/devices/{uuid}/env`: the
//! variables of a fleet or a device, for every service or one.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::extract::{AtDevice, AtFleet, JsonBody, Key, User};
use super::{Answer, Cp, Q, json, query};
use crate::ops::{self, EnvValue, EnvView, ErrorBody, Scope};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvScope {
    /// Only this service of the release; all services when absent.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    service: Option<String>,
}

async fn list(cp: Cp, scope: Scope, q: Q<EnvScope>) -> Answer {
    let q = query(q)?;
    let service = ops::vars::service_scope(q.service.as_deref())?;
    let vars: Vec<EnvView> = ops::vars::at(&cp, &scope, service)
        .await?
        .into_iter()
        .map(|v| EnvView {
            name: v.name,
            value: v.value,
        })
        .collect();
    Ok(json(vars))
}

async fn set(cp: Cp, user: User, scope: Scope, key: Key, q: Q<EnvScope>, body: EnvValue) -> Answer {
    let q = query(q)?;
    let service = ops::vars::service_scope(q.service.as_deref())?;
    let row = ops::vars::set(
        &cp,
        &user.token_id,
        &scope,
        service,
        &key.take()?,
        &body.value,
    )
    .await?;
    Ok(json(EnvView {
        name: row.name,
        value: row.value,
    }))
}

async fn delete(cp: Cp, user: User, scope: Scope, key: Key, q: Q<EnvScope>) -> Answer {
    let q = query(q)?;
    let service = ops::vars::service_scope(q.service.as_deref())?;
    ops::vars::delete(&cp, &user.token_id, &scope, service, &key.take()?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/v1/fleets/{name}/env", tag = "variables", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), EnvScope), security(("api_token" = [])), responses((status = 200, description = "The fleet's variables at this scope.", body = Vec<EnvView>), (status = 404, description = "No such fleet.", body = ErrorBody)))]
pub(super) async fn list_fleet_env(cp: Cp, _user: User, at: AtFleet, q: Q<EnvScope>) -> Answer {
    let scope = at.scope(&cp).await?;
    list(cp, scope, q).await
}

#[utoipa::path(put, path = "/api/v1/fleets/{name}/env/{key}", tag = "variables", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), request_body = EnvValue, security(("api_token" = [])), responses((status = 200, description = "The variable as set.", body = EnvView), (status = 404, description = "No such fleet.", body = ErrorBody)))]
pub(super) async fn set_fleet_env(
    cp: Cp,
    u: User,
    at: AtFleet,
    k: Key,
    q: Q<EnvScope>,
    b: JsonBody<EnvValue>,
) -> Answer {
    let scope = at.scope(&cp).await?;
    set(cp, u, scope, k, q, b.0).await
}

#[utoipa::path(delete, path = "/api/v1/fleets/{name}/env/{key}", tag = "variables", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), security(("api_token" = [])), responses((status = 204, description = "Deleted."), (status = 404, description = "No such fleet, or no such variable at this scope.", body = ErrorBody)))]
pub(super) async fn delete_fleet_env(
    cp: Cp,
    u: User,
    at: AtFleet,
    k: Key,
    q: Q<EnvScope>,
) -> Answer {
    let scope = at.scope(&cp).await?;
    delete(cp, u, scope, k, q).await
}

#[utoipa::path(get, path = "/api/v1/devices/{uuid}/env", tag = "variables", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), EnvScope), security(("api_token" = [])), responses((status = 200, description = "The device's own variables at this scope.", body = Vec<EnvView>), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn list_device_env(cp: Cp, _user: User, at: AtDevice, q: Q<EnvScope>) -> Answer {
    let scope = at.scope(&cp).await?;
    list(cp, scope, q).await
}

#[utoipa::path(put, path = "/api/v1/devices/{uuid}/env/{key}", tag = "variables", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), request_body = EnvValue, security(("api_token" = [])), responses((status = 200, description = "The variable as set.", body = EnvView), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn set_device_env(
    cp: Cp,
    u: User,
    at: AtDevice,
    k: Key,
    q: Q<EnvScope>,
    b: JsonBody<EnvValue>,
) -> Answer {
    let scope = at.scope(&cp).await?;
    set(cp, u, scope, k, q, b.0).await
}

#[utoipa::path(delete, path = "/api/v1/devices/{uuid}/env/{key}", tag = "variables", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), security(("api_token" = [])), responses((status = 204, description = "Deleted."), (status = 404, description = "No such device, or no such variable at this scope.", body = ErrorBody)))]
pub(super) async fn delete_device_env(
    cp: Cp,
    u: User,
    at: AtDevice,
    k: Key,
    q: Q<EnvScope>,
) -> Answer {
    let scope = at.scope(&cp).await?;
    delete(cp, u, scope, k, q).await
}
