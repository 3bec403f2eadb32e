//! Hardware maps given from the cloud: a fleet's, which each of its
//! devices without one of its own is given, and a device's own.

use kelp_core::hardware_map::HardwareMap;

use super::{ApiError, Scope};
use crate::ControlPlane;
use crate::db::DeviceRow;

/// Largest hardware map given from the cloud (a device reads one up to
/// this size from a file, too).
pub const MAX_MAP: usize = 256 << 10;

/// Refuses a map a device would refuse, naming the line at fault.
fn check_map(map: &str) -> Result<(), ApiError> {
    if map.len() > MAX_MAP {
        return Err(ApiError::field(
            "map",
            format!("a hardware map is at most {MAX_MAP} bytes"),
        ));
    }
    HardwareMap::parse(map)
        .map(|_| ())
        .map_err(|e| ApiError::field("map", format!("not a hardware map: {e}")))
}

/// The map given to this scope itself, if any.
pub async fn get(cp: &ControlPlane, scope: &Scope) -> Result<Option<String>, ApiError> {
    Ok(cp
        .db
        .hardware_map(scope.fleet_name(), scope.device_uuid())
        .await?)
}

/// Gives this scope `map`, or with `None` takes its map away, and tells
/// the fleet's devices.
pub async fn set(
    cp: &ControlPlane,
    by: &str,
    scope: &Scope,
    map: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(map) = map {
        check_map(map)?;
    }
    let fleet = scope.fleet_name();
    cp.db
        .set_hardware_map(fleet, scope.device_uuid(), map)
        .await?;
    let set = map.is_some();
    tracing::info!(
        by,
        fleet,
        uuid = scope.device_uuid(),
        set,
        "hardware map given"
    );
    cp.changed(fleet).await;
    Ok(())
}

/// The map the cloud gives a device, and whose it is.
pub enum Given {
    /// The device's own.
    Device(String),
    /// Its fleet's.
    Fleet(String),
    /// None: the device's own file decides.
    Neither,
}

/// What map the cloud gives device `d`.
pub async fn given(cp: &ControlPlane, d: &DeviceRow) -> Result<Given, ApiError> {
    if let Some(m) = cp.db.hardware_map(&d.fleet, Some(&d.uuid)).await? {
        return Ok(Given::Device(m));
    }
    Ok(match cp.db.hardware_map(&d.fleet, None).await? {
        Some(m) => Given::Fleet(m),
        None => Given::Neither,
    })
}
