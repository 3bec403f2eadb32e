//! Releases, and the pins that choose among them.

use std::collections::BTreeMap;

use kelp_core::api::{NewRelease, ReleaseView, ServiceSpec};

use super::{ApiError, Scope, check_release, check_word};
use crate::db::{self, ReleaseRow};
use crate::{ControlPlane, secret};

/// The services a stored release runs.
pub fn services_of(r: &ReleaseRow) -> Result<BTreeMap<String, ServiceSpec>, ApiError> {
    serde_json::from_str(&r.services).map_err(|e| {
        ApiError::Internal(format!(
            "stored services of release {} do not parse: {e}",
            r.id
        ))
    })
}

/// A release as the API shows it.
pub fn view(r: ReleaseRow) -> Result<ReleaseView, ApiError> {
    let services = services_of(&r)?;
    Ok(ReleaseView {
        id: r.id,
        fleet: r.fleet,
        version: r.version,
        created_at: r.created_at,
        services,
    })
}

/// The version of release `id`, read only if it is not `known` already.
pub async fn version_of(
    cp: &ControlPlane,
    id: Option<&str>,
    known: Option<&ReleaseRow>,
) -> Result<Option<String>, ApiError> {
    let Some(id) = id else {
        return Ok(None);
    };
    if let Some(r) = known.filter(|r| r.id == id) {
        return Ok(Some(r.version.clone()));
    }
    Ok(cp.db.release_by_id(id).await?.map(|r| r.version))
}

/// Release `version` of `fleet`, or a 404.
pub async fn find(cp: &ControlPlane, fleet: &str, version: &str) -> Result<ReleaseRow, ApiError> {
    check_word("release", version)?;
    cp.db
        .release_by_version(fleet, version)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("fleet `{fleet}` has no release `{version}`")))
}

/// The releases of `fleet`, oldest first.
pub async fn all(cp: &ControlPlane, fleet: &str) -> Result<Vec<ReleaseRow>, ApiError> {
    Ok(cp.db.releases(fleet).await?)
}

/// Adds a release to `fleet`, which its devices that follow it then
/// target; a 409 if the fleet has one of this version.
pub async fn create(
    cp: &ControlPlane,
    by: &str,
    fleet: &str,
    release: &NewRelease,
) -> Result<ReleaseRow, ApiError> {
    check_release(release)?;
    let services = serde_json::to_string(&release.services)
        .map_err(|e| ApiError::Internal(format!("cannot encode services: {e}")))?;
    let created = cp
        .db
        .create_release(fleet, &secret::new_id(), &release.version, &services)
        .await?;
    match created {
        db::NewRelease::Created(row) => {
            tracing::info!(by, fleet, version = %row.version, "release created");
            cp.changed(fleet).await;
            Ok(row)
        }
        db::NewRelease::VersionTaken => Err(ApiError::conflict(format!(
            "fleet `{fleet}` already has a release `{}`",
            release.version
        ))),
    }
}

/// Pins a fleet or a device to release `version` of its fleet, or with
/// `None` lets a fleet track its latest and a device follow its fleet.
pub async fn pin(
    cp: &ControlPlane,
    by: &str,
    scope: &Scope,
    version: Option<&str>,
) -> Result<(), ApiError> {
    let fleet = scope.fleet_name();
    let release = match version {
        Some(v) => Some(find(cp, fleet, v).await?.id),
        None => None,
    };
    match scope {
        Scope::Fleet(f) => cp.db.pin_fleet(&f.name, release.as_deref()).await?,
        Scope::Device(d) => cp.db.pin_device(&d.uuid, release.as_deref()).await?,
    }
    tracing::info!(
        by,
        fleet,
        uuid = scope.device_uuid(),
        release = version,
        "pinned"
    );
    cp.changed(fleet).await;
    Ok(())
}
