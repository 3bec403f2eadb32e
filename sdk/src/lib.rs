//! Write Kelp services that use hardware.
//!
//! A service asks for pins and buses by the labels its `kelp.toml` grants;
//! the device decides which physical line or bus each label is. The types
//! here implement the [embedded-hal] 1.0 traits, so driver crates work
//! unchanged:
//!
//! ```no_run
//! use embedded_hal::digital::{InputPin as _, OutputPin as _};
//! use kelp_sdk::{Delay, I2c, InputPin, OutputPin};
//!
//! let mut led = OutputPin::get("led")?;
//! led.set_high()?;
//!
//! let mut button = InputPin::get("button")?;
//! button.wait_for_rising_edge()?;
//! println!("pressed; now {}", if button.is_high()? { "down" } else { "up" });
//!
//! // Any embedded-hal I2C driver takes the bus as it is.
//! let bus = I2c::open("sensors")?;
//! # let _ = (bus, Delay);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! with a `kelp.toml` beside `Cargo.toml` that grants them:
//!
//! ```toml
//! [grants.gpio.led]
//! modes = ["output"]
//! [grants.gpio.button]
//! modes = ["input", "edges"]
//! [grants.i2c.sensors]
//! addresses = [0x48]
//! ```
//!
//! Build for `wasm32-wasip2`. Whatever is not granted is refused with an
//! error the service sees ([`GpioError::PinNotAllowed`], an I2C
//! no-acknowledge for an address not granted), never with a crash.
//!
//! The raw interfaces — `wasi:gpio@0.2.0`, `wasi:i2c@0.2.0-draft` and
//! `kelp:hardware` — are in [`bindings`] for anything the wrappers leave
//! out. [`stop`] tells a service that the device asks it to stop
//! (`kelp:service/lifecycle`, in [`lifecycle_bindings`]).
//!
//! [embedded-hal]: https://docs.rs/embedded-hal/1

mod delay;
mod gpio;
mod i2c;
pub mod stop;

/// Bindings generated from the interfaces a Kelp device offers.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../hostcalls/wit",
        world: "kelp:hardware/hardware",
        generate_all,
        additional_derives: [PartialEq, Eq],
    });
}

/// Bindings of `kelp:service/lifecycle` (see [`stop`]), sharing
/// `wasi:io`'s pollable with [`bindings`].
pub mod lifecycle_bindings {
    wit_bindgen::generate!({
        path: "../runtime/wit",
        world: "kelp:service/service",
        with: {
            "wasi:io/poll@0.2.4": crate::bindings::wasi::io::poll,
        },
    });
}

pub use bindings::wasi::gpio::digital::DigitalFlags as Flags;
pub use bindings::wasi::gpio::general::GpioError;
pub use bindings::wasi::i2c::i2c::ErrorCode as I2cErrorCode;
pub use delay::Delay;
pub use gpio::{Error as PinError, InOutPin, InputPin, OutputPin};
pub use i2c::{Error as I2cError, I2c, OpenError};
