//! Hardware host calls for Kelp services: `wasi:gpio@0.2.0` and
//! `wasi:i2c@0.2.0-draft`, handed out by label through `kelp:hardware`, with
//! every request checked against the service's grants.
//!
//! A service's signed manifest asks for labels (`[grants.gpio.led] modes =
//! ["output"]`); the device's [`HardwareMap`] binds labels to physical lines
//! and buses and may narrow modes and addresses. A service gets the
//! intersection. Asking for anything else is an error value the guest
//! handles, never a trap and never access.
//!
//! ```no_run
//! use kelp_hostcalls::{Hardware, HardwareMap};
//!
//! let map = HardwareMap::parse("[gpio.led]\nchip = \"gpiochip0\"\nline = 17\n").unwrap();
//! let device = Hardware::simulated(map);
//! let led = device.simulator().unwrap().line("led").unwrap();
//! assert!(!led.level());
//! ```

mod backend;
mod device;
mod host;
pub mod linux;
mod locks;
use kelp_core::hardware_map as map;
pub mod sim;

pub use backend::{
    Bias, GpioBackend, GpioLine, HwError, I2cBackend, I2cBus, I2cError, I2cOp, LineEvents,
    LineRequest,
};
pub use device::{BackendKind, Hardware, HardwareCtx, Notify};
pub use host::{Bus, Delay, InOutPin, InPin, MAX_I2C_OPERATIONS, MAX_I2C_TRANSFER, OutPin};
pub use map::{
    GpioBinding, HardwareMap, I2cBinding, LineId, MapError, SafeLevel, SimDeviceKind, SimDeviceSpec,
};

use wasmtime::component::{HasData, Linker, ResourceTable};

/// Bindings generated from `wit/`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "kelp:hardware/hardware",
        imports: {
            "wasi:gpio/delay": async | trappable,
            "wasi:i2c/delay": async | trappable,
            default: trappable,
        },
        with: {
            "wasi:io/poll": wasmtime_wasi::p2::bindings::io::poll,
            "wasi:gpio/digital.digital-out-pin": crate::host::OutPin,
            "wasi:gpio/digital.digital-in-pin": crate::host::InPin,
            "wasi:gpio/digital.digital-in-out-pin": crate::host::InOutPin,
            "wasi:i2c/i2c.i2c": crate::host::Bus,
            "wasi:i2c/delay.delay": crate::host::Delay,
        },
    });
}

/// What the host-call implementations work on: the service's hardware and
/// the resource table it shares with WASI (pollables live there).
pub struct HardwareCtxView<'a> {
    pub ctx: &'a mut HardwareCtx,
    pub table: &'a mut ResourceTable,
}

/// Store data that can lend a [`HardwareCtxView`].
pub trait HardwareView: Send {
    fn hardware(&mut self) -> HardwareCtxView<'_>;
}

struct HasHardware;

impl HasData for HasHardware {
    type Data<'a> = HardwareCtxView<'a>;
}

/// Adds the hardware interfaces to a linker that already has WASI 0.2
/// (`wasmtime_wasi::p2::add_to_linker_async`), whose `wasi:io` they use.
pub fn add_to_linker<T: HardwareView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use bindings::{kelp::hardware, wasi};
    let get: fn(&mut T) -> HardwareCtxView<'_> = |t| t.hardware();
    wasi::gpio::general::add_to_linker::<T, HasHardware>(linker, get)?;
    wasi::gpio::digital::add_to_linker::<T, HasHardware>(linker, get)?;
    wasi::gpio::delay::add_to_linker::<T, HasHardware>(linker, get)?;
    wasi::i2c::i2c::add_to_linker::<T, HasHardware>(linker, get)?;
    wasi::i2c::delay::add_to_linker::<T, HasHardware>(linker, get)?;
    hardware::gpio::add_to_linker::<T, HasHardware>(linker, get)?;
    hardware::i2c::add_to_linker::<T, HasHardware>(linker, get)
}
