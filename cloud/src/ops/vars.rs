//! Environment variables, set for a fleet or a device and, within either,
//! for every service or one.

use std::collections::BTreeMap;

use super::{ApiError, Scope, check_env_name, check_env_value, check_service_name};
use crate::ControlPlane;
use crate::db::EnvRow;

/// `service` checked, or `""` (every service) for `None`.
pub fn service_scope(service: Option<&str>) -> Result<&str, ApiError> {
    match service {
        Some(s) => {
            check_service_name("service", s)?;
            Ok(s)
        }
        None => Ok(""),
    }
}

/// The variables set at exactly this scope and service (`""`: those for
/// every service), by name.
pub async fn at(cp: &ControlPlane, scope: &Scope, service: &str) -> Result<Vec<EnvRow>, ApiError> {
    let device = scope.device_uuid().unwrap_or("");
    Ok(cp.db.env_at(scope.fleet_name(), device, service).await?)
}

/// Every variable of `fleet` itself or, with `device`, of that device of
/// it, for every service and for single ones, by service and name.
pub async fn all(
    cp: &ControlPlane,
    fleet: &str,
    device: Option<&str>,
) -> Result<Vec<EnvRow>, ApiError> {
    let device = device.unwrap_or("");
    let mut vars: Vec<EnvRow> = cp
        .db
        .fleet_env(fleet)
        .await?
        .into_iter()
        .filter(|v| v.device == device)
        .collect();
    vars.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    Ok(vars)
}

/// Sets variable `name` at this scope for `service` (`""`: every
/// service), and tells the fleet's devices.
pub async fn set(
    cp: &ControlPlane,
    by: &str,
    scope: &Scope,
    service: &str,
    name: &str,
    value: &str,
) -> Result<EnvRow, ApiError> {
    check_env_name("key", name)?;
    check_env_value("value", value)?;
    let fleet = scope.fleet_name();
    let row = EnvRow {
        device: scope.device_uuid().unwrap_or("").to_owned(),
        service: service.to_owned(),
        name: name.to_owned(),
        value: value.to_owned(),
    };
    cp.db.set_env(fleet, &row).await?;
    tracing::info!(by, fleet, device = %row.device, service, name, "variable set");
    cp.changed(fleet).await;
    Ok(row)
}

/// Removes variable `name` from this scope and `service`; a 404 if it
/// was not set there.
pub async fn delete(
    cp: &ControlPlane,
    by: &str,
    scope: &Scope,
    service: &str,
    name: &str,
) -> Result<(), ApiError> {
    check_env_name("key", name)?;
    let fleet = scope.fleet_name();
    let device = scope.device_uuid().unwrap_or("");
    if !cp.db.delete_env(fleet, device, service, name).await? {
        return Err(ApiError::not_found(format!(
            "no variable `{name}` at this scope"
        )));
    }
    tracing::info!(by, fleet, device, service, name, "variable deleted");
    cp.changed(fleet).await;
    Ok(())
}

/// The release's env for `service` with the stored variables over it, from
/// the weakest scope to the strongest: fleet, fleet and service, device,
/// device and service.
pub fn apply_env(
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
