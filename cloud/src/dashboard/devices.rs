//! One device's page: its services, the hardware its release asks for and
//! what the cloud's map grants, its variables, logs and history.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use kelp_core::hardware_map::HardwareMap;

use super::format::{ago, bytes, utc};
use super::forms::{VarItem, var_items};
use super::releases::{Releases, network_asks};
use super::session::{NoFields, Posted, Session};
use super::{DashError, plot, render};
use crate::ControlPlane;
use crate::db;
use crate::ops::maps::Given;
use crate::ops::reports::LogRead;
use crate::ops::{self, ServiceSpec, is_online};

/// Seconds of history a device page plots: an hour shows a restart loop
/// or a leak at a glance; the cloud keeps a day (`KEPT_SAMPLE_AGE` in `db/services.rs`),
/// which `GET /api/v1/devices/{uuid}/samples?since=` returns.
pub const PLOT_WINDOW: i64 = 60 * 60;

/// Log lines a device page shows when it opens; newer ones stream in after
/// them. Enough to see what led up to now without a page of megabytes.
pub const LOG_BACKLOG: i64 = 200;

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

/// `GET /devices/{uuid}`.
pub async fn device(
    State(cp): State<ControlPlane>,
    session: Session,
    Path(uuid): Path<String>,
) -> Result<Response, DashError> {
    let d = ops::devices::find(&cp, &uuid).await?;
    let fleet = ops::fleets::find(&cp, &d.fleet).await?;
    let releases = Releases::of(&cp, &fleet).await?;
    let services = ops::devices::services(&cp, &d.uuid)
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
    let (map_text, hardware_source) = match ops::maps::given(&cp, &d).await? {
        Given::Device(m) => (
            Some(m),
            "this device's hardware map, set in the cloud".to_owned(),
        ),
        Given::Fleet(m) => (Some(m), "the fleet's hardware map".to_owned()),
        Given::Neither => (
            None,
            "the device's own hardware map (not known to the cloud)".to_owned(),
        ),
    };
    let map = map_text.as_deref().and_then(|t| HardwareMap::parse(t).ok());
    let mut hardware = Vec::new();
    let running = d.current_release.as_deref().or(releases.target_of(&d));
    if let Some(r) = running.and_then(|id| releases.all.iter().find(|r| r.id == id)) {
        for (name, spec) in ops::releases::services_of(r)? {
            hardware.extend(grants_of(&name, &spec, map.as_ref()));
        }
    }

    let backlog = LogRead {
        limit: Some(LOG_BACKLOG),
        ..LogRead::default()
    };
    let logs: Vec<LogItem> = ops::reports::logs(&cp, &d.uuid, backlog)
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
        service_names.extend(ops::releases::services_of(r)?.into_keys());
    }
    let vars = ops::vars::all(&cp, &d.fleet, Some(&d.uuid)).await?;
    let since = db::now().saturating_sub(PLOT_WINDOW);
    let samples = ops::reports::samples(&cp, &d.uuid, since).await?;
    let standing = releases.standing(&d);
    let page = DevicePage {
        csrf: session.csrf.clone(),
        online: is_online(d.last_seen),
        last_seen: ago(d.last_seen),
        created: utc(d.created_at),
        current: standing.current,
        target: standing.target,
        pinned: releases.version(d.pinned_release.as_deref()),
        update: d.update.as_ref().map(|u| match &u.reason {
            Some(_) => releases.update_line(u),
            None => format!("{} ({})", releases.update_line(u), ago(u.at)),
        }),
        tags: ops::devices::tags(&cp, &d.uuid)
            .await?
            .into_iter()
            .collect(),
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

/// `POST /devices/{uuid}/services/{service}/restart`: asks the device to
/// restart one of the services it reports, as the API's restart does.
pub async fn restart_service(
    State(cp): State<ControlPlane>,
    Path((uuid, service)): Path<(String, String)>,
    Posted { session, .. }: Posted<NoFields>,
) -> Result<Response, DashError> {
    let (d, _) = ops::devices::restart(&cp, &session.token_id, &uuid, &service).await?;
    Ok(Redirect::to(&format!("/devices/{}#services", d.uuid)).into_response())
}
