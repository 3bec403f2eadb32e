//! The pages: fleets, one fleet, one device, one release; and the forms
//! they post.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use kelp_core::hardware_map::HardwareMap;
use serde::Deserialize;

use super::session::{Posted, Session};
use super::{DashError, plot, render};
use crate::ControlPlane;
use crate::api::{
    MAX_DEVICE_PAGE, ONLINE_WINDOW, ServiceSpec, check_env_name, check_env_value, check_fleet_name,
    check_service_name, check_uuid, check_word,
};
use crate::db::{self, DeviceRow, EnvRow, FleetRow, ReleaseRow};
use crate::secret;

/// Seconds of history a device page plots: an hour shows a restart loop
/// or a leak at a glance; the cloud keeps a day (`db::KEPT_SAMPLE_AGE`),
/// which `GET /api/v1/devices/{uuid}/samples?since=` returns.
pub const PLOT_WINDOW: i64 = 60 * 60;

/// Log lines a device page shows when it opens; newer ones stream in after
/// them. Enough to see what led up to now without a page of megabytes.
pub const LOG_BACKLOG: i64 = 200;

// --- formatting ---

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How long ago `secs` was, roughly: `12 s ago`, `5 min ago`, `3 h ago`.
pub fn ago(secs: i64) -> String {
    let d = db::now().saturating_sub(secs).max(0);
    match d {
        0..60 => format!("{d} s ago"),
        60..3600 => format!("{} min ago", d / 60),
        3600..172_800 => format!("{} h ago", d / 3600),
        _ => format!("{} days ago", d / 86_400),
    }
}

/// A byte count for people: `712 KiB`, `3.4 MiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn is_online(last_seen: i64) -> bool {
    db::now().saturating_sub(last_seen) <= ONLINE_WINDOW
}

// --- lookups, refused as the API refuses them ---

async fn find_fleet(cp: &ControlPlane, name: &str) -> Result<FleetRow, DashError> {
    check_fleet_name("fleet", name)?;
    cp.db
        .fleet(name)
        .await?
        .ok_or_else(|| DashError::not_found(format!("no fleet named `{name}`")))
}

async fn find_device(cp: &ControlPlane, uuid: &str) -> Result<DeviceRow, DashError> {
    check_uuid("uuid", uuid)?;
    cp.db
        .device(uuid)
        .await?
        .ok_or_else(|| DashError::not_found(format!("no device with uuid `{uuid}`")))
}

fn services_of(r: &ReleaseRow) -> Result<BTreeMap<String, ServiceSpec>, DashError> {
    serde_json::from_str(&r.services).map_err(|e| {
        DashError::Internal(format!(
            "stored services of release {} do not parse: {e}",
            r.id
        ))
    })
}

/// A fleet's releases, and its target for devices that follow it.
struct Releases {
    all: Vec<ReleaseRow>,
    fleet_target: Option<String>,
}

impl Releases {
    async fn of(cp: &ControlPlane, fleet: &FleetRow) -> Result<Releases, DashError> {
        let all = cp.db.releases(&fleet.name).await?;
        let fleet_target = fleet
            .pinned_release
            .clone()
            .or_else(|| all.last().map(|r| r.id.clone()));
        Ok(Releases { all, fleet_target })
    }

    fn version(&self, id: Option<&str>) -> Option<String> {
        let id = id?;
        Some(
            self.all
                .iter()
                .find(|r| r.id == id)
                .map_or_else(|| format!("({id})"), |r| r.version.clone()),
        )
    }

    /// The release id a device should run.
    fn target_of<'a>(&'a self, d: &'a DeviceRow) -> Option<&'a str> {
        d.pinned_release.as_deref().or(self.fleet_target.as_deref())
    }

    fn by_version(&self, version: &str) -> Option<&ReleaseRow> {
        self.all.iter().find(|r| r.version == version)
    }
}

// --- fleets ---

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
    for f in cp.db.fleets().await? {
        let devices = cp.db.devices(Some(&f.name), "", MAX_DEVICE_PAGE).await?;
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
    let name = form.name.trim();
    if let Err(e) = check_fleet_name("name", name) {
        let mut page = render(&fleets_page(&cp, &session, Some(e.to_string())).await?)?;
        *page.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(page);
    }
    let key = secret::new_secret(secret::PROVISIONING_PREFIX)?;
    if !cp
        .db
        .create_fleet(name, &secret::new_id(), &secret::hash(&key))
        .await?
    {
        let error = format!("a fleet named `{name}` already exists");
        let mut page = render(&fleets_page(&cp, &session, Some(error)).await?)?;
        *page.status_mut() = StatusCode::CONFLICT;
        return Ok(page);
    }
    tracing::info!(by = %session.token_id, fleet = %name, "fleet created");
    let fleet = find_fleet(&cp, name).await?;
    render(&fleet_page(&cp, &session, fleet, Some(key)).await?)
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

pub struct VarItem {
    pub service: String,
    pub name: String,
    pub value: String,
}

fn var_items(mut vars: Vec<EnvRow>) -> Vec<VarItem> {
    vars.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    vars.into_iter()
        .map(|v| VarItem {
            service: v.service,
            name: v.name,
            value: v.value,
        })
        .collect()
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
    let rows = cp
        .db
        .devices(Some(&fleet.name), "", MAX_DEVICE_PAGE)
        .await?;
    let more_devices = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= MAX_DEVICE_PAGE;
    let devices: Vec<DeviceItem> = rows
        .iter()
        .map(|d| {
            let target = releases.target_of(d);
            DeviceItem {
                uuid: d.uuid.clone(),
                name: d.name.clone(),
                online: is_online(d.last_seen),
                last_seen: ago(d.last_seen),
                current: releases
                    .version(d.current_release.as_deref())
                    .unwrap_or_else(|| "none".to_owned()),
                target: releases
                    .version(target)
                    .unwrap_or_else(|| "none".to_owned()),
                on_target: target.is_some() && d.current_release.as_deref() == target,
                update: d.update.as_ref().map_or_else(String::new, |u| {
                    let version = releases.version(Some(&u.release)).unwrap_or_default();
                    match &u.reason {
                        Some(why) => format!("{version} {}: {why}", u.state),
                        None => format!("{version} {}", u.state),
                    }
                }),
            }
        })
        .collect();
    let latest = releases.all.last().map(|r| r.id.clone());
    let mut release_items = Vec::new();
    let mut services = BTreeSet::new();
    for r in releases.all.iter().rev() {
        let specs = services_of(r)?;
        services.extend(specs.keys().cloned());
        release_items.push(ReleaseItem {
            version: r.version.clone(),
            created: utc(r.created_at),
            services: specs.keys().cloned().collect::<Vec<_>>().join(", "),
            pinned: fleet.pinned_release.as_deref() == Some(r.id.as_str()),
            latest: latest.as_deref() == Some(r.id.as_str()),
        });
    }
    let vars = cp
        .db
        .fleet_env(&fleet.name)
        .await?
        .into_iter()
        .filter(|v| v.device.is_empty())
        .collect();
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
    let fleet = find_fleet(&cp, &name).await?;
    render(&fleet_page(&cp, &session, fleet, None).await?)
}

/// `POST /fleets/{name}/provisioning-key`: a new key, shown this once;
/// the old one stops working.
pub async fn rotate_provisioning_key(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Posted { session, .. }: Posted<super::session::NoFields>,
) -> Result<Response, DashError> {
    let fleet = find_fleet(&cp, &name).await?;
    let key = secret::new_secret(secret::PROVISIONING_PREFIX)?;
    cp.db
        .rotate_provisioning_key(&fleet.name, &secret::new_id(), &secret::hash(&key))
        .await?;
    tracing::info!(by = %session.token_id, fleet = %fleet.name, "provisioning key rotated");
    render(&fleet_page(&cp, &session, fleet, Some(key)).await?)
}

#[derive(Deserialize)]
pub struct PinForm {
    /// A release's version, or empty to follow the latest (a fleet) or the
    /// fleet (a device).
    #[serde(default)]
    release: String,
}

/// The release id `version` names in `fleet`, or `None` for an empty
/// version.
async fn pin_target(
    cp: &ControlPlane,
    fleet: &str,
    version: &str,
) -> Result<Option<String>, DashError> {
    if version.is_empty() {
        return Ok(None);
    }
    check_word("release", version)?;
    let release = cp
        .db
        .release_by_version(fleet, version)
        .await?
        .ok_or_else(|| {
            DashError::not_found(format!("fleet `{fleet}` has no release `{version}`"))
        })?;
    Ok(Some(release.id))
}

/// `POST /fleets/{name}/pin`: pins the fleet to a release, or lets it
/// track its latest.
pub async fn pin_fleet(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Posted { session, form }: Posted<PinForm>,
) -> Result<Response, DashError> {
    let fleet = find_fleet(&cp, &name).await?;
    let release = pin_target(&cp, &fleet.name, &form.release).await?;
    cp.db.pin_fleet(&fleet.name, release.as_deref()).await?;
    tracing::info!(by = %session.token_id, fleet = %fleet.name, release = %form.release, "fleet pinned");
    cp.changed(&fleet.name).await;
    Ok(Redirect::to(&format!("/fleets/{}", fleet.name)).into_response())
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

/// Stores a variable after the API's checks, and tells the fleet's
/// devices.
async fn set_env(
    cp: &ControlPlane,
    session: &Session,
    fleet: &str,
    device: &str,
    form: EnvForm,
) -> Result<(), DashError> {
    let name = form.name.trim().to_owned();
    check_env_name("name", &name)?;
    check_env_value("value", &form.value)?;
    if !form.service.is_empty() {
        check_service_name("service", &form.service)?;
    }
    let row = EnvRow {
        device: device.to_owned(),
        service: form.service,
        name,
        value: form.value,
    };
    cp.db.set_env(fleet, &row).await?;
    tracing::info!(by = %session.token_id, fleet, device, service = %row.service, name = %row.name, "variable set");
    cp.changed(fleet).await;
    Ok(())
}

async fn delete_env(
    cp: &ControlPlane,
    session: &Session,
    fleet: &str,
    device: &str,
    form: &EnvForm,
) -> Result<(), DashError> {
    check_env_name("name", &form.name)?;
    if !form.service.is_empty() {
        check_service_name("service", &form.service)?;
    }
    if !cp
        .db
        .delete_env(fleet, device, &form.service, &form.name)
        .await?
    {
        return Err(DashError::not_found(format!(
            "no variable `{}` at this scope",
            form.name
        )));
    }
    tracing::info!(by = %session.token_id, fleet, device, service = %form.service, name = %form.name, "variable deleted");
    cp.changed(fleet).await;
    Ok(())
}

/// `POST /fleets/{name}/env`: sets a variable for the whole fleet.
pub async fn set_fleet_env(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Posted { session, form }: Posted<EnvForm>,
) -> Result<Response, DashError> {
    let fleet = find_fleet(&cp, &name).await?;
    set_env(&cp, &session, &fleet.name, "", form).await?;
    Ok(Redirect::to(&format!("/fleets/{}#variables", fleet.name)).into_response())
}

/// `POST /fleets/{name}/env/delete`.
pub async fn delete_fleet_env(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Posted { session, form }: Posted<EnvForm>,
) -> Result<Response, DashError> {
    let fleet = find_fleet(&cp, &name).await?;
    delete_env(&cp, &session, &fleet.name, "", &form).await?;
    Ok(Redirect::to(&format!("/fleets/{}#variables", fleet.name)).into_response())
}

// --- one device ---

pub struct ServiceItem {
    pub name: String,
    pub state: String,
    pub memory: String,
    pub restarts: i64,
    pub last_exit: String,
    pub updated: String,
}

pub struct GrantItem {
    pub service: String,
    pub what: String,
    pub granted: String,
}

pub struct LogItem {
    pub seq: i64,
    pub time: String,
    pub service: String,
    pub stderr: bool,
    pub line: String,
}

#[derive(askama::Template)]
#[template(path = "device.html")]
struct DevicePage {
    csrf: String,
    uuid: String,
    name: String,
    fleet: String,
    online: bool,
    arch: String,
    agent_version: String,
    last_seen: String,
    created: String,
    current: String,
    target: String,
    pinned: Option<String>,
    update: Option<String>,
    tags: Vec<(String, String)>,
    services: Vec<ServiceItem>,
    hardware: Vec<GrantItem>,
    hardware_source: String,
    releases: Vec<String>,
    vars: Vec<VarItem>,
    service_names: Vec<String>,
    env_action: String,
    logs: Vec<LogItem>,
    last_seq: i64,
    plots: Vec<plot::Plot>,
}

/// What `spec` asks for, and what `map` (when the cloud gave the device
/// one) grants of it.
fn grants_of(service: &str, spec: &ServiceSpec, map: Option<&HardwareMap>) -> Vec<GrantItem> {
    let mut items = Vec::new();
    let by_device = "by the device's own hardware map".to_owned();
    for (label, grant) in &spec.grants.gpio {
        let modes: Vec<String> = grant.modes.iter().map(ToString::to_string).collect();
        let granted = match map {
            None => by_device.clone(),
            Some(m) => match m.gpio.get(label) {
                None => "refused: not in the hardware map".to_owned(),
                Some(b) => {
                    let allowed: Vec<String> = b
                        .allowed_modes(&grant.modes)
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    format!(
                        "{} line {} ({})",
                        b.line.chip.display(),
                        b.line.line,
                        if allowed.is_empty() {
                            "no mode asked for is allowed".to_owned()
                        } else {
                            allowed.join(", ")
                        }
                    )
                }
            },
        };
        items.push(GrantItem {
            service: service.to_owned(),
            what: format!("GPIO `{label}`: {}", modes.join(", ")),
            granted,
        });
    }
    for (label, grant) in &spec.grants.i2c {
        let addresses: Vec<String> = grant
            .addresses
            .iter()
            .map(|a| format!("{a:#04x}"))
            .collect();
        let granted = match map {
            None => by_device.clone(),
            Some(m) => match m.i2c.get(label) {
                None => "refused: not in the hardware map".to_owned(),
                Some(b) => {
                    let allowed: Vec<String> = b
                        .allowed_addresses(&grant.addresses)
                        .iter()
                        .map(|a| format!("{a:#04x}"))
                        .collect();
                    format!(
                        "{} ({})",
                        b.bus.display(),
                        if allowed.is_empty() {
                            "no address asked for is allowed".to_owned()
                        } else {
                            allowed.join(", ")
                        }
                    )
                }
            },
        };
        items.push(GrantItem {
            service: service.to_owned(),
            what: format!("I2C `{label}`: {}", addresses.join(", ")),
            granted,
        });
    }
    for what in network_asks(&spec.grants.network) {
        items.push(GrantItem {
            service: service.to_owned(),
            what,
            granted: "as far as the device's network allow list lets it".to_owned(),
        });
    }
    items
}

/// What a network grant asks for, one line per kind.
fn network_asks(g: &kelp_core::network::NetworkGrant) -> Vec<String> {
    let list = |ds: &[kelp_core::network::Destination]| {
        ds.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut asks = Vec::new();
    if !g.connect.is_empty() {
        asks.push(format!("network: connect to {}", list(&g.connect)));
    }
    if !g.udp.is_empty() {
        asks.push(format!("network: UDP to {}", list(&g.udp)));
    }
    if g.serve_http {
        asks.push("network: answers HTTP".to_owned());
    }
    asks
}

/// `GET /devices/{uuid}`.
pub async fn device(
    State(cp): State<ControlPlane>,
    session: Session,
    Path(uuid): Path<String>,
) -> Result<Response, DashError> {
    let d = find_device(&cp, &uuid).await?;
    let fleet = find_fleet(&cp, &d.fleet).await?;
    let releases = Releases::of(&cp, &fleet).await?;
    let services = cp
        .db
        .device_services(&d.uuid)
        .await?
        .into_iter()
        .map(|s| ServiceItem {
            name: s.service,
            state: s.state,
            memory: s.memory.map_or_else(|| "—".to_owned(), bytes),
            restarts: s.restarts,
            last_exit: s.last_exit.unwrap_or_default(),
            updated: ago(s.updated_at),
        })
        .collect();

    // What the release it runs asks for, against the map the cloud gave it.
    let own_map = cp.db.hardware_map(&d.fleet, Some(&d.uuid)).await?;
    let (map_text, hardware_source) = match own_map {
        Some(m) => (
            Some(m),
            "this device's hardware map, set in the cloud".to_owned(),
        ),
        None => match cp.db.hardware_map(&d.fleet, None).await? {
            Some(m) => (Some(m), "the fleet's hardware map".to_owned()),
            None => (
                None,
                "the device's own hardware map (not known to the cloud)".to_owned(),
            ),
        },
    };
    let map = map_text.as_deref().and_then(|t| HardwareMap::parse(t).ok());
    let mut hardware = Vec::new();
    let running = d.current_release.as_deref().or(releases.target_of(&d));
    if let Some(r) = running.and_then(|id| releases.all.iter().find(|r| r.id == id)) {
        for (name, spec) in services_of(r)? {
            hardware.extend(grants_of(&name, &spec, map.as_ref()));
        }
    }

    let logs: Vec<LogItem> = cp
        .db
        .logs(&d.uuid, "", None, LOG_BACKLOG)
        .await?
        .into_iter()
        .map(|l| LogItem {
            seq: l.seq,
            time: utc(l.time_ms.div_euclid(1000)),
            service: l.service,
            stderr: l.stream == "stderr",
            line: l.line,
        })
        .collect();
    // The backlog is the newest lines, so its last is the newest of all.
    let last_seq = logs.last().map_or(0, |l| l.seq);
    let mut service_names: BTreeSet<String> = logs.iter().map(|l| l.service.clone()).collect();
    if let Some(r) = running.and_then(|id| releases.all.iter().find(|r| r.id == id)) {
        service_names.extend(services_of(r)?.into_keys());
    }
    let vars = cp
        .db
        .fleet_env(&d.fleet)
        .await?
        .into_iter()
        .filter(|v| v.device == d.uuid)
        .collect();
    let samples = cp
        .db
        .service_samples(&d.uuid, db::now().saturating_sub(PLOT_WINDOW))
        .await?;
    let target = releases.target_of(&d);
    let page = DevicePage {
        csrf: session.csrf.clone(),
        online: is_online(d.last_seen),
        last_seen: ago(d.last_seen),
        created: utc(d.created_at),
        current: releases
            .version(d.current_release.as_deref())
            .unwrap_or_else(|| "none".to_owned()),
        target: releases
            .version(target)
            .unwrap_or_else(|| "none".to_owned()),
        pinned: releases.version(d.pinned_release.as_deref()),
        update: d.update.as_ref().map(|u| {
            let version = releases.version(Some(&u.release)).unwrap_or_default();
            match &u.reason {
                Some(why) => format!("{version} {}: {why}", u.state),
                None => format!("{version} {} ({})", u.state, ago(u.at)),
            }
        }),
        tags: cp.db.device_tags(&d.uuid).await?.into_iter().collect(),
        services,
        hardware,
        hardware_source,
        releases: releases
            .all
            .iter()
            .rev()
            .map(|r| r.version.clone())
            .collect(),
        vars: var_items(vars),
        service_names: service_names.into_iter().collect(),
        logs,
        last_seq,
        plots: plot::service_history(samples.iter().flat_map(|(service, samples)| {
            samples.iter().map(|s| plot::Sample {
                service,
                at: s.at,
                memory: s.memory,
                restarts: Some(s.restarts),
            })
        })),
        env_action: format!("/devices/{}/env", d.uuid),
        uuid: d.uuid,
        name: d.name,
        fleet: d.fleet,
        arch: d.arch,
        agent_version: d.agent_version,
    };
    render(&page)
}

/// `POST /devices/{uuid}/pin`: pins the device to a release, or lets it
/// follow its fleet.
pub async fn pin_device(
    State(cp): State<ControlPlane>,
    Path(uuid): Path<String>,
    Posted { session, form }: Posted<PinForm>,
) -> Result<Response, DashError> {
    let d = find_device(&cp, &uuid).await?;
    let release = pin_target(&cp, &d.fleet, &form.release).await?;
    cp.db.pin_device(&d.uuid, release.as_deref()).await?;
    tracing::info!(by = %session.token_id, uuid = %d.uuid, release = %form.release, "device pinned");
    cp.changed(&d.fleet).await;
    Ok(Redirect::to(&format!("/devices/{}", d.uuid)).into_response())
}

/// `POST /devices/{uuid}/services/{service}/restart`: asks the device to
/// restart one of the services it reports, as the API's restart does.
pub async fn restart_service(
    State(cp): State<ControlPlane>,
    Path((uuid, service)): Path<(String, String)>,
    Posted { session, .. }: Posted<super::session::NoFields>,
) -> Result<Response, DashError> {
    check_service_name("service", &service)?;
    let d = find_device(&cp, &uuid).await?;
    let runs = cp
        .db
        .device_services(&d.uuid)
        .await?
        .iter()
        .any(|s| s.service == service);
    if !runs {
        return Err(DashError::not_found(format!(
            "device `{}` reports no service `{service}`",
            d.uuid
        )));
    }
    let count = cp.db.request_restart(&d.uuid, &service).await?;
    tracing::info!(by = %session.token_id, uuid = %d.uuid, %service, count, "restart asked for");
    cp.changed(&d.fleet).await;
    Ok(Redirect::to(&format!("/devices/{}#services", d.uuid)).into_response())
}

/// `POST /devices/{uuid}/env`: sets a variable for this device.
pub async fn set_device_env(
    State(cp): State<ControlPlane>,
    Path(uuid): Path<String>,
    Posted { session, form }: Posted<EnvForm>,
) -> Result<Response, DashError> {
    let d = find_device(&cp, &uuid).await?;
    set_env(&cp, &session, &d.fleet, &d.uuid, form).await?;
    Ok(Redirect::to(&format!("/devices/{}#variables", d.uuid)).into_response())
}

/// `POST /devices/{uuid}/env/delete`.
pub async fn delete_device_env(
    State(cp): State<ControlPlane>,
    Path(uuid): Path<String>,
    Posted { session, form }: Posted<EnvForm>,
) -> Result<Response, DashError> {
    let d = find_device(&cp, &uuid).await?;
    delete_env(&cp, &session, &d.fleet, &d.uuid, &form).await?;
    Ok(Redirect::to(&format!("/devices/{}#variables", d.uuid)).into_response())
}

// --- one release ---

pub struct ReleaseService {
    pub name: String,
    pub repository: String,
    pub digest: String,
    pub signer: String,
    pub memory: String,
    pub restart: String,
    pub strategy: String,
    pub env: Vec<(String, String)>,
    pub grants: Vec<String>,
}

#[derive(askama::Template)]
#[template(path = "release.html")]
struct ReleasePage {
    csrf: String,
    fleet: String,
    version: String,
    id: String,
    created: String,
    pinned: bool,
    latest: bool,
    services: Vec<ReleaseService>,
}

/// `GET /fleets/{name}/releases/{version}`.
pub async fn release(
    State(cp): State<ControlPlane>,
    session: Session,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, DashError> {
    let fleet = find_fleet(&cp, &name).await?;
    check_word("release", &version)?;
    let releases = Releases::of(&cp, &fleet).await?;
    let r = releases.by_version(&version).ok_or_else(|| {
        DashError::not_found(format!("fleet `{name}` has no release `{version}`"))
    })?;
    let mut services = Vec::new();
    for (name, spec) in services_of(r)? {
        let (repository, digest) = spec
            .image
            .split_once('@')
            .map_or((spec.image.as_str(), ""), |(repo, digest)| (repo, digest));
        let mut grants = Vec::new();
        for (label, g) in &spec.grants.gpio {
            let modes: Vec<String> = g.modes.iter().map(ToString::to_string).collect();
            grants.push(format!("GPIO `{label}`: {}", modes.join(", ")));
        }
        for (label, g) in &spec.grants.i2c {
            let a: Vec<String> = g.addresses.iter().map(|a| format!("{a:#04x}")).collect();
            grants.push(format!("I2C `{label}`: {}", a.join(", ")));
        }
        grants.extend(network_asks(&spec.grants.network));
        services.push(ReleaseService {
            repository: repository.to_owned(),
            digest: digest.to_owned(),
            signer: spec
                .signer
                .clone()
                .unwrap_or_else(|| "any trusted key".to_owned()),
            memory: spec.memory.to_string(),
            restart: spec.restart.to_string(),
            strategy: serde_json::to_value(spec.update_strategy)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            env: spec.env.into_iter().collect(),
            grants,
            name,
        });
    }
    let page = ReleasePage {
        csrf: session.csrf.clone(),
        fleet: fleet.name.clone(),
        version: r.version.clone(),
        id: r.id.clone(),
        created: utc(r.created_at),
        pinned: fleet.pinned_release.as_deref() == Some(r.id.as_str()),
        latest: releases.all.last().is_some_and(|l| l.id == r.id),
        services,
    };
    render(&page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_as_people_write_them() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06:40 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(bytes(200 << 20), "200 MiB");
    }
}
