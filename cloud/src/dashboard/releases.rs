//! A fleet's releases: the page of one, and what the other pages need to
//! know of them.

use axum::extract::{Path, State};
use axum::response::Response;

use super::format::utc;
use super::session::Session;
use super::{DashError, render};
use crate::ControlPlane;
use crate::db::{DeviceRow, FleetRow, ReleaseRow, UpdateRow};
use crate::ops;

/// A fleet's releases, and its target for devices that follow it.
pub struct Releases {
    pub all: Vec<ReleaseRow>,
    pub fleet_target: Option<String>,
}

impl Releases {
    pub async fn of(cp: &ControlPlane, fleet: &FleetRow) -> Result<Releases, DashError> {
        let all = ops::releases::all(cp, &fleet.name).await?;
        let fleet_target = fleet
            .pinned_release
            .clone()
            .or_else(|| all.last().map(|r| r.id.clone()));
        Ok(Releases { all, fleet_target })
    }

    pub fn version(&self, id: Option<&str>) -> Option<String> {
        let id = id?;
        Some(
            self.all
                .iter()
                .find(|r| r.id == id)
                .map_or_else(|| format!("({id})"), |r| r.version.clone()),
        )
    }

    /// The release id a device should run.
    pub fn target_of<'a>(&'a self, d: &'a DeviceRow) -> Option<&'a str> {
        d.pinned_release.as_deref().or(self.fleet_target.as_deref())
    }

    pub fn by_version(&self, version: &str) -> Option<&ReleaseRow> {
        self.all.iter().find(|r| r.version == version)
    }

    /// Where device `d` stands: the versions it runs and should run.
    pub fn standing(&self, d: &DeviceRow) -> Standing {
        let target = self.target_of(d);
        let shown = |id| self.version(id).unwrap_or_else(|| "none".to_owned());
        Standing {
            current: shown(d.current_release.as_deref()),
            target: shown(target),
            on_target: target.is_some() && d.current_release.as_deref() == target,
        }
    }

    /// How a device's last update went: the version, its state and, when
    /// the device gave one, why.
    pub fn update_line(&self, u: &UpdateRow) -> String {
        let version = self.version(Some(&u.release)).unwrap_or_default();
        match &u.reason {
            Some(why) => format!("{version} {}: {why}", u.state),
            None => format!("{version} {}", u.state),
        }
    }
}

/// A device's releases as its fleet's page and its own page show them.
pub struct Standing {
    pub current: String,
    pub target: String,
    pub on_target: bool,
}

/// What a network grant asks for, one line per kind.
pub fn network_asks(g: &kelp_core::network::NetworkGrant) -> Vec<String> {
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
    let fleet = ops::fleets::find(&cp, &name).await?;
    let found = ops::releases::find(&cp, &fleet.name, &version).await?;
    let releases = Releases::of(&cp, &fleet).await?;
    let r = releases.by_version(&found.version).unwrap_or(&found);
    let mut services = Vec::new();
    for (name, spec) in ops::releases::services_of(r)? {
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
