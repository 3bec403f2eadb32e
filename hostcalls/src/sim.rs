//! The simulated backend: a virtual GPIO chip whose lines a test or a person
//! can drive and watch, and virtual I2C buses with emulated devices faithful
//! enough for unchanged driver crates.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use crate::backend::{
    Bias, GpioBackend, GpioLine, HwError, I2cBackend, I2cBus, I2cError, I2cOp, LineEvents,
    LineRequest,
};
use crate::locks::{lock, read, write};
use crate::map::{HardwareMap, LineId, SimDeviceKind};

/// Level changes a simulated line remembers, oldest dropped first.
pub const HISTORY: usize = 4096;

/// The simulated hardware of one device: every line and bus its map names.
pub struct Simulator {
    map: RwLock<HardwareMap>,
    gpio: Arc<SimGpio>,
    i2c: Arc<SimI2c>,
}

impl Simulator {
    /// A line for each GPIO binding and a bus, with its `[[sim.i2c]]`
    /// devices, for each I2C binding.
    pub fn new(map: &HardwareMap) -> Arc<Self> {
        let sim = Simulator {
            map: RwLock::new(HardwareMap::default()),
            gpio: Arc::new(SimGpio {
                lines: RwLock::default(),
            }),
            i2c: Arc::new(SimI2c {
                buses: RwLock::default(),
            }),
        };
        sim.extend(map);
        Arc::new(sim)
    }

    /// Makes the lines and buses `map` names that are not here yet, and
    /// takes its labels. A device given a new map keeps the lines and
    /// buses it had, with their state, as a board keeps its wiring.
    pub fn extend(&self, map: &HardwareMap) {
        {
            let mut lines = write(&self.gpio.lines);
            for b in map.gpio.values() {
                lines
                    .entry(b.line.clone())
                    .or_insert_with(|| Arc::new(SimLine::new(b.line.clone())));
            }
        }
        let mut buses = write(&self.i2c.buses);
        for (label, binding) in &map.i2c {
            if buses.contains_key(&binding.bus) {
                continue;
            }
            let bus = Arc::new(SimBus::default());
            for spec in map.sim_devices.iter().filter(|d| &d.bus == label) {
                let mut device: Box<dyn SimDevice> = match spec.device {
                    SimDeviceKind::Tmp102 => Box::new(Tmp102::default()),
                    SimDeviceKind::Registers => Box::new(Registers::default()),
                };
                if let Some(t) = spec.temperature {
                    // Only sensors have a temperature; the map checked the kind.
                    let _ = device.set("temperature", t);
                }
                lock(&bus.devices).insert(spec.address, device);
            }
            buses.insert(binding.bus.clone(), bus);
        }
        *write(&self.map) = map.clone();
    }

    pub fn gpio_backend(&self) -> Arc<dyn GpioBackend> {
        self.gpio.clone()
    }

    pub fn i2c_backend(&self) -> Arc<dyn I2cBackend> {
        self.i2c.clone()
    }

    /// The line a label names.
    pub fn line(&self, label: &str) -> Option<Arc<SimLine>> {
        let id = read(&self.map).gpio.get(label)?.line.clone();
        read(&self.gpio.lines).get(&id).cloned()
    }

    /// Every line, with its label.
    pub fn lines(&self) -> Vec<(String, Arc<SimLine>)> {
        let lines = read(&self.gpio.lines);
        read(&self.map)
            .gpio
            .iter()
            .filter_map(|(label, b)| Some((label.clone(), lines.get(&b.line)?.clone())))
            .collect()
    }

    /// The bus a label names.
    pub fn bus(&self, label: &str) -> Option<Arc<SimBus>> {
        let path = read(&self.map).i2c.get(label)?.bus.clone();
        read(&self.i2c.buses).get(&path).cloned()
    }

    /// Applies a setting written as `LABEL=0|1` (drives an input line; `-`
    /// lets it float) or `BUS/ADDRESS/PROPERTY=VALUE` (a device property,
    /// such as `sensors/0x48/temperature=23.5`).
    pub fn set(&self, setting: &str) -> Result<(), String> {
        let (target, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("`{setting}`: expected LABEL=VALUE"))?;
        let (target, value) = (target.trim(), value.trim());
        match target.split('/').collect::<Vec<_>>()[..] {
            [label] => {
                let line = self
                    .line(label)
                    .ok_or_else(|| format!("`{setting}`: no GPIO line labelled `{label}`"))?;
                let level = match value {
                    "1" | "high" => Some(true),
                    "0" | "low" => Some(false),
                    "-" | "float" => None,
                    _ => return Err(format!("`{setting}`: a line is 1, 0 or - (floating)")),
                };
                line.drive(level);
                Ok(())
            }
            [label, address, property] => {
                let bus = self
                    .bus(label)
                    .ok_or_else(|| format!("`{setting}`: no I2C bus labelled `{label}`"))?;
                let address = parse_address(address)
                    .ok_or_else(|| format!("`{setting}`: `{address}` is not an address"))?;
                let value: f64 = value
                    .parse()
                    .map_err(|_| format!("`{setting}`: `{value}` is not a number"))?;
                let mut devices = lock(&bus.devices);
                let device = devices.get_mut(&address).ok_or_else(|| {
                    format!("`{setting}`: no device at {address:#x} on `{label}`")
                })?;
                device
                    .set(property, value)
                    .map_err(|e| format!("`{setting}`: {e}"))
            }
            _ => Err(format!(
                "`{setting}`: expected LABEL=VALUE or BUS/ADDRESS/PROPERTY=VALUE"
            )),
        }
    }
}

fn parse_address(text: &str) -> Option<u16> {
    match text.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

struct SimGpio {
    lines: RwLock<HashMap<LineId, Arc<SimLine>>>,
}

impl GpioBackend for SimGpio {
    fn request(&self, id: &LineId, request: &LineRequest) -> Result<Box<dyn GpioLine>, HwError> {
        let line = read(&self.lines)
            .get(id)
            .cloned()
            .ok_or_else(|| HwError::NotFound(id.to_string()))?;
        line.request(request)?;
        Ok(Box::new(Held { line: line.clone() }))
    }
}

/// A simulated line: what it is driven to, by a service or from outside,
/// and every change of level.
pub struct SimLine {
    id: LineId,
    state: Mutex<LineState>,
    events: watch::Sender<LineEvents>,
    requests: AtomicU64,
}

#[derive(Default)]
struct LineState {
    holder: Option<LineRequest>,
    /// What an output holder drives (or drove last: a released output
    /// keeps its level, as most GPIO controllers do).
    driven: bool,
    /// No one holds the line and its last holder drove it.
    released_output: bool,
    /// What the outside world drives an input to; `None` floats.
    external: Option<bool>,
    history: VecDeque<(Instant, bool)>,
}

impl LineState {
    fn level(&self) -> bool {
        match &self.holder {
            Some(LineRequest {
                output: Some(_), ..
            }) => self.driven,
            None if self.released_output => self.driven,
            holder => self.external.unwrap_or(matches!(
                holder.as_ref().and_then(|h| h.bias),
                Some(Bias::PullUp)
            )),
        }
    }
}

impl SimLine {
    fn new(id: LineId) -> Self {
        SimLine {
            id,
            state: Mutex::default(),
            events: watch::Sender::new(LineEvents::default()),
            requests: AtomicU64::new(0),
        }
    }

    pub fn id(&self) -> &LineId {
        &self.id
    }

    /// The physical level.
    pub fn level(&self) -> bool {
        lock(&self.state).level()
    }

    /// Whether a service holds the line, and whether as an output.
    pub fn holder(&self) -> Option<bool> {
        lock(&self.state)
            .holder
            .as_ref()
            .map(|h| h.output.is_some())
    }

    /// How many times the line has been requested.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Level changes, oldest first, with when they happened.
    pub fn history(&self) -> Vec<(Instant, bool)> {
        lock(&self.state).history.iter().copied().collect()
    }

    /// Level and edge counts as they change.
    pub fn subscribe(&self) -> watch::Receiver<LineEvents> {
        self.events.subscribe()
    }

    /// Drives the line from outside (a button, a sensor's alert pin);
    /// `None` lets it float to its pull.
    pub fn drive(&self, level: Option<bool>) {
        self.update(|s| {
            s.external = level;
            s.released_output = false;
        });
    }

    fn request(&self, request: &LineRequest) -> Result<(), HwError> {
        let mut busy = false;
        self.update(|s| {
            if s.holder.is_some() {
                busy = true;
                return;
            }
            if let Some(level) = request.output {
                s.driven = level;
            }
            s.released_output = false;
            s.holder = Some(request.clone());
        });
        if busy {
            return Err(HwError::Busy);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Changes the state and records and announces a change of level.
    fn update(&self, change: impl FnOnce(&mut LineState)) {
        let mut state = lock(&self.state);
        let before = state.level();
        change(&mut state);
        let after = state.level();
        if before != after {
            if state.history.len() == HISTORY {
                state.history.pop_front();
            }
            state.history.push_back((Instant::now(), after));
        }
        self.events.send_modify(|e| {
            e.high = after;
            match (before, after) {
                (false, true) => e.rising += 1,
                (true, false) => e.falling += 1,
                _ => {}
            }
        });
    }
}

/// A service's hold on a simulated line.
struct Held {
    line: Arc<SimLine>,
}

impl GpioLine for Held {
    fn set(&self, high: bool) -> Result<(), HwError> {
        self.line.update(|s| s.driven = high);
        Ok(())
    }

    fn get(&self) -> Result<bool, HwError> {
        Ok(self.line.level())
    }

    fn watch(&self) -> Option<watch::Receiver<LineEvents>> {
        Some(self.line.subscribe())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.line.update(|s| {
            s.released_output = s.holder.as_ref().is_some_and(|h| h.output.is_some());
            s.holder = None;
        });
    }
}

struct SimI2c {
    buses: RwLock<HashMap<PathBuf, Arc<SimBus>>>,
}

impl I2cBackend for SimI2c {
    fn open(&self, bus: &Path) -> Result<Arc<dyn I2cBus>, HwError> {
        let found = read(&self.buses)
            .get(bus)
            .cloned()
            .ok_or_else(|| HwError::NotFound(bus.display().to_string()))?;
        Ok(found)
    }
}

/// A simulated bus and the devices on it.
#[derive(Default)]
pub struct SimBus {
    devices: Mutex<BTreeMap<u16, Box<dyn SimDevice>>>,
    transactions: Mutex<BTreeMap<u16, u64>>,
}

impl SimBus {
    /// Transactions that reached the bus, by address (answered or not).
    pub fn transactions(&self) -> BTreeMap<u16, u64> {
        lock(&self.transactions).clone()
    }

    /// A device property, such as a sensor's `temperature`.
    pub fn get(&self, address: u16, property: &str) -> Option<f64> {
        lock(&self.devices).get(&address)?.get(property)
    }
}

impl I2cBus for SimBus {
    fn transaction(&self, address: u16, ops: &mut [I2cOp<'_>]) -> Result<(), I2cError> {
        *lock(&self.transactions).entry(address).or_default() += 1;
        let mut devices = lock(&self.devices);
        let device = devices.get_mut(&address).ok_or(I2cError::NoAckAddress)?;
        for op in ops {
            match op {
                I2cOp::Write(bytes) => device.write(bytes)?,
                I2cOp::Read(buf) => device.read(buf)?,
            }
        }
        Ok(())
    }
}

/// An emulated I2C device. Each operation of a transaction arrives as one
/// call, after a (repeated) start.
pub trait SimDevice: Send {
    fn write(&mut self, bytes: &[u8]) -> Result<(), I2cError>;
    fn read(&mut self, buf: &mut [u8]) -> Result<(), I2cError>;
    /// Sets a property from outside (a test, the CLI).
    fn set(&mut self, property: &str, value: f64) -> Result<(), String>;
    fn get(&self, property: &str) -> Option<f64>;
}

/// The Texas Instruments TMP102, after its data sheet (SBOS397): a pointer
/// register selecting one of four 16-bit registers, written MSB first.
///
/// - 0 temperature (read only): 12-bit two's complement, 0.0625 °C per bit,
///   left-justified; 13-bit when the configuration's EM bit is set, with
///   bit 0 then set to say so.
/// - 1 configuration, reset 0x60A0. Shutdown (SD) holds the last
///   conversion; a one-shot (OS) write converts once and the OS bit reads 1
///   when it is done.
/// - 2 T(LOW), reset 75 °C; 3 T(HIGH), reset 80 °C.
pub struct Tmp102 {
    pointer: u8,
    config: u16,
    t_low: u16,
    t_high: u16,
    /// The temperature the die sees.
    celsius: f64,
    /// The last conversion's result, in 1/16 °C.
    converted: i32,
}

impl Default for Tmp102 {
    fn default() -> Self {
        let mut t = Tmp102 {
            pointer: 0,
            config: 0x60A0,
            t_low: 0x4B00,
            t_high: 0x5000,
            celsius: 25.0,
            converted: 0,
        };
        t.convert();
        t
    }
}

impl Tmp102 {
    const EXTENDED: u16 = 1 << 4;
    const SHUTDOWN: u16 = 1 << 8;
    const ONE_SHOT: u16 = 1 << 15;

    fn convert(&mut self) {
        let (lo, hi) = if self.config & Self::EXTENDED != 0 {
            (-4096, 4095)
        } else {
            (-2048, 2047)
        };
        self.converted = ((self.celsius * 16.0).round() as i32).clamp(lo, hi);
    }

    fn register(&self) -> u16 {
        match self.pointer {
            // A result kept across a change of mode saturates in the new one.
            0 => {
                if self.config & Self::EXTENDED != 0 {
                    ((self.converted.clamp(-4096, 4095) << 3) as u16) | 1
                } else {
                    (self.converted.clamp(-2048, 2047) << 4) as u16
                }
            }
            1 => self.config,
            2 => self.t_low,
            _ => self.t_high,
        }
    }
}

impl SimDevice for Tmp102 {
    fn write(&mut self, bytes: &[u8]) -> Result<(), I2cError> {
        let Some((&pointer, data)) = bytes.split_first() else {
            return Ok(());
        };
        self.pointer = pointer & 0b11;
        let value = match data {
            [] => return Ok(()),
            [msb, lsb, ..] => u16::from_be_bytes([*msb, *lsb]),
            [msb] => u16::from_be_bytes([*msb, 0]),
        };
        match self.pointer {
            0 => {}
            1 => {
                // The low nibble of the second byte is read-only.
                let one_shot = value & Self::ONE_SHOT != 0;
                self.config = (value & !Self::ONE_SHOT & 0xFFF0) | (self.config & 0x000F);
                if self.config & Self::SHUTDOWN == 0 || one_shot {
                    self.convert();
                }
                if one_shot {
                    // Conversion is instant here; OS reads 1 when done.
                    self.config |= Self::ONE_SHOT;
                }
            }
            2 => self.t_low = value,
            _ => self.t_high = value,
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), I2cError> {
        let bytes = self.register().to_be_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = bytes[i % 2];
        }
        Ok(())
    }

    fn set(&mut self, property: &str, value: f64) -> Result<(), String> {
        match property {
            "temperature" if (-128.0..=256.0).contains(&value) => {
                self.celsius = value;
                if self.config & Self::SHUTDOWN == 0 {
                    self.convert();
                }
                Ok(())
            }
            "temperature" => Err(format!("{value} °C is outside the TMP102's range")),
            _ => Err(format!(
                "a TMP102 has no property `{property}`; it has `temperature`"
            )),
        }
    }

    fn get(&self, property: &str) -> Option<f64> {
        (property == "temperature").then_some(self.celsius)
    }
}

/// 256 byte-wide registers behind an auto-incrementing pointer, like a
/// 24C02 EEPROM or most sensors' register files: a write's first byte sets
/// the pointer and the rest are stored from there; reads continue from it.
pub struct Registers {
    pointer: u8,
    bytes: [u8; 256],
}

impl Default for Registers {
    fn default() -> Self {
        Registers {
            pointer: 0,
            bytes: [0; 256],
        }
    }
}

impl SimDevice for Registers {
    fn write(&mut self, bytes: &[u8]) -> Result<(), I2cError> {
        let Some((&pointer, data)) = bytes.split_first() else {
            return Ok(());
        };
        self.pointer = pointer;
        for &b in data {
            self.bytes[usize::from(self.pointer)] = b;
            self.pointer = self.pointer.wrapping_add(1);
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), I2cError> {
        for b in buf {
            *b = self.bytes[usize::from(self.pointer)];
            self.pointer = self.pointer.wrapping_add(1);
        }
        Ok(())
    }

    fn set(&mut self, property: &str, value: f64) -> Result<(), String> {
        let register = parse_address(property)
            .and_then(|r| u8::try_from(r).ok())
            .ok_or_else(|| format!("`{property}` is not a register number 0..255"))?;
        if !(0.0..=255.0).contains(&value) || value.fract() != 0.0 {
            return Err(format!("{value} is not a byte"));
        }
        self.bytes[usize::from(register)] = value as u8;
        Ok(())
    }

    fn get(&self, property: &str) -> Option<f64> {
        let register = u8::try_from(parse_address(property)?).ok()?;
        Some(f64::from(self.bytes[usize::from(register)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &mut dyn SimDevice, pointer: u8) -> [u8; 2] {
        let mut buf = [0; 2];
        dev.write(&[pointer]).unwrap();
        dev.read(&mut buf).unwrap();
        buf
    }

    #[test]
    fn a_new_map_adds_lines_and_buses_and_keeps_the_old_ones() {
        let sim = Simulator::new(&HardwareMap::default());
        assert!(sim.line("led").is_none() && sim.bus("sensors").is_none());
        let first = HardwareMap::parse(
            "[gpio.led]\nchip = \"gpiochip0\"\nline = 17\n\
             [i2c.sensors]\nbus = \"/dev/i2c-1\"\n\
             [[sim.i2c]]\nbus = \"sensors\"\naddress = 0x48\ndevice = \"tmp102\"\ntemperature = 21.0\n",
        )
        .unwrap();
        sim.extend(&first);
        let led = sim.line("led").expect("the new map's line");
        led.drive(Some(true));
        assert_eq!(
            sim.bus("sensors").unwrap().get(0x48, "temperature"),
            Some(21.0)
        );
        // The same line under a new label keeps its state.
        let second = HardwareMap::parse("[gpio.lamp]\nchip = \"gpiochip0\"\nline = 17\n").unwrap();
        sim.extend(&second);
        assert!(sim.line("led").is_none());
        assert!(sim.line("lamp").unwrap().level());
    }

    #[test]
    fn tmp102_reports_temperatures_as_its_data_sheet_shows() {
        // Table 5 of the data sheet: 12-bit values.
        let mut t = Tmp102::default();
        for (celsius, bytes) in [
            (127.9375, [0x7F, 0xF0]),
            (100.0, [0x64, 0x00]),
            (23.5, [0x17, 0x80]),
            (0.0625, [0x00, 0x10]),
            (0.0, [0x00, 0x00]),
            (-0.25, [0xFF, 0xC0]),
            (-25.0, [0xE7, 0x00]),
            (-55.0, [0xC9, 0x00]),
        ] {
            t.set("temperature", celsius).unwrap();
            assert_eq!(read(&mut t, 0), bytes, "{celsius} °C");
        }
        assert_eq!(read(&mut t, 1), [0x60, 0xA0], "configuration at reset");
        assert_eq!(read(&mut t, 2), [0x4B, 0x00], "T(LOW) 75 °C");
        assert_eq!(read(&mut t, 3), [0x50, 0x00], "T(HIGH) 80 °C");
    }

    #[test]
    fn tmp102_extended_mode_shutdown_and_one_shot() {
        let mut t = Tmp102::default();
        t.write(&[1, 0x60, 0xB0]).unwrap(); // EM
        t.set("temperature", 150.0).unwrap();
        // 150 °C = 2400 × 0.0625, << 3, bit 0 set: 0x4B01.
        assert_eq!(read(&mut t, 0), [0x4B, 0x01]);

        t.write(&[1, 0x61, 0xA0]).unwrap(); // SD, back to 12-bit
        t.set("temperature", 30.0).unwrap();
        assert_eq!(
            read(&mut t, 0),
            [0x7F, 0xF0],
            "shut down: last conversion, clamped"
        );
        t.write(&[1, 0xE1, 0xA0]).unwrap(); // OS while shut down
        assert_eq!(read(&mut t, 0), [0x1E, 0x00], "one shot converted 30 °C");
        assert_eq!(read(&mut t, 1)[0] & 0x80, 0x80, "OS reads 1 when done");
    }

    #[test]
    fn registers_auto_increment_and_wrap() {
        let mut r = Registers::default();
        r.write(&[0xFE, 1, 2, 3]).unwrap();
        let mut buf = [0; 3];
        r.write(&[0xFE]).unwrap();
        r.read(&mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3]);
        assert_eq!(r.get("0"), Some(3.0));
        assert!(r.set("300", 1.0).is_err());
    }

    #[test]
    fn a_line_counts_edges_and_keeps_its_history() {
        let line = SimLine::new(LineId {
            chip: "/dev/gpiochip0".into(),
            line: 1,
        });
        let input = LineRequest {
            output: None,
            edges: true,
            bias: Some(Bias::PullUp),
            consumer: "t".into(),
        };
        line.request(&input).unwrap();
        assert!(line.level(), "pulled up while floating");
        assert_eq!(line.request(&input), Err(HwError::Busy));
        line.drive(Some(false));
        line.drive(Some(true));
        line.drive(Some(true));
        let events = *line.subscribe().borrow();
        assert_eq!((events.rising, events.falling), (2, 1));
        assert_eq!(line.history().len(), 3);
    }
}
