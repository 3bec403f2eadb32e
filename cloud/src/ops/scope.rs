//! What an operation that fleets and devices share applies to.

use super::{ApiError, devices, fleets};
use crate::db::{DeviceRow, FleetRow};

/// A whole fleet, or one device of it.
pub enum Scope {
    Fleet(FleetRow),
    Device(DeviceRow),
}

impl Scope {
    /// The fleet `name`, or a 404.
    pub async fn fleet(cp: &crate::ControlPlane, name: &str) -> Result<Scope, ApiError> {
        Ok(Scope::Fleet(fleets::find(cp, name).await?))
    }

    /// The device `uuid`, or a 404.
    pub async fn device(cp: &crate::ControlPlane, uuid: &str) -> Result<Scope, ApiError> {
        Ok(Scope::Device(devices::find(cp, uuid).await?))
    }

    /// The fleet the scope is or belongs to.
    pub fn fleet_name(&self) -> &str {
        match self {
            Scope::Fleet(f) => &f.name,
            Scope::Device(d) => &d.fleet,
        }
    }

    /// The device's uuid, or `None` for a whole fleet.
    pub fn device_uuid(&self) -> Option<&str> {
        match self {
            Scope::Fleet(_) => None,
            Scope::Device(d) => Some(&d.uuid),
        }
    }
}
