//! The list of fleets, and one fleet's page: its devices, releases and
//! variables.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;

use super::format::{ago, utc};
use super::forms::{VarItem, var_items};
use super::releases::Releases;
use super::session::{NoFields, Posted, Session};
use super::{DashError, render};
use crate::ControlPlane;
use crate::db::FleetRow;
use crate::ops::devices::MAX_DEVICE_PAGE;
use crate::ops::{self, ApiError, is_online};

pub struct FleetItem {
    pub name: String,
    pub devices: usize,
    pub online: usize,
    pub release: String,
    pub pinned: bool,
}

#[derive(askama::Template)]
#[template(path = "fleets.html")]
struct FleetsPage {
    csrf: String,
    fleets: Vec<FleetItem>,
    error: Option<String>,
}

async fn fleets_page(
    cp: &ControlPlane,
    session: &Session,
    error: Option<String>,
) -> Result<FleetsPage, DashError> {
    let mut fleets = Vec::new();
    for f in ops::fleets::all(cp).await? {
        let devices = ops::devices::page(cp, Some(&f.name), None, None).await?;
        let releases = Releases::of(cp, &f).await?;
        fleets.push(FleetItem {
            devices: devices.len(),
            online: devices.iter().filter(|d| is_online(d.last_seen)).count(),
            release: releases
                .version(releases.fleet_target.as_deref())
                .unwrap_or_else(|| "none yet".to_owned()),
            pinned: f.pinned_release.is_some(),
            name: f.name,
        });
    }
    Ok(FleetsPage {
        csrf: session.csrf.clone(),
        fleets,
        error,
    })
}

/// `GET /`: every fleet, and a form to make one.
pub async fn fleets(
    State(cp): State<ControlPlane>,
    session: Session,
) -> Result<Response, DashError> {
    render(&fleets_page(&cp, &session, None).await?)
}

#[derive(Deserialize)]
pub struct NewFleetForm {
    name: String,
}

/// `POST /fleets`: makes a fleet and shows its page with its provisioning
/// key, this once.
pub async fn create_fleet(
    State(cp): State<ControlPlane>,
    Posted { session, form }: Posted<NewFleetForm>,
) -> Result<Response, DashError> {
    match ops::fleets::create(&cp, &session.token_id, form.name.trim()).await {
        Ok(created) => {
            let page = fleet_page(&cp, &session, created.fleet, Some(created.provisioning_key));
            render(&page.await?)
        }
        // Refused: the list again, saying why above the form.
        Err(ApiError::Client {
            status, message, ..
        }) => {
            let mut page = render(&fleets_page(&cp, &session, Some(message)).await?)?;
            *page.status_mut() = status;
            Ok(page)
        }
        Err(e) => Err(e.into()),
    }
}

// --- one fleet ---

pub struct DeviceItem {
    pub uuid: String,
    pub name: String,
    pub online: bool,
    pub last_seen: String,
    pub current: String,
    pub target: String,
    pub on_target: bool,
    pub update: String,
}

pub struct ReleaseItem {
    pub version: String,
    pub created: String,
    pub services: String,
    pub pinned: bool,
    pub latest: bool,
}

#[derive(askama::Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    csrf: String,
    name: String,
    tracking: String,
    pinned: Option<String>,
    devices: Vec<DeviceItem>,
    more_devices: bool,
    on_target: usize,
    online: usize,
    releases: Vec<ReleaseItem>,
    vars: Vec<VarItem>,
    service_names: Vec<String>,
    env_action: String,
    new_key: Option<String>,
}

async fn fleet_page(
    cp: &ControlPlane,
    session: &Session,
    fleet: FleetRow,
    new_key: Option<String>,
) -> Result<FleetPage, DashError> {
    let releases = Releases::of(cp, &fleet).await?;
    let rows = ops::devices::page(cp, Some(&fleet.name), None, None).await?;
    let more_devices = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= MAX_DEVICE_PAGE;
    let devices: Vec<DeviceItem> = rows
        .iter()
        .map(|d| {
            let standing = releases.standing(d);
            DeviceItem {
                uuid: d.uuid.clone(),
                name: d.name.clone(),
                online: is_online(d.last_seen),
                last_seen: ago(d.last_seen),
                current: standing.current,
                target: standing.target,
                on_target: standing.on_target,
                update: d
                    .update
                    .as_ref()
                    .map_or_else(String::new, |u| releases.update_line(u)),
            }
        })
        .collect();
    let latest = releases.all.last().map(|r| r.id.clone());
    let mut release_items = Vec::new();
    let mut services = BTreeSet::new();
    for r in releases.all.iter().rev() {
        let specs = ops::releases::services_of(r)?;
        services.extend(specs.keys().cloned());
        release_items.push(ReleaseItem {
            version: r.version.clone(),
            created: utc(r.created_at),
            services: specs.keys().cloned().collect::<Vec<_>>().join(", "),
            pinned: fleet.pinned_release.as_deref() == Some(r.id.as_str()),
            latest: latest.as_deref() == Some(r.id.as_str()),
        });
    }
    let vars = ops::vars::all(cp, &fleet.name, None).await?;
    Ok(FleetPage {
        csrf: session.csrf.clone(),
        tracking: releases
            .version(releases.fleet_target.as_deref())
            .unwrap_or_else(|| "no release yet".to_owned()),
        pinned: releases.version(fleet.pinned_release.as_deref()),
        on_target: devices.iter().filter(|d| d.on_target).count(),
        online: devices.iter().filter(|d| d.online).count(),
        devices,
        more_devices,
        releases: release_items,
        vars: var_items(vars),
        service_names: services.into_iter().collect(),
        env_action: format!("/fleets/{}/env", fleet.name),
        new_key,
        name: fleet.name,
    })
}

/// `GET /fleets/{name}`.
pub async fn fleet(
    State(cp): State<ControlPlane>,
    session: Session,
    Path(name): Path<String>,
) -> Result<Response, DashError> {
    let fleet = ops::fleets::find(&cp, &name).await?;
    render(&fleet_page(&cp, &session, fleet, None).await?)
}

/// `POST /fleets/{name}/provisioning-key`: a new key, shown this once;
/// the old one stops working.
pub async fn rotate_provisioning_key(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Posted { session, .. }: Posted<NoFields>,
) -> Result<Response, DashError> {
    let fleet = ops::fleets::find(&cp, &name).await?;
    let key = ops::fleets::rotate_provisioning_key(&cp, &session.token_id, &fleet).await?;
    render(&fleet_page(&cp, &session, fleet, Some(key)).await?)
}
