//! The device's hardware map: which physical line or bus each label names,
//! and the most any service may do with it.
//!
//! ```toml
//! [gpio.led]
//! chip = "gpiochip0"          # or a path under /dev, or the chip's label
//! line = 17
//! modes = ["output"]          # optional; narrows what services may do
//! safe = "low"                # level the line returns to when its holder stops
//!
//! [gpio.button]
//! chip = "gpiochip0"
//! line = 27
//! modes = ["input", "edges"]
//!
//! [i2c.sensors]
//! bus = "/dev/i2c-1"
//! addresses = [0x48]          # optional; narrows which devices services reach
//!
//! # Optional: narrows every service's network grants (see `network`).
//! [network]
//! allow = ["192.168.0.0/16", "*.local"]  # absent: no narrowing; [] : no network
//! http-listen = "0.0.0.0:8080"           # where path-bound HTTP services answer
//!
//! # Where a service that answers HTTP is served: a path prefix on
//! # `network.http-listen`, or a listener of its own.
//! [http.http-hello]
//! path = "/hello"
//! [http.status-page]
//! listen = "0.0.0.0:8081"
//!
//! # Read only by the simulated backend: the devices on its buses.
//! [[sim.i2c]]
//! bus = "sensors"             # a label above
//! address = 0x48
//! device = "tmp102"           # tmp102 or registers
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::network::Destination;
use crate::{GpioMode, MAX_I2C_ADDRESS, valid_label, valid_service_name};
use serde::Deserialize;
use std::net::SocketAddr;

/// Largest map file read; a board has at most a few hundred lines.
const MAX_FILE: u64 = 256 << 10;

/// A GPIO line: a chip's character device and an offset on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineId {
    pub chip: PathBuf,
    pub line: u32,
}

impl fmt::Display for LineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.chip.display(), self.line)
    }
}

/// The level an output goes back to when the service holding it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SafeLevel {
    #[default]
    Low,
    High,
}

/// What a label names on this device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpioBinding {
    pub line: LineId,
    /// The most a service may do with it.
    pub modes: BTreeSet<GpioMode>,
    pub safe: SafeLevel,
}

impl GpioBinding {
    /// Of the modes a grant `asked` for, those this line allows.
    pub fn allowed_modes(&self, asked: &BTreeSet<GpioMode>) -> BTreeSet<GpioMode> {
        asked.intersection(&self.modes).copied().collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I2cBinding {
    pub bus: PathBuf,
    /// Devices services may reach; `None` allows any address.
    pub addresses: Option<BTreeSet<u16>>,
}

impl I2cBinding {
    /// Of the addresses a grant `asked` for, those this bus allows.
    pub fn allowed_addresses(&self, asked: &BTreeSet<u16>) -> BTreeSet<u16> {
        match &self.addresses {
            Some(allowed) => asked.intersection(allowed).copied().collect(),
            None => asked.clone(),
        }
    }
}

/// A device the simulated backend puts on a bus.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDeviceSpec {
    /// The label of the bus.
    pub bus: String,
    pub address: u16,
    pub device: SimDeviceKind,
    /// Starting temperature of a sensor, in °C.
    pub temperature: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimDeviceKind {
    /// Texas Instruments TMP102 temperature sensor.
    Tmp102,
    /// 256 byte registers with an auto-incrementing pointer (an EEPROM-like
    /// generic device).
    Registers,
}

/// Where the device serves a service that answers HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpBinding {
    /// Under this prefix (`/hello`, no trailing slash) on the shared
    /// listener, `network.http-listen`.
    Path(String),
    /// On a listener of its own.
    Listen(SocketAddr),
}

/// The whole map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HardwareMap {
    pub gpio: BTreeMap<String, GpioBinding>,
    pub i2c: BTreeMap<String, I2cBinding>,
    pub sim_devices: Vec<SimDeviceSpec>,
    /// The most any service may reach; `None` does not narrow.
    pub network_allow: Option<Vec<Destination>>,
    /// The listener path-bound HTTP services share.
    pub http_listen: Option<SocketAddr>,
    /// HTTP services by service name.
    pub http: BTreeMap<String, HttpBinding>,
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cannot read hardware map `{path}`: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("hardware map `{path}` is larger than {MAX_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("hardware map `{path}` is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    #[serde(default)]
    gpio: BTreeMap<String, GpioEntry>,
    #[serde(default)]
    i2c: BTreeMap<String, I2cEntry>,
    #[serde(default)]
    sim: SimSection,
    #[serde(default)]
    network: NetworkSection,
    #[serde(default)]
    http: BTreeMap<String, HttpEntry>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct NetworkSection {
    allow: Option<Vec<Destination>>,
    http_listen: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpEntry {
    path: Option<String>,
    listen: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpioEntry {
    chip: String,
    line: u32,
    modes: Option<BTreeSet<GpioMode>>,
    #[serde(default)]
    safe: SafeLevel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct I2cEntry {
    bus: PathBuf,
    addresses: Option<BTreeSet<u16>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimSection {
    #[serde(default)]
    i2c: Vec<SimDeviceSpec>,
}

impl HardwareMap {
    /// Reads and checks a map file.
    pub fn load(path: &Path) -> Result<Self, MapError> {
        let read = |error| MapError::Read {
            path: path.to_owned(),
            error,
        };
        if std::fs::metadata(path).map_err(read)?.len() > MAX_FILE {
            return Err(MapError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text).map_err(|message| MapError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and checks map text; the error is one line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: MapFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| {
                1 + text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
            });
            format!("line {line}: {}", e.message().trim().replace('\n', " "))
        })?;
        let mut map = HardwareMap::default();
        let mut lines: HashMap<LineId, String> = HashMap::new();
        for (label, entry) in file.gpio {
            check_label("gpio", &label)?;
            let line = LineId {
                chip: chip_path(&entry.chip)
                    .ok_or_else(|| format!("gpio.{label}: `{}` is not a GPIO chip: use a name like `gpiochip0`, a path under /dev or the chip's label", entry.chip))?,
                line: entry.line,
            };
            if let Some(other) = lines.insert(line.clone(), label.clone()) {
                return Err(format!("gpio.{label} and gpio.{other} both name {line}"));
            }
            let modes = entry.modes.unwrap_or_else(|| {
                BTreeSet::from([GpioMode::Input, GpioMode::Output, GpioMode::Edges])
            });
            if modes.is_empty() {
                return Err(format!(
                    "gpio.{label}: `modes` is empty; leave it out to allow every mode"
                ));
            }
            map.gpio.insert(
                label,
                GpioBinding {
                    line,
                    modes,
                    safe: entry.safe,
                },
            );
        }
        for (label, entry) in file.i2c {
            check_label("i2c", &label)?;
            if !entry.bus.is_absolute()
                || entry
                    .bus
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(format!(
                    "i2c.{label}: bus `{}` must be an absolute path such as /dev/i2c-1",
                    entry.bus.display()
                ));
            }
            if let Some(bad) = entry
                .addresses
                .iter()
                .flatten()
                .find(|&&a| a > MAX_I2C_ADDRESS)
            {
                return Err(format!(
                    "i2c.{label}: address {bad:#x} is above {MAX_I2C_ADDRESS:#x}"
                ));
            }
            map.i2c.insert(
                label,
                I2cBinding {
                    bus: entry.bus,
                    addresses: entry.addresses,
                },
            );
        }
        let mut placed = BTreeSet::new();
        for device in &file.sim.i2c {
            if !map.i2c.contains_key(&device.bus) {
                return Err(format!(
                    "sim.i2c: no bus labelled `{}` in [i2c]",
                    device.bus
                ));
            }
            if device.address > MAX_I2C_ADDRESS {
                return Err(format!(
                    "sim.i2c: address {:#x} is above {MAX_I2C_ADDRESS:#x}",
                    device.address
                ));
            }
            if !placed.insert((device.bus.clone(), device.address)) {
                return Err(format!(
                    "sim.i2c: two devices at {:#x} on `{}`",
                    device.address, device.bus
                ));
            }
        }
        map.sim_devices = file.sim.i2c;
        if let Some(allow) = &file.network.allow
            && allow.len() > crate::network::MAX_DESTINATIONS
        {
            return Err(format!(
                "network.allow: more than {} entries",
                crate::network::MAX_DESTINATIONS
            ));
        }
        map.network_allow = file.network.allow;
        map.http_listen = file.network.http_listen;
        let mut paths = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        for (service, entry) in file.http {
            if !valid_service_name(&service) {
                return Err(format!("http.{service}: not a service name"));
            }
            let binding = match (entry.path, entry.listen) {
                (Some(path), None) => {
                    let path = check_http_path(&service, &path)?;
                    if map.http_listen.is_none() {
                        return Err(format!(
                            "http.{service}: `path` needs `network.http-listen`, the listener paths share"
                        ));
                    }
                    if let Some(other) = paths.insert(path.clone(), service.clone()) {
                        return Err(format!(
                            "http.{service} and http.{other} both take `{path}`"
                        ));
                    }
                    HttpBinding::Path(path)
                }
                (None, Some(addr)) => {
                    if Some(addr) == map.http_listen {
                        return Err(format!(
                            "http.{service}: {addr} is `network.http-listen`; use `path` to share it"
                        ));
                    }
                    if let Some(other) = listeners.insert(addr, service.clone()) {
                        return Err(format!(
                            "http.{service} and http.{other} both listen on {addr}"
                        ));
                    }
                    HttpBinding::Listen(addr)
                }
                _ => {
                    return Err(format!(
                        "http.{service}: give exactly one of `path` and `listen`"
                    ));
                }
            };
            map.http.insert(service, binding);
        }
        Ok(map)
    }
}

fn check_label(kind: &str, label: &str) -> Result<(), String> {
    if valid_label(label) {
        Ok(())
    } else {
        Err(format!(
            "{kind}.{label}: labels are 1 to 63 letters, digits, `-` and `_`"
        ))
    }
}

/// A path prefix: `/` and segments of URL-safe characters, no `.`/`..`
/// segment, no trailing slash (`/` alone is the whole listener).
fn check_http_path(service: &str, path: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "http.{service}: path `{path}` must start with `/` and hold plain segments such as `/hello`"
        )
    };
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if !path.starts_with('/') || path.len() > 256 {
        return Err(bad());
    }
    if trimmed.is_empty() {
        return Ok("/".to_owned());
    }
    let ok = trimmed[1..].split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    });
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(bad())
    }
}

/// `gpiochip0` → `/dev/gpiochip0`; a path under `/dev` is kept; a chip's
/// label stays as it is.
fn chip_path(chip: &str) -> Option<PathBuf> {
    let path = Path::new(chip);
    if path.is_absolute() {
        let normal = path.starts_with("/dev/")
            && !path
                .components()
                .any(|c| c == std::path::Component::ParentDir);
        return normal.then(|| path.to_owned());
    }
    let name = chip.starts_with("gpiochip")
        && chip.len() > 8
        && chip[8..].bytes().all(|b| b.is_ascii_digit());
    if name {
        return Some(Path::new("/dev").join(chip));
    }
    // A label as the kernel reports it (`gpio-sim.0-node0`,
    // `pinctrl-bcm2711`): kept relative, the backend looks it up. Never a
    // path: no `/`, and not `.` or `..`.
    let label = (1..=MAX_CHIP_LABEL).contains(&chip.len())
        && chip.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        && chip != "."
        && chip != "..";
    label.then(|| PathBuf::from(chip))
}

/// Longest GPIO chip label the kernel reports (`GPIO_MAX_NAME_SIZE` is 32
/// bytes with the terminating NUL).
const MAX_CHIP_LABEL: usize = 31;

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"
        [gpio.led]
        chip = "gpiochip0"
        line = 17
        modes = ["output"]
        safe = "high"

        [gpio.button]
        chip = "/dev/gpiochip1"
        line = 3

        [i2c.sensors]
        bus = "/dev/i2c-1"
        addresses = [0x48]

        [[sim.i2c]]
        bus = "sensors"
        address = 0x48
        device = "tmp102"
        temperature = 21.5
    "#;

    #[test]
    fn reads_bindings_with_defaults() {
        let map = HardwareMap::parse(MAP).unwrap();
        let led = &map.gpio["led"];
        assert_eq!(led.line.chip, Path::new("/dev/gpiochip0"));
        assert_eq!(led.line.line, 17);
        assert_eq!(led.modes, BTreeSet::from([GpioMode::Output]));
        assert_eq!(led.safe, SafeLevel::High);
        let button = &map.gpio["button"];
        assert_eq!(button.modes.len(), 3, "no `modes` allows every mode");
        assert_eq!(button.safe, SafeLevel::Low);
        assert_eq!(map.i2c["sensors"].addresses, Some(BTreeSet::from([0x48])));
        assert_eq!(map.sim_devices[0].device, SimDeviceKind::Tmp102);
        assert_eq!(map.sim_devices[0].temperature, Some(21.5));
    }

    #[test]
    fn a_chip_may_be_named_by_its_label() {
        let map =
            HardwareMap::parse("[gpio.led]\nchip = \"gpio-sim.0-node0\"\nline = 0\n").unwrap();
        assert_eq!(map.gpio["led"].line.chip, Path::new("gpio-sim.0-node0"));
        for bad in ["..", "a b", "x/y", &"l".repeat(32)] {
            let text = format!("[gpio.led]\nchip = {bad:?}\nline = 0\n");
            let err = HardwareMap::parse(&text).unwrap_err().to_string();
            assert!(err.contains("is not a GPIO chip"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_what_would_be_ambiguous_or_reach_outside_dev() {
        let cases = [
            (
                "chip = \"gpiochip0\"",
                "chip = \"../../etc/passwd\"",
                "is not a GPIO chip",
            ),
            (
                "chip = \"gpiochip0\"",
                "chip = \"/dev/../etc/x\"",
                "is not a GPIO chip",
            ),
            (
                "chip = \"/dev/gpiochip1\"\n        line = 3",
                "chip = \"gpiochip0\"\n        line = 17",
                "both name /dev/gpiochip0 line 17",
            ),
            (
                "bus = \"/dev/i2c-1\"",
                "bus = \"i2c-1\"",
                "must be an absolute path",
            ),
            (
                "addresses = [0x48]",
                "addresses = [0x800]",
                "address 0x800 is above 0x3ff",
            ),
            (
                "bus = \"sensors\"",
                "bus = \"nowhere\"",
                "no bus labelled `nowhere`",
            ),
            (
                "modes = [\"output\"]",
                "modes = [\"output\"]\n        pins = 3",
                "unknown field `pins`",
            ),
            ("[gpio.led]", "[gpio.\"a/b\"]", "gpio.a/b: labels are"),
        ];
        for (from, to, expected) in cases {
            assert!(MAP.contains(from), "{from}");
            let err = HardwareMap::parse(&MAP.replacen(from, to, 1)).unwrap_err();
            assert!(err.contains(expected), "{to}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn network_and_http_sections() {
        let map = HardwareMap::parse(
            r#"
            [network]
            allow = ["192.168.0.0/16", "*.local"]
            http-listen = "0.0.0.0:8080"
            [http.http-hello]
            path = "/hello/"
            [http.status]
            listen = "127.0.0.1:8081"
            "#,
        )
        .unwrap();
        assert_eq!(map.network_allow.as_ref().map(Vec::len), Some(2));
        assert_eq!(map.http_listen, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(map.http["http-hello"], HttpBinding::Path("/hello".into()));
        assert_eq!(
            map.http["status"],
            HttpBinding::Listen("127.0.0.1:8081".parse().unwrap())
        );
        // No [network] section: nothing narrowed, nothing served.
        let map = HardwareMap::parse("").unwrap();
        assert!(map.network_allow.is_none() && map.http.is_empty());
    }

    #[test]
    fn refuses_bad_network_and_http_entries() {
        for (text, want) in [
            ("[network]\nallow = [\"a b\"]", "invalid host name"),
            ("[network]\nalow = []", "alow"),
            ("[http.x]\npath = \"/x\"", "needs `network.http-listen`"),
            (
                "[network]\nhttp-listen = \"0.0.0.0:80\"\n[http.x]\npath = \"/../etc\"",
                "plain segments",
            ),
            (
                "[network]\nhttp-listen = \"0.0.0.0:80\"\n[http.x]\npath = \"x\"",
                "must start with `/`",
            ),
            ("[http.x]\n", "exactly one of"),
            (
                "[http.x]\npath = \"/x\"\nlisten = \"0.0.0.0:1\"",
                "exactly one of",
            ),
            (
                "[http.a]\nlisten = \"0.0.0.0:81\"\n[http.b]\nlisten = \"0.0.0.0:81\"",
                "both listen",
            ),
            (
                "[network]\nhttp-listen = \"0.0.0.0:80\"\n[http.a]\npath = \"/p\"\n[http.b]\npath = \"/p/\"",
                "both take",
            ),
            ("[http.BAD]\nlisten = \"0.0.0.0:81\"", "not a service name"),
        ] {
            let e = HardwareMap::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
