//! The device's hardware as services see it: the map, the backends, who
//! holds which line, and each service's share (its manifest's grants
//! intersected with what the map allows).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kelp_core::{GpioMode, Grants};

use crate::backend::{GpioBackend, I2cBackend};
use crate::linux::{LinuxGpio, LinuxI2c};
use crate::locks::{lock, read, write};
use crate::map::{GpioBinding, HardwareMap, LineId};
use crate::sim::Simulator;

/// Which backend a device uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Linux,
    Sim,
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linux" => Ok(BackendKind::Linux),
            "sim" => Ok(BackendKind::Sim),
            _ => Err(format!(
                "unknown hardware backend `{s}`: use `linux` or `sim`"
            )),
        }
    }
}

/// The hardware of one device, shared by all its services.
pub struct Hardware {
    /// Replaced whole when the device is given a new map; a service's
    /// grants are worked out from the map of the moment it starts.
    map: std::sync::RwLock<Arc<HardwareMap>>,
    pub(crate) gpio: Arc<dyn GpioBackend>,
    pub(crate) i2c: Arc<dyn I2cBackend>,
    simulator: Option<Arc<Simulator>>,
    /// Line → the service holding it.
    held: Mutex<HashMap<LineId, String>>,
}

impl std::fmt::Debug for Hardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hardware")
            .field("gpio", &self.map().gpio.keys().collect::<Vec<_>>())
            .field("i2c", &self.map().i2c.keys().collect::<Vec<_>>())
            .field("simulated", &self.simulator.is_some())
            .finish()
    }
}

impl Hardware {
    pub fn new(
        map: HardwareMap,
        gpio: Arc<dyn GpioBackend>,
        i2c: Arc<dyn I2cBackend>,
    ) -> Arc<Self> {
        Arc::new(Hardware {
            map: std::sync::RwLock::new(Arc::new(map)),
            gpio,
            i2c,
            simulator: None,
            held: Mutex::default(),
        })
    }

    /// The map's lines and buses on the kernel's GPIO and I2C devices.
    pub fn linux(map: HardwareMap) -> Arc<Self> {
        Self::new(map, Arc::new(LinuxGpio), Arc::new(LinuxI2c))
    }

    /// The map's lines and buses simulated; [`Hardware::simulator`] drives
    /// and watches them.
    pub fn simulated(map: HardwareMap) -> Arc<Self> {
        let sim = Simulator::new(&map);
        Arc::new(Hardware {
            gpio: sim.gpio_backend(),
            i2c: sim.i2c_backend(),
            simulator: Some(sim),
            map: std::sync::RwLock::new(Arc::new(map)),
            held: Mutex::default(),
        })
    }

    pub fn with_backend(kind: BackendKind, map: HardwareMap) -> Arc<Self> {
        match kind {
            BackendKind::Linux => Self::linux(map),
            BackendKind::Sim => Self::simulated(map),
        }
    }

    /// A device with no hardware to grant: every request is refused before
    /// it reaches a backend, so none is set up.
    pub fn none() -> Arc<Self> {
        Self::linux(HardwareMap::default())
    }

    /// The GPIO backend, for calling it directly (benchmarks, tools).
    pub fn gpio_backend(&self) -> &Arc<dyn GpioBackend> {
        &self.gpio
    }

    /// The map services starting now are granted by.
    pub fn map(&self) -> Arc<HardwareMap> {
        read(&self.map).clone()
    }

    /// Grants services started from now on by `map`. Those running keep
    /// what they were granted (and hold) until they restart. A simulated
    /// backend keeps the simulated devices of the map it was made with.
    pub fn set_map(&self, map: HardwareMap) {
        // Simulated hardware grows what the new map names.
        if let Some(sim) = &self.simulator {
            sim.extend(&map);
        }
        *write(&self.map) = Arc::new(map);
    }

    pub fn simulator(&self) -> Option<&Arc<Simulator>> {
        self.simulator.as_ref()
    }

    /// What `service`, asking for `grants`, gets here.
    pub fn service(self: &Arc<Self>, service: &str, grants: &Grants) -> HardwareCtx {
        let map = self.map();
        let mut ctx = HardwareCtx {
            hw: self.clone(),
            service: service.to_owned(),
            gpio: BTreeMap::new(),
            i2c: BTreeMap::new(),
            missing: BTreeSet::new(),
            notices: Vec::new(),
            notify: None,
            noted: BTreeSet::new(),
        };
        for (label, grant) in &grants.gpio {
            let Some(binding) = map.gpio.get(label) else {
                ctx.missing.insert(label.clone());
                ctx.notices.push(format!(
                    "grant gpio.{label}: this device has no GPIO line labelled `{label}`"
                ));
                continue;
            };
            let modes = binding.allowed_modes(&grant.modes);
            let refused: Vec<String> = grant
                .modes
                .difference(&modes)
                .map(|m| m.to_string())
                .collect();
            if !refused.is_empty() {
                ctx.notices.push(format!(
                    "grant gpio.{label}: this device does not allow {}",
                    refused.join(", ")
                ));
            }
            ctx.gpio.insert(
                label.clone(),
                PinGrant {
                    binding: binding.clone(),
                    modes,
                },
            );
        }
        for (label, grant) in &grants.i2c {
            let Some(binding) = map.i2c.get(label) else {
                ctx.missing.insert(label.clone());
                ctx.notices.push(format!(
                    "grant i2c.{label}: this device has no I2C bus labelled `{label}`"
                ));
                continue;
            };
            let addresses = binding.allowed_addresses(&grant.addresses);
            let refused: Vec<String> = grant
                .addresses
                .difference(&addresses)
                .map(|a| format!("{a:#04x}"))
                .collect();
            if !refused.is_empty() {
                ctx.notices.push(format!(
                    "grant i2c.{label}: this device does not allow address {}",
                    refused.join(", ")
                ));
            }
            ctx.i2c.insert(
                label.clone(),
                BusGrant {
                    bus: binding.bus.clone(),
                    addresses,
                },
            );
        }
        ctx
    }

    /// Marks `line` held by `service`, or says who holds it.
    pub(crate) fn claim(self: &Arc<Self>, line: &LineId, service: &str) -> Result<Claim, String> {
        let mut held = lock(&self.held);
        if let Some(holder) = held.get(line) {
            return Err(holder.clone());
        }
        held.insert(line.clone(), service.to_owned());
        Ok(Claim {
            hw: self.clone(),
            line: line.clone(),
        })
    }

    /// Who holds each line now.
    pub fn holders(&self) -> BTreeMap<LineId, String> {
        lock(&self.held)
            .iter()
            .map(|(l, s)| (l.clone(), s.clone()))
            .collect()
    }
}

/// A service's hold on a line; dropping it lets others have the line.
pub(crate) struct Claim {
    hw: Arc<Hardware>,
    line: LineId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.hw.held).remove(&self.line);
    }
}

pub(crate) struct PinGrant {
    pub(crate) binding: GpioBinding,
    pub(crate) modes: BTreeSet<GpioMode>,
}

pub(crate) struct BusGrant {
    pub(crate) bus: PathBuf,
    pub(crate) addresses: BTreeSet<u16>,
}

/// Receives the host's notes about a service's hardware (grants the device
/// cannot meet, refusals), for the service's log.
pub type Notify = Arc<dyn Fn(&str) + Send + Sync>;

/// One service's share of the device's hardware, for one run. Resources it
/// hands out live in the run's resource table; when the run ends they are
/// dropped, outputs go to their safe level and lines are released.
pub struct HardwareCtx {
    pub(crate) hw: Arc<Hardware>,
    pub(crate) service: String,
    pub(crate) gpio: BTreeMap<String, PinGrant>,
    pub(crate) i2c: BTreeMap<String, BusGrant>,
    /// Labels the manifest asks for that the device does not have.
    pub(crate) missing: BTreeSet<String>,
    notices: Vec<String>,
    notify: Option<Notify>,
    noted: BTreeSet<String>,
}

impl HardwareCtx {
    /// Grants the manifest asks for that this device cannot give, one line
    /// each.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// Where refusals are reported (once each).
    pub fn set_notify(&mut self, notify: Notify) {
        self.notify = Some(notify);
    }

    pub(crate) fn note(&mut self, message: String) {
        if let Some(notify) = &self.notify
            && self.noted.len() < 256
            && self.noted.insert(message.clone())
        {
            notify(&message);
        }
    }
}
