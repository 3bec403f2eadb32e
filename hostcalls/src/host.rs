//! The host side of the interfaces: grant checks, then the backend.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kelp_core::GpioMode;
use tokio::sync::watch;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::HardwareCtxView;
use crate::backend::{Bias, GpioLine, HwError, I2cBus, I2cError, I2cOp, LineEvents, LineRequest};
use crate::bindings::kelp::hardware::{gpio as kelp_gpio, i2c as kelp_i2c};
use crate::bindings::wasi::gpio::digital::{
    DigitalConfig, DigitalFlags, HostDigitalInOutPin, HostDigitalInPin, HostDigitalOutPin, PinState,
};
use crate::bindings::wasi::gpio::general::{ActiveLevel, GpioError, PinMode, PullResistor};
use crate::bindings::wasi::i2c::i2c::{ErrorCode, NoAcknowledgeSource, Operation};
use crate::bindings::wasi::{gpio, i2c};
use crate::device::{Claim, HardwareCtx};
use crate::map::SafeLevel;

/// Most operations in one I2C transaction.
pub const MAX_I2C_OPERATIONS: usize = 64;
/// Most bytes one I2C operation reads or writes (i2c-dev's own limit is
/// 8 KiB per message).
pub const MAX_I2C_TRANSFER: usize = 4096;

/// Pauses shorter than this spin; longer ones sleep, yielding the thread.
/// The executor's timers tick in milliseconds.
const SPIN_LIMIT: Duration = Duration::from_micros(200);

/// A pin a service holds, in any mode.
pub(crate) struct Pin {
    label: String,
    mode: PinMode,
    active_low: bool,
    pull: Option<Bias>,
    /// Whether edge and level watching were granted.
    watchable: bool,
    /// The logical state an output was last set to.
    driven: bool,
    /// Physical level outputs return to when released.
    safe: Option<bool>,
    /// Edges already handed to watchers: rising, falling (physical).
    seen: Arc<[AtomicU64; 2]>,
    line: Box<dyn GpioLine>,
    _claim: Claim,
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some(level) = self.safe
            && let Err(e) = self.line.set(level)
        {
            tracing::warn!(pin = %self.label, error = %e, "cannot return pin to its safe level");
        }
    }
}

/// `wasi:gpio/digital.digital-out-pin`.
pub struct OutPin(Pin);
/// `wasi:gpio/digital.digital-in-pin`.
pub struct InPin(Pin);
/// `wasi:gpio/digital.digital-in-out-pin`.
pub struct InOutPin(Pin);
/// `wasi:i2c/i2c.i2c`: a bus, and the addresses this service may reach on it.
pub struct Bus {
    label: String,
    bus: Arc<dyn I2cBus>,
    addresses: BTreeSet<u16>,
}
/// `wasi:i2c/delay.delay`.
pub struct Delay;

fn hw_error(e: HwError) -> GpioError {
    match e {
        HwError::Busy => GpioError::AlreadyInUse,
        HwError::NotFound(_) | HwError::Fault(_) => GpioError::HardwareFault,
    }
}

impl Pin {
    fn physical(&self, active: bool) -> bool {
        active != self.active_low
    }

    fn set(&mut self, active: bool) -> Result<(), GpioError> {
        self.line.set(self.physical(active)).map_err(hw_error)?;
        self.driven = active;
        Ok(())
    }

    fn read(&self) -> Result<bool, GpioError> {
        Ok(self.line.get().map_err(hw_error)? != self.active_low)
    }

    fn config(&self) -> DigitalConfig {
        DigitalConfig {
            label: self.label.clone(),
            pin_mode: self.mode,
            active_level: if self.active_low {
                ActiveLevel::ActiveLow
            } else {
                ActiveLevel::ActiveHigh
            },
            pull_resistor: self.pull.map(|b| match b {
                Bias::PullUp => PullResistor::PullUp,
                Bias::PullDown => PullResistor::PullDown,
            }),
        }
    }

    fn events(&self) -> Result<watch::Receiver<LineEvents>, GpioError> {
        if !self.watchable {
            return Err(GpioError::PinModeNotAllowed);
        }
        self.line.watch().ok_or(GpioError::OperationNotSupported)
    }

    /// A watch ready once the pin has made the logical transition to
    /// `active`. Each edge readies one watcher, so a guest that re-arms
    /// after each wake sees every edge, even ones that came while it was
    /// busy.
    fn edge_watch(&self, to_active: bool) -> Result<EdgeWatch, GpioError> {
        Ok(EdgeWatch {
            events: self.events()?,
            rising: to_active != self.active_low,
            seen: self.seen.clone(),
            fired: false,
        })
    }

    /// A watch ready while the pin is `active` (or not).
    fn level_watch(&self, active: bool) -> Result<LevelWatch, GpioError> {
        Ok(LevelWatch {
            events: self.events()?,
            high: self.physical(active),
        })
    }
}

struct EdgeWatch {
    events: watch::Receiver<LineEvents>,
    rising: bool,
    seen: Arc<[AtomicU64; 2]>,
    fired: bool,
}

#[async_trait::async_trait]
impl Pollable for EdgeWatch {
    async fn ready(&mut self) {
        let seen = &self.seen[usize::from(!self.rising)];
        while !self.fired {
            let count = {
                let e = self.events.borrow_and_update();
                if self.rising { e.rising } else { e.falling }
            };
            let consumed = seen.load(Ordering::Acquire);
            if count > consumed {
                self.fired = seen
                    .compare_exchange(consumed, consumed + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                continue;
            }
            // The line was released: nothing more will come.
            if self.events.changed().await.is_err() {
                self.fired = true;
            }
        }
    }
}

struct LevelWatch {
    events: watch::Receiver<LineEvents>,
    high: bool,
}

#[async_trait::async_trait]
impl Pollable for LevelWatch {
    async fn ready(&mut self) {
        let high = self.high;
        let _ = self.events.wait_for(|e| e.high == high).await;
    }
}

struct Ready;

#[async_trait::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// Puts `p` in the table as a `wasi:io` pollable.
fn pollable<P: Pollable>(
    table: &mut ResourceTable,
    p: P,
) -> wasmtime::Result<Resource<DynPollable>> {
    let r = table.push(p)?;
    subscribe(table, r)
}

fn pollable_or<P: Pollable>(
    table: &mut ResourceTable,
    p: Result<P, GpioError>,
) -> GpioResult<Resource<DynPollable>> {
    match p {
        Ok(p) => Ok(Ok(pollable(table, p)?)),
        Err(e) => Ok(Err(e)),
    }
}

/// The union of the flag sets a guest passed, checked.
fn parse_flags(flags: &[DigitalFlags]) -> Result<(bool, Option<Bias>), GpioError> {
    let all = flags.iter().fold(DigitalFlags::empty(), |a, &f| a | f);
    if all.contains(DigitalFlags::ACTIVE_HIGH | DigitalFlags::ACTIVE_LOW) {
        return Err(GpioError::Other(
            "both active-high and active-low given".into(),
        ));
    }
    if all.contains(DigitalFlags::PULL_UP | DigitalFlags::PULL_DOWN) {
        return Err(GpioError::Other("both pull-up and pull-down given".into()));
    }
    let pull = if all.contains(DigitalFlags::PULL_UP) {
        Some(Bias::PullUp)
    } else if all.contains(DigitalFlags::PULL_DOWN) {
        Some(Bias::PullDown)
    } else {
        None
    };
    Ok((all.contains(DigitalFlags::ACTIVE_LOW), pull))
}

impl HardwareCtx {
    /// Checks the grant for `label` in `mode` and requests the line.
    fn acquire(
        &mut self,
        label: &str,
        mode: PinMode,
        flags: &[DigitalFlags],
    ) -> Result<Pin, GpioError> {
        let refuse = |ctx: &mut Self, why: &str, error: GpioError| {
            ctx.note(format!("gpio `{label}` refused: {why}"));
            Err(error)
        };
        let Some(grant) = self.gpio.get(label) else {
            return if self.missing.contains(label) {
                refuse(
                    self,
                    "this device has no line by that label",
                    GpioError::UndefinedPinLabel,
                )
            } else {
                refuse(
                    self,
                    "the service's manifest does not grant it",
                    GpioError::PinNotAllowed,
                )
            };
        };
        let needed: &[GpioMode] = match mode {
            PinMode::In => &[GpioMode::Input],
            PinMode::Out => &[GpioMode::Output],
            PinMode::InOut => &[GpioMode::Input, GpioMode::Output],
        };
        // Edges imply reading.
        let has = |m: &GpioMode| {
            grant.modes.contains(m)
                || (*m == GpioMode::Input && grant.modes.contains(&GpioMode::Edges))
        };
        if let Some(missing) = needed.iter().find(|m| !has(m)) {
            let why = format!("{missing} is not granted");
            return refuse(self, &why, GpioError::PinModeNotAllowed);
        }
        let (active_low, pull) = parse_flags(flags)?;
        let line_id = grant.binding.line.clone();
        let watchable = grant.modes.contains(&GpioMode::Edges);
        let safe = grant.binding.safe;
        let claim = match self.hw.claim(&line_id, &self.service) {
            Ok(c) => c,
            Err(holder) => {
                let why = format!("service `{holder}` holds it");
                return refuse(self, &why, GpioError::AlreadyInUse);
            }
        };
        let output = mode != PinMode::In;
        let request = LineRequest {
            // Outputs start inactive.
            output: output.then_some(active_low),
            edges: watchable,
            bias: pull,
            consumer: format!("kelp:{}", self.service),
        };
        let line = match self.hw.gpio.request(&line_id, &request) {
            Ok(l) => l,
            Err(e) => {
                let why = format!("{line_id}: {e}");
                return refuse(self, &why, hw_error(e));
            }
        };
        let now = line.watch().map(|w| *w.borrow()).unwrap_or_default();
        Ok(Pin {
            label: label.to_owned(),
            mode,
            active_low,
            pull,
            watchable,
            driven: false,
            safe: output.then_some(safe == SafeLevel::High),
            seen: Arc::new([AtomicU64::new(now.rising), AtomicU64::new(now.falling)]),
            line,
            _claim: claim,
        })
    }
}

impl kelp_gpio::Host for HardwareCtxView<'_> {
    fn get_digital_in(
        &mut self,
        label: String,
        flags: Vec<DigitalFlags>,
    ) -> wasmtime::Result<Result<Resource<InPin>, GpioError>> {
        match self.ctx.acquire(&label, PinMode::In, &flags) {
            Ok(pin) => Ok(Ok(self.table.push(InPin(pin))?)),
            Err(e) => Ok(Err(e)),
        }
    }

    fn get_digital_out(
        &mut self,
        label: String,
        flags: Vec<DigitalFlags>,
    ) -> wasmtime::Result<Result<Resource<OutPin>, GpioError>> {
        match self.ctx.acquire(&label, PinMode::Out, &flags) {
            Ok(pin) => Ok(Ok(self.table.push(OutPin(pin))?)),
            Err(e) => Ok(Err(e)),
        }
    }

    fn get_digital_in_out(
        &mut self,
        label: String,
        flags: Vec<DigitalFlags>,
    ) -> wasmtime::Result<Result<Resource<InOutPin>, GpioError>> {
        match self.ctx.acquire(&label, PinMode::InOut, &flags) {
            Ok(pin) => Ok(Ok(self.table.push(InOutPin(pin))?)),
            Err(e) => Ok(Err(e)),
        }
    }
}

impl gpio::general::Host for HardwareCtxView<'_> {}
impl gpio::digital::Host for HardwareCtxView<'_> {}

type GpioResult<T> = wasmtime::Result<Result<T, GpioError>>;

fn state(active: bool) -> PinState {
    if active {
        PinState::Active
    } else {
        PinState::Inactive
    }
}

/// The three pin resources share one implementation; this macro writes the
/// trait methods each has.
macro_rules! output_methods {
    ($ty:ty) => {
        fn set_state(&mut self, pin: Resource<$ty>, s: PinState) -> GpioResult<()> {
            Ok(self.table.get_mut(&pin)?.0.set(s == PinState::Active))
        }

        fn set_active(&mut self, pin: Resource<$ty>) -> GpioResult<()> {
            Ok(self.table.get_mut(&pin)?.0.set(true))
        }

        fn set_inactive(&mut self, pin: Resource<$ty>) -> GpioResult<()> {
            Ok(self.table.get_mut(&pin)?.0.set(false))
        }

        fn toggle(&mut self, pin: Resource<$ty>) -> GpioResult<()> {
            let pin = &mut self.table.get_mut(&pin)?.0;
            let next = !pin.driven;
            Ok(pin.set(next))
        }
    };
}

macro_rules! input_methods {
    ($ty:ty) => {
        fn read(&mut self, pin: Resource<$ty>) -> GpioResult<PinState> {
            Ok(self.table.get(&pin)?.0.read().map(state))
        }

        fn is_active(&mut self, pin: Resource<$ty>) -> GpioResult<bool> {
            Ok(self.table.get(&pin)?.0.read())
        }

        fn is_inactive(&mut self, pin: Resource<$ty>) -> GpioResult<bool> {
            Ok(self.table.get(&pin)?.0.read().map(|a| !a))
        }

        fn watch_state(
            &mut self,
            pin: Resource<$ty>,
            s: PinState,
        ) -> GpioResult<Resource<DynPollable>> {
            let watch = self.table.get(&pin)?.0.level_watch(s == PinState::Active);
            pollable_or(self.table, watch)
        }

        fn watch_active(&mut self, pin: Resource<$ty>) -> GpioResult<Resource<DynPollable>> {
            let watch = self.table.get(&pin)?.0.level_watch(true);
            pollable_or(self.table, watch)
        }

        fn watch_inactive(&mut self, pin: Resource<$ty>) -> GpioResult<Resource<DynPollable>> {
            let watch = self.table.get(&pin)?.0.level_watch(false);
            pollable_or(self.table, watch)
        }

        fn watch_falling_edge(&mut self, pin: Resource<$ty>) -> GpioResult<Resource<DynPollable>> {
            let watch = self.table.get(&pin)?.0.edge_watch(false);
            pollable_or(self.table, watch)
        }

        fn watch_rising_edge(&mut self, pin: Resource<$ty>) -> GpioResult<Resource<DynPollable>> {
            let watch = self.table.get(&pin)?.0.edge_watch(true);
            pollable_or(self.table, watch)
        }
    };
}

macro_rules! common_methods {
    ($ty:ty) => {
        fn get_config(&mut self, pin: Resource<$ty>) -> wasmtime::Result<DigitalConfig> {
            Ok(self.table.get(&pin)?.0.config())
        }

        fn watch_for_ready(
            &mut self,
            _pin: Resource<$ty>,
        ) -> wasmtime::Result<Resource<DynPollable>> {
            // A requested line is ready at once.
            pollable(self.table, Ready)
        }

        fn drop(&mut self, pin: Resource<$ty>) -> wasmtime::Result<()> {
            self.table.delete(pin)?;
            Ok(())
        }
    };
}

impl HostDigitalOutPin for HardwareCtxView<'_> {
    common_methods!(OutPin);
    output_methods!(OutPin);
}

impl HostDigitalInPin for HardwareCtxView<'_> {
    common_methods!(InPin);
    input_methods!(InPin);
}

impl HostDigitalInOutPin for HardwareCtxView<'_> {
    common_methods!(InOutPin);
    output_methods!(InOutPin);
    input_methods!(InOutPin);
}

impl gpio::delay::Host for HardwareCtxView<'_> {
    async fn delay_ns(&mut self, ns: u32) -> wasmtime::Result<()> {
        pause(Duration::from_nanos(u64::from(ns))).await;
        Ok(())
    }

    async fn delay_us(&mut self, us: u32) -> wasmtime::Result<()> {
        pause(Duration::from_micros(u64::from(us))).await;
        Ok(())
    }

    async fn delay_ms(&mut self, ms: u32) -> wasmtime::Result<()> {
        pause(Duration::from_millis(u64::from(ms))).await;
        Ok(())
    }
}

/// Waits at least `d`: short pauses spin (a driver's microsecond settle
/// times), longer ones sleep and let other services run.
async fn pause(d: Duration) {
    if d < SPIN_LIMIT {
        let end = Instant::now() + d;
        while Instant::now() < end {
            std::hint::spin_loop();
        }
    } else {
        tokio::time::sleep(d).await;
    }
}

impl i2c::delay::Host for HardwareCtxView<'_> {}

impl i2c::delay::HostDelay for HardwareCtxView<'_> {
    async fn delay_ns(&mut self, _delay: Resource<Delay>, ns: u32) -> wasmtime::Result<()> {
        pause(Duration::from_nanos(u64::from(ns))).await;
        Ok(())
    }

    async fn drop(&mut self, delay: Resource<Delay>) -> wasmtime::Result<()> {
        self.table.delete(delay)?;
        Ok(())
    }
}

impl kelp_i2c::Host for HardwareCtxView<'_> {
    fn open_bus(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<Bus>, kelp_i2c::OpenError>> {
        let ctx = &mut *self.ctx;
        let Some(grant) = ctx.i2c.get(&label) else {
            let missing = ctx.missing.contains(&label);
            ctx.note(format!(
                "i2c `{label}` refused: {}",
                if missing {
                    "this device has no bus by that label"
                } else {
                    "the service's manifest does not grant it"
                }
            ));
            return Ok(Err(if missing {
                kelp_i2c::OpenError::UndefinedLabel
            } else {
                kelp_i2c::OpenError::NotGranted
            }));
        };
        let addresses = grant.addresses.clone();
        let path = grant.bus.clone();
        match ctx.hw.i2c.open(&path) {
            Ok(bus) => Ok(Ok(self.table.push(Bus {
                label,
                bus,
                addresses,
            })?)),
            Err(e) => {
                let message = format!("{}: {e}", path.display());
                ctx.note(format!("i2c `{label}` cannot be opened: {message}"));
                Ok(Err(kelp_i2c::OpenError::HardwareFault(message)))
            }
        }
    }

    fn get_delay(&mut self) -> wasmtime::Result<Resource<Delay>> {
        Ok(self.table.push(Delay)?)
    }
}

impl i2c::i2c::Host for HardwareCtxView<'_> {}

type I2cResult<T> = wasmtime::Result<Result<T, ErrorCode>>;

pub(crate) fn i2c_error(e: I2cError) -> ErrorCode {
    match e {
        I2cError::NoAckAddress => ErrorCode::NoAcknowledge(NoAcknowledgeSource::Address),
        I2cError::NoAckData => ErrorCode::NoAcknowledge(NoAcknowledgeSource::Data),
        I2cError::NoAck => ErrorCode::NoAcknowledge(NoAcknowledgeSource::Unknown),
        I2cError::Bus => ErrorCode::Bus,
        I2cError::ArbitrationLoss => ErrorCode::ArbitrationLoss,
        I2cError::Overrun => ErrorCode::Overrun,
        I2cError::Other(_) => ErrorCode::Other,
    }
}

impl HardwareCtxView<'_> {
    /// Checks the address and sizes, then runs the transaction.
    fn transfer(
        &mut self,
        bus: &Resource<Bus>,
        address: u16,
        operations: Vec<Operation>,
    ) -> I2cResult<Vec<Vec<u8>>> {
        let b = self.table.get(bus)?;
        if !b.addresses.contains(&address) {
            // To the service, an address it was not granted has no device.
            let note = format!(
                "i2c `{}` address {address:#04x} refused: not granted",
                b.label
            );
            self.ctx.note(note);
            return Ok(Err(ErrorCode::NoAcknowledge(NoAcknowledgeSource::Address)));
        }
        if operations.len() > MAX_I2C_OPERATIONS {
            return Ok(Err(ErrorCode::Other));
        }
        let mut reads: Vec<Vec<u8>> = Vec::new();
        for op in &operations {
            match op {
                Operation::Read(n) => match usize::try_from(*n) {
                    Ok(n) if n <= MAX_I2C_TRANSFER => reads.push(vec![0; n]),
                    _ => return Ok(Err(ErrorCode::Other)),
                },
                Operation::Write(bytes) if bytes.len() > MAX_I2C_TRANSFER => {
                    return Ok(Err(ErrorCode::Other));
                }
                Operation::Write(_) => {}
            }
        }
        let mut bufs = reads.iter_mut();
        let mut ops: Vec<I2cOp<'_>> = Vec::with_capacity(operations.len());
        for op in &operations {
            match op {
                Operation::Read(_) => {
                    if let Some(buf) = bufs.next() {
                        ops.push(I2cOp::Read(buf));
                    }
                }
                Operation::Write(bytes) => ops.push(I2cOp::Write(bytes)),
            }
        }
        let result = b.bus.transaction(address, &mut ops);
        drop(ops);
        Ok(result.map(|()| reads).map_err(i2c_error))
    }
}

impl i2c::i2c::HostI2c for HardwareCtxView<'_> {
    fn transaction(
        &mut self,
        bus: Resource<Bus>,
        address: u16,
        operations: Vec<Operation>,
    ) -> I2cResult<Vec<Vec<u8>>> {
        self.transfer(&bus, address, operations)
    }

    fn read(&mut self, bus: Resource<Bus>, address: u16, len: u64) -> I2cResult<Vec<u8>> {
        let reads = self.transfer(&bus, address, vec![Operation::Read(len)])?;
        Ok(reads.map(|r| r.into_iter().next().unwrap_or_default()))
    }

    fn write(&mut self, bus: Resource<Bus>, address: u16, data: Vec<u8>) -> I2cResult<()> {
        let reads = self.transfer(&bus, address, vec![Operation::Write(data)])?;
        Ok(reads.map(drop))
    }

    fn write_read(
        &mut self,
        bus: Resource<Bus>,
        address: u16,
        write: Vec<u8>,
        read_len: u64,
    ) -> I2cResult<Vec<u8>> {
        let reads = self.transfer(
            &bus,
            address,
            vec![Operation::Write(write), Operation::Read(read_len)],
        )?;
        Ok(reads.map(|r| r.into_iter().next().unwrap_or_default()))
    }

    fn drop(&mut self, bus: Resource<Bus>) -> wasmtime::Result<()> {
        self.table.delete(bus)?;
        Ok(())
    }
}
