//! Devices: registering, finding and showing them, their names, tags and
//! restarts.

use std::collections::BTreeMap;

use kelp_core::api::{DeviceView, Register, RegisteredDevice, ServiceStatusView, UpdateView};

use super::{
    ApiError, check_fleet_name, check_service_name, check_text, check_uuid, check_word, fleets,
    is_online, releases,
};
use crate::db::{DeviceRow, KeyedDevice, NewDevice, Registered, ServiceRow};
use crate::{ControlPlane, secret};

/// Most devices one page of `GET /api/v1/devices` holds, and the default.
/// Each device costs a few queries to show, so a page is bounded rather
/// than a whole fleet of thousands read for one request.
pub const MAX_DEVICE_PAGE: i64 = 500;

/// Longest tag value.
const MAX_TAG_VALUE: usize = 1024;

/// The device `uuid`, or a 404.
pub async fn find(cp: &ControlPlane, uuid: &str) -> Result<DeviceRow, ApiError> {
    check_uuid("uuid", uuid)?;
    cp.db
        .device(uuid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no device with uuid `{uuid}`")))
}

/// The device `uuid` as its own requests need it, with its fleet's change
/// count as stored now, or a 404.
pub async fn keyed(cp: &ControlPlane, uuid: &str) -> Result<KeyedDevice, ApiError> {
    cp.db
        .keyed_device_by_uuid(uuid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no device with uuid `{uuid}`")))
}

/// Up to `limit` (at most and by default [`MAX_DEVICE_PAGE`]) devices, of
/// `fleet` if given, whose uuids sort after `after`, in uuid order.
pub async fn page(
    cp: &ControlPlane,
    fleet: Option<&str>,
    after: Option<&str>,
    limit: Option<i64>,
) -> Result<Vec<DeviceRow>, ApiError> {
    if let Some(fleet) = fleet {
        check_fleet_name("fleet", fleet)?;
        fleets::find(cp, fleet).await?;
    }
    if let Some(after) = after {
        check_uuid("after", after)?;
    }
    let limit = limit.unwrap_or(MAX_DEVICE_PAGE);
    if !(1..=MAX_DEVICE_PAGE).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("limit must be 1 to {MAX_DEVICE_PAGE}"),
        ));
    }
    Ok(cp.db.devices(fleet, after.unwrap_or(""), limit).await?)
}

/// A device as the API shows it.
pub async fn view(cp: &ControlPlane, d: DeviceRow) -> Result<DeviceView, ApiError> {
    // A pinned device's target is its pin, and a device that is up to date
    // runs its target: neither is read a second time.
    let target = cp.db.target_release(&d).await?;
    let pinned = releases::version_of(cp, d.pinned_release.as_deref(), target.as_ref()).await?;
    let current = releases::version_of(cp, d.current_release.as_deref(), target.as_ref()).await?;
    let tags = tags(cp, &d.uuid).await?;
    // Only this server writes the state, from the same enum it parses to.
    let update = match d
        .update
        .clone()
        .and_then(|u| Some((u.state.parse().ok()?, u)))
    {
        Some((state, u)) => Some(UpdateView {
            state,
            release: releases::version_of(cp, Some(&u.release), target.as_ref()).await?,
            reason: u.reason,
            at: u.at,
        }),
        None => None,
    };
    let services = services(cp, &d.uuid)
        .await?
        .into_iter()
        .map(|s| {
            let view = ServiceStatusView {
                state: s.state,
                memory: s.memory,
                restarts: s.restarts,
                last_exit: s.last_exit,
                updated_at: s.updated_at,
            };
            (s.service, view)
        })
        .collect();
    Ok(DeviceView {
        online: is_online(d.last_seen),
        uuid: d.uuid,
        name: d.name,
        fleet: d.fleet,
        arch: d.arch,
        agent_version: d.agent_version,
        last_seen: d.last_seen,
        created_at: d.created_at,
        pinned_release: pinned,
        target_release: target.map(|r| r.version),
        current_release: current,
        services,
        update,
        tags,
    })
}

/// The services `uuid` last reported, by name.
pub async fn services(cp: &ControlPlane, uuid: &str) -> Result<Vec<ServiceRow>, ApiError> {
    Ok(cp.db.device_services(uuid).await?)
}

/// The tags of `uuid`, by name.
pub async fn tags(cp: &ControlPlane, uuid: &str) -> Result<BTreeMap<String, String>, ApiError> {
    Ok(cp.db.device_tags(uuid).await?)
}

/// Gives a device a new name. The name is only shown to people, so no
/// device's target changes.
pub async fn rename(
    cp: &ControlPlane,
    by: &str,
    d: &DeviceRow,
    name: &str,
) -> Result<(), ApiError> {
    check_text("name", name)?;
    cp.db.rename_device(&d.uuid, name).await?;
    tracing::info!(by, uuid = %d.uuid, name, "device renamed");
    Ok(())
}

/// Checks a tag's name and, when setting it, its value.
fn check_tag(tag: &str, value: Option<&str>) -> Result<(), ApiError> {
    check_word("tag", tag)?;
    if let Some(value) = value
        && (value.chars().count() > MAX_TAG_VALUE || value.chars().any(char::is_control))
    {
        return Err(ApiError::field(
            "value",
            format!(
                "a tag's value is at most {MAX_TAG_VALUE} characters, none of them control characters"
            ),
        ));
    }
    Ok(())
}

/// Sets tag `tag` of device `uuid` to `value`.
pub async fn set_tag(
    cp: &ControlPlane,
    uuid: &str,
    tag: &str,
    value: &str,
) -> Result<DeviceRow, ApiError> {
    check_tag(tag, Some(value))?;
    let d = find(cp, uuid).await?;
    cp.db.set_tag(&d.uuid, tag, value).await?;
    Ok(d)
}

/// Removes tag `tag` of device `uuid`; a 404 if it has none by that name.
pub async fn delete_tag(cp: &ControlPlane, uuid: &str, tag: &str) -> Result<(), ApiError> {
    check_tag(tag, None)?;
    let d = find(cp, uuid).await?;
    if cp.db.delete_tag(&d.uuid, tag).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "device `{uuid}` has no tag `{tag}`"
        )))
    }
}

/// Asks device `uuid` to restart `service`, one it reports, and says how
/// many times it has been asked; the device restarts it when it next
/// hears from the cloud.
pub async fn restart(
    cp: &ControlPlane,
    by: &str,
    uuid: &str,
    service: &str,
) -> Result<(DeviceRow, u64), ApiError> {
    check_service_name("service", service)?;
    let d = find(cp, uuid).await?;
    let runs = services(cp, &d.uuid)
        .await?
        .iter()
        .any(|s| s.service == service);
    if !runs {
        return Err(ApiError::not_found(format!(
            "device `{}` reports no service `{service}`",
            d.uuid
        )));
    }
    let count = cp.db.request_restart(&d.uuid, service).await?;
    tracing::info!(by, uuid = %d.uuid, service, count, "restart asked for");
    cp.changed(&d.fleet).await;
    Ok((d, count))
}

/// Registers a device into `fleet`, whose provisioning key it presented,
/// and says whether it is new. Registering an existing uuid again (a
/// re-flashed device that lost its key) hands out a new key and the old
/// one stops working; only the hash is stored, so the old key cannot be
/// handed out again. A uuid registered in another fleet is refused, never
/// moved.
pub async fn register(
    cp: &ControlPlane,
    fleet: String,
    r: Register,
) -> Result<(bool, RegisteredDevice), ApiError> {
    check_uuid("uuid", &r.uuid)?;
    if let Some(name) = &r.name {
        check_text("name", name)?;
    }
    check_word("arch", &r.arch)?;
    check_word("agent_version", &r.agent_version)?;
    let device_key = secret::new_secret(secret::DEVICE_PREFIX)?;
    let registered = cp
        .db
        .register_device(&NewDevice {
            uuid: &r.uuid,
            fleet: &fleet,
            name: r.name.as_deref(),
            arch: &r.arch,
            agent_version: &r.agent_version,
            key_hash: &secret::hash(&device_key),
        })
        .await?;
    let new = match registered {
        Registered::New => true,
        Registered::Again => false,
        Registered::OtherFleet(_) => {
            return Err(ApiError::forbidden(format!(
                "device `{}` belongs to another fleet; this provisioning key cannot register it",
                r.uuid
            )));
        }
    };
    tracing::info!(uuid = %r.uuid, %fleet, "device registered");
    Ok((
        new,
        RegisteredDevice {
            uuid: r.uuid,
            fleet,
            device_key,
        },
    ))
}
