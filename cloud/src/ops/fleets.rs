//! Fleets and their provisioning keys.

use kelp_core::api::FleetView;

use super::{ApiError, check_fleet_name, releases};
use crate::db::FleetRow;
use crate::{ControlPlane, secret};

/// The fleet `name`, or a 404.
pub async fn find(cp: &ControlPlane, name: &str) -> Result<FleetRow, ApiError> {
    check_fleet_name("name", name)?;
    cp.db
        .fleet(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no fleet named `{name}`")))
}

/// Every fleet, by name.
pub async fn all(cp: &ControlPlane) -> Result<Vec<FleetRow>, ApiError> {
    Ok(cp.db.fleets().await?)
}

/// A fleet as the API shows it: its pin and its latest release by version.
pub async fn view(cp: &ControlPlane, f: FleetRow) -> Result<FleetView, ApiError> {
    let latest = cp.db.latest_release(&f.name).await?;
    let pinned = releases::version_of(cp, f.pinned_release.as_deref(), latest.as_ref()).await?;
    Ok(FleetView {
        name: f.name,
        created_at: f.created_at,
        pinned_release: pinned,
        latest_release: latest.map(|r| r.version),
    })
}

/// A fleet just made, with its first provisioning key (shown this once).
pub struct Created {
    pub fleet: FleetRow,
    pub provisioning_key: String,
}

/// Makes the fleet `name`; a 409 if the name is taken.
pub async fn create(cp: &ControlPlane, by: &str, name: &str) -> Result<Created, ApiError> {
    check_fleet_name("name", name)?;
    let key = secret::new_secret(secret::PROVISIONING_PREFIX)?;
    let created = cp
        .db
        .create_fleet(name, &secret::new_id(), &secret::hash(&key))
        .await?;
    if !created {
        return Err(ApiError::conflict(format!(
            "a fleet named `{name}` already exists"
        )));
    }
    tracing::info!(by, fleet = %name, "fleet created");
    Ok(Created {
        fleet: find(cp, name).await?,
        provisioning_key: key,
    })
}

/// The fleet whose live provisioning key is `key`, if any.
pub async fn of_provisioning_key(cp: &ControlPlane, key: &str) -> Result<Option<String>, ApiError> {
    Ok(cp.db.provisioning_key_by_hash(&secret::hash(key)).await?)
}

/// Gives `fleet` a new provisioning key, returned this once; the old one
/// stops working at once.
pub async fn rotate_provisioning_key(
    cp: &ControlPlane,
    by: &str,
    fleet: &FleetRow,
) -> Result<String, ApiError> {
    let key = secret::new_secret(secret::PROVISIONING_PREFIX)?;
    cp.db
        .rotate_provisioning_key(&fleet.name, &secret::new_id(), &secret::hash(&key))
        .await?;
    tracing::info!(by, fleet = %fleet.name, "provisioning key rotated");
    Ok(key)
}
