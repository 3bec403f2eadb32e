//! Devices' target states, worked out once per fleet and change rather
//! than once per poll.
//!
//! A target depends on the fleet's pin or latest release, the device's
//! pin, the variables of the fleet and the device, their hardware maps and
//! the restarts asked of the device; every write to any
//! of them counts a change in the fleet's `generation` in the database,
//! which a poll reads in the same query that finds the device by its key.
//! So what is kept here is only ever a copy of the database at a known
//! count: a process that finds the count moved, because it or any other
//! process changed something, reads the fleet again. Nothing here is
//! needed by another process, and a process that starts with nothing
//! answers the same. (The count only grows because fleets are never
//! deleted; a fleet made again under an old name would need a count that
//! carries on from the old one's.)
//!
//! Most devices have no pin and no variables of their own, and share
//! their fleet's target byte for byte; it is encoded and hashed once per
//! change. The others are worked out per poll from the fleet's copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderValue;
use sha2::Digest as _;

use super::ApiError;
use super::releases::view as release_view;
use super::vars::apply_env;
use crate::db::{Db, EnvRow, KeyedDevice};
use kelp_core::api::{ReleaseRef, ReleaseView, TargetService, TargetState};

/// Longest a fleet's copy is used before it is read again even though the
/// count has not moved: a write whose count failed to go up (it is
/// logged, not undone) is then late by at most this, not for ever.
pub const MAX_COPY_AGE: Duration = Duration::from_secs(5);

/// The target of `device` as the database stands at the change count read
/// with it.
pub async fn of(cp: &crate::ControlPlane, device: &KeyedDevice) -> Result<Arc<Target>, ApiError> {
    cp.targets.of(&cp.db, device).await
}

/// A target state as sent: its bytes and their strong ETag.
pub struct Target {
    pub body: Bytes,
    pub etag: String,
    pub etag_header: HeaderValue,
}

impl Target {
    fn of(state: &TargetState) -> Result<Target, ApiError> {
        let body = serde_json::to_vec(state)
            .map_err(|e| ApiError::Internal(format!("cannot encode a target state: {e}")))?;
        let etag = format!("\"{}\"", hex::encode(sha2::Sha256::digest(&body)));
        let etag_header = HeaderValue::from_str(&etag)
            .map_err(|e| ApiError::Internal(format!("ETag {etag} is not a header: {e}")))?;
        Ok(Target {
            body: body.into(),
            etag,
            etag_header,
        })
    }
}

/// One fleet as the database held it at (or after) `generation`.
struct FleetCopy {
    generation: i64,
    read_at: Instant,
    /// The fleet's own target release: its pin, else its latest.
    release: Option<Arc<ReleaseView>>,
    /// Variables for the whole fleet (`device` empty).
    vars: Vec<EnvRow>,
    /// Variables of single devices, by uuid.
    device_vars: HashMap<String, Vec<EnvRow>>,
    /// The fleet's hardware map, and those of single devices, by uuid.
    map: Option<String>,
    device_maps: HashMap<String, String>,
    /// Restarts asked of single devices, by uuid.
    device_restarts: HashMap<String, BTreeMap<String, u64>>,
    /// The target of a device with no pin and no variables of its own.
    common: Arc<Target>,
    /// Releases devices are pinned to, read as first needed. A release
    /// never changes once made.
    pinned: Mutex<HashMap<String, Option<Arc<ReleaseView>>>>,
}

/// The fleets' copies. Cheap to clone.
#[derive(Clone, Default)]
pub struct Targets {
    fleets: Arc<Mutex<HashMap<String, Arc<FleetCopy>>>>,
    /// Held while a fleet is read, so that the many requests a change
    /// wakes at once read it once between them.
    reading: Arc<tokio::sync::Mutex<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is one insert: a poisoned map is
    // still a whole map.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Targets {
    /// The target of `device`, from a copy of its fleet at least as new as
    /// the change count read with the device.
    pub async fn of(&self, db: &Db, device: &KeyedDevice) -> Result<Arc<Target>, ApiError> {
        let fleet = self.fleet(db, &device.fleet, device.generation).await?;
        let own_vars = fleet.device_vars.get(&device.uuid);
        let own_map = fleet.device_maps.get(&device.uuid);
        let restarts = fleet.device_restarts.get(&device.uuid);
        let release = match &device.pinned_release {
            None if own_vars.is_none() && own_map.is_none() && restarts.is_none() => {
                return Ok(fleet.common.clone());
            }
            None => fleet.release.clone(),
            Some(id) => pinned(db, &fleet, id).await?,
        };
        let mut vars = fleet.vars.clone();
        vars.extend(own_vars.into_iter().flatten().cloned());
        let map = own_map.or(fleet.map.as_ref());
        Ok(Arc::new(render(release.as_deref(), &vars, map, restarts)?))
    }

    /// The copy of `name` at `generation` or later, read again if there is
    /// none that recent or it is older than [`MAX_COPY_AGE`].
    async fn fleet(
        &self,
        db: &Db,
        name: &str,
        generation: i64,
    ) -> Result<Arc<FleetCopy>, ApiError> {
        let fresh =
            |f: &FleetCopy| f.generation >= generation && f.read_at.elapsed() < MAX_COPY_AGE;
        if let Some(f) = lock(&self.fleets).get(name).filter(|f| fresh(f)) {
            return Ok(f.clone());
        }
        let _reading = self.reading.lock().await;
        // Another request may have read it while this one waited.
        if let Some(f) = lock(&self.fleets).get(name).filter(|f| fresh(f)) {
            return Ok(f.clone());
        }
        let copy = Arc::new(read_fleet(db, name).await?);
        let mut fleets = lock(&self.fleets);
        let keep = fleets
            .get(name)
            .is_none_or(|old| old.generation <= copy.generation);
        if keep {
            fleets.insert(name.to_owned(), copy.clone());
        }
        Ok(copy)
    }
}

/// Reads what `name`'s targets depend on. The count is read first, so
/// what follows is at least as new as the count says.
async fn read_fleet(db: &Db, name: &str) -> Result<FleetCopy, ApiError> {
    let read_at = Instant::now();
    let fleet = db
        .fleet(name)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("a device's fleet `{name}` is missing")))?;
    let release = match &fleet.pinned_release {
        Some(id) => db.release_by_id(id).await?,
        None => db.latest_release(name).await?,
    };
    let release = release.map(release_view).transpose()?.map(Arc::new);
    let mut vars = Vec::new();
    let mut device_vars: HashMap<String, Vec<EnvRow>> = HashMap::new();
    for v in db.fleet_env(name).await? {
        if v.device.is_empty() {
            vars.push(v);
        } else {
            device_vars.entry(v.device.clone()).or_default().push(v);
        }
    }
    let map = db.hardware_map(name, None).await?;
    let device_maps = db.device_hardware_maps(name).await?.into_iter().collect();
    let device_restarts = db.fleet_restart_requests(name).await?;
    let common = Arc::new(render(release.as_deref(), &vars, map.as_ref(), None)?);
    Ok(FleetCopy {
        generation: fleet.generation,
        read_at,
        release,
        vars,
        device_vars,
        map,
        device_maps,
        device_restarts,
        common,
        pinned: Mutex::default(),
    })
}

/// The release `id` a device is pinned to, from the fleet's copy or read
/// once into it.
async fn pinned(
    db: &Db,
    fleet: &FleetCopy,
    id: &str,
) -> Result<Option<Arc<ReleaseView>>, ApiError> {
    if let Some(r) = lock(&fleet.pinned).get(id) {
        return Ok(r.clone());
    }
    let release = db
        .release_by_id(id)
        .await?
        .map(release_view)
        .transpose()?
        .map(Arc::new);
    lock(&fleet.pinned).insert(id.to_owned(), release.clone());
    Ok(release)
}

/// The target state of `release` with `vars` over each service's env,
/// `map` for the device's hardware, and the restarts asked of it.
fn render(
    release: Option<&ReleaseView>,
    vars: &[EnvRow],
    map: Option<&String>,
    restarts: Option<&BTreeMap<String, u64>>,
) -> Result<Target, ApiError> {
    let mut state = match release {
        None => TargetState {
            release: None,
            services: BTreeMap::new(),
            hardware_map: None,
            restarts: BTreeMap::new(),
        },
        Some(view) => TargetState {
            release: Some(ReleaseRef {
                id: view.id.clone(),
                version: view.version.clone(),
            }),
            services: view
                .services
                .iter()
                .map(|(name, spec)| {
                    let service = TargetService {
                        image: spec.image.clone(),
                        env: apply_env(spec.env.clone(), vars, name),
                        restart: spec.restart,
                        memory: spec.memory,
                        grants: spec.grants.clone(),
                        update_strategy: spec.update_strategy,
                        signer: spec.signer.clone(),
                    };
                    (name.clone(), service)
                })
                .collect(),
            hardware_map: None,
            restarts: BTreeMap::new(),
        },
    };
    state.hardware_map = map.cloned();
    state.restarts = restarts.cloned().unwrap_or_default();
    Target::of(&state)
}
