//! `/api/v1/fleets/{name}/env` and `/api/v1/devices/{uuid}/env`: the
//! variables of a fleet or a device, for every service or one.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::extract::{AtDevice, AtFleet, JsonBody, Key, User};
use super::{Answer, Cp, Q, json, query};
use crate::ops::ApiError;
use crate::ops::{self, EnvValue, EnvView, ErrorBody, Scope};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvScope {
    /// Only this service of the release; all services when absent.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    service: Option<String>,
}

/// The variables a route names: with `{key}`, one of them; with
/// `?service=`, those set for that service alone. Both are checked only
/// when asked for, after the fleet or device is found, as before.
pub(super) struct Var {
    key: Key,
    q: Q<EnvScope>,
}

impl<S: Send + Sync> FromRequestParts<S> for Var {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, Infallible> {
        let key = Key::from_request_parts(parts, s).await?;
        let q = Query::<EnvScope>::from_request_parts(parts, s).await;
        Ok(Var { key, q })
    }
}

impl Var {
    /// The service, checked (`""` for every service), and the key.
    fn take(self) -> Result<(String, Key), ApiError> {
        let q = query(self.q)?;
        let service = ops::vars::service_scope(q.service.as_deref())?.to_owned();
        Ok((service, self.key))
    }
}

/// The request body of a variable's `PUT`.
type Value = JsonBody<EnvValue>;

async fn list(cp: Cp, scope: Scope, var: Var) -> Answer {
    let (service, _) = var.take()?;
    let vars: Vec<EnvView> = ops::vars::at(&cp, &scope, &service)
        .await?
        .into_iter()
        .map(|v| EnvView {
            name: v.name,
            value: v.value,
        })
        .collect();
    Ok(json(vars))
}

async fn set(cp: Cp, user: User, scope: Scope, var: Var, body: EnvValue) -> Answer {
    let (service, key) = var.take()?;
    let key = key.take()?;
    let row = ops::vars::set(&cp, &user.token_id, &scope, &service, &key, &body.value).await?;
    Ok(json(EnvView {
        name: row.name,
        value: row.value,
    }))
}

async fn delete(cp: Cp, user: User, scope: Scope, var: Var) -> Answer {
    let (service, key) = var.take()?;
    let key = key.take()?;
    ops::vars::delete(&cp, &user.token_id, &scope, &service, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/v1/fleets/{name}/env", tag = "variables", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), EnvScope), security(("api_token" = [])), responses((status = 200, description = "The fleet's variables at this scope.", body = Vec<EnvView>), (status = 404, description = "No such fleet.", body = ErrorBody)))]
pub(super) async fn list_fleet_env(cp: Cp, _user: User, at: AtFleet, var: Var) -> Answer {
    let scope = at.scope(&cp).await?;
    list(cp, scope, var).await
}

#[utoipa::path(put, path = "/api/v1/fleets/{name}/env/{key}", tag = "variables", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), request_body = EnvValue, security(("api_token" = [])), responses((status = 200, description = "The variable as set.", body = EnvView), (status = 404, description = "No such fleet.", body = ErrorBody)))]
pub(super) async fn set_fleet_env(cp: Cp, u: User, at: AtFleet, var: Var, b: Value) -> Answer {
    let scope = at.scope(&cp).await?;
    set(cp, u, scope, var, b.0).await
}

#[utoipa::path(delete, path = "/api/v1/fleets/{name}/env/{key}", tag = "variables", params(("name" = String, Path, description = "The fleet's name.", pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), security(("api_token" = [])), responses((status = 204, description = "Deleted."), (status = 404, description = "No such fleet, or no such variable at this scope.", body = ErrorBody)))]
pub(super) async fn delete_fleet_env(cp: Cp, u: User, at: AtFleet, var: Var) -> Answer {
    let scope = at.scope(&cp).await?;
    delete(cp, u, scope, var).await
}

#[utoipa::path(get, path = "/api/v1/devices/{uuid}/env", tag = "variables", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), EnvScope), security(("api_token" = [])), responses((status = 200, description = "The device's own variables at this scope.", body = Vec<EnvView>), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn list_device_env(cp: Cp, _user: User, at: AtDevice, var: Var) -> Answer {
    let scope = at.scope(&cp).await?;
    list(cp, scope, var).await
}

#[utoipa::path(put, path = "/api/v1/devices/{uuid}/env/{key}", tag = "variables", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), request_body = EnvValue, security(("api_token" = [])), responses((status = 200, description = "The variable as set.", body = EnvView), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn set_device_env(cp: Cp, u: User, at: AtDevice, var: Var, b: Value) -> Answer {
    let scope = at.scope(&cp).await?;
    set(cp, u, scope, var, b.0).await
}

#[utoipa::path(delete, path = "/api/v1/devices/{uuid}/env/{key}", tag = "variables", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("key" = String, Path, description = "The variable's name.", pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), EnvScope), security(("api_token" = [])), responses((status = 204, description = "Deleted."), (status = 404, description = "No such device, or no such variable at this scope.", body = ErrorBody)))]
pub(super) async fn delete_device_env(cp: Cp, u: User, at: AtDevice, var: Var) -> Answer {
    let scope = at.scope(&cp).await?;
    delete(cp, u, scope, var).await
}
