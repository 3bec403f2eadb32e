//! The forms a fleet's page and a device's page share: its pin and its
//! variables. One handler serves both; the path says which.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::DashError;
use super::session::Posted;
use crate::ControlPlane;
use crate::db::EnvRow;
use crate::ops::{self, Scope};

/// The path of a form posted to a fleet (`/fleets/{name}/…`) or a device
/// (`/devices/{uuid}/…`). Looked up only after the session is checked, so
/// a browser that is not signed in learns nothing of what exists.
pub struct ScopePath(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for ScopePath {
    type Rejection = DashError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, DashError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, &())
            .await
            .map_err(|e| DashError::bad_request(e.body_text()))?;
        Ok(ScopePath(params))
    }
}

impl ScopePath {
    /// The fleet or device the path names, or a 404.
    async fn find(&self, cp: &ControlPlane) -> Result<Scope, DashError> {
        Ok(match (self.0.get("name"), self.0.get("uuid")) {
            (Some(name), _) => Scope::fleet(cp, name).await?,
            (None, Some(uuid)) => Scope::device(cp, uuid).await?,
            (None, None) => return Err(DashError::bad_request("no fleet or device in the path")),
        })
    }
}

/// The page that shows `scope`, where a form posted to it goes back to.
fn page(scope: &Scope) -> String {
    match scope {
        Scope::Fleet(f) => format!("/fleets/{}", f.name),
        Scope::Device(d) => format!("/devices/{}", d.uuid),
    }
}

pub struct VarItem {
    pub service: String,
    pub name: String,
    pub value: String,
}

/// Variables as a page lists them, by service and name.
pub fn var_items(vars: Vec<EnvRow>) -> Vec<VarItem> {
    vars.into_iter()
        .map(|v| VarItem {
            service: v.service,
            name: v.name,
            value: v.value,
        })
        .collect()
}

#[derive(Deserialize)]
pub struct PinForm {
    /// A release's version, or empty to follow the latest (a fleet) or the
    /// fleet (a device).
    #[serde(default)]
    release: String,
}

/// `POST /fleets/{name}/pin`, `POST /devices/{uuid}/pin`: pins the fleet
/// or device to a release, or lets a fleet track its latest and a device
/// follow its fleet.
pub async fn pin(
    State(cp): State<ControlPlane>,
    at: ScopePath,
    Posted { session, form }: Posted<PinForm>,
) -> Result<Response, DashError> {
    let scope = at.find(&cp).await?;
    let version = (!form.release.is_empty()).then_some(form.release.as_str());
    ops::releases::pin(&cp, &session.token_id, &scope, version).await?;
    Ok(Redirect::to(&page(&scope)).into_response())
}

#[derive(Deserialize)]
pub struct EnvForm {
    name: String,
    #[serde(default)]
    value: String,
    /// Empty for every service.
    #[serde(default)]
    service: String,
}

impl EnvForm {
    fn service(&self) -> Result<&str, DashError> {
        let service = (!self.service.is_empty()).then_some(self.service.as_str());
        Ok(ops::vars::service_scope(service)?)
    }
}

/// `POST /fleets/{name}/env`, `POST /devices/{uuid}/env`: sets a
/// variable.
pub async fn set_env(
    State(cp): State<ControlPlane>,
    at: ScopePath,
    Posted { session, form }: Posted<EnvForm>,
) -> Result<Response, DashError> {
    let scope = at.find(&cp).await?;
    let service = form.service()?;
    let name = form.name.trim();
    ops::vars::set(&cp, &session.token_id, &scope, service, name, &form.value).await?;
    Ok(Redirect::to(&format!("{}#variables", page(&scope))).into_response())
}

/// `POST /fleets/{name}/env/delete`, `POST /devices/{uuid}/env/delete`.
pub async fn delete_env(
    State(cp): State<ControlPlane>,
    at: ScopePath,
    Posted { session, form }: Posted<EnvForm>,
) -> Result<Response, DashError> {
    let scope = at.find(&cp).await?;
    let service = form.service()?;
    ops::vars::delete(&cp, &session.token_id, &scope, service, &form.name).await?;
    Ok(Redirect::to(&format!("{}#variables", page(&scope))).into_response())
}
