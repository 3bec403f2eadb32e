//! GPIO pins by label, as embedded-hal pins.

use std::fmt;

use crate::bindings::kelp::hardware::gpio as kelp;
use crate::bindings::wasi::gpio::digital::{
    DigitalFlags, DigitalInOutPin, DigitalInPin, DigitalOutPin, PinState,
};
use crate::bindings::wasi::gpio::general::GpioError;
use crate::bindings::wasi::io::poll::Pollable;

/// A refused or failed pin operation, with the pin's label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub label: String,
    pub error: GpioError,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.error {
            GpioError::HardwareFault => "hardware fault",
            GpioError::AlreadyInUse => "already in use by another service",
            GpioError::PinNotAllowed => "not granted to this service",
            GpioError::PinModeNotAllowed => "not granted in this mode",
            GpioError::UndefinedPinLabel => "no pin by this label on this device",
            GpioError::PinModeNotAvailable => "the pin cannot work in this mode",
            GpioError::WouldBlock => "would block",
            GpioError::OperationNotSupported => "not supported",
            GpioError::Other(message) => message,
        };
        write!(f, "gpio `{}`: {what}", self.label)
    }
}

impl std::error::Error for Error {}

impl embedded_hal::digital::Error for Error {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

fn state(active: bool) -> PinState {
    if active {
        PinState::Active
    } else {
        PinState::Inactive
    }
}

/// Waits until `pollable` is ready.
fn wait(label: &str, pollable: Result<Pollable, GpioError>) -> Result<(), Error> {
    let pollable = pollable.map_err(|error| Error {
        label: label.to_owned(),
        error,
    })?;
    pollable.block();
    Ok(())
}

macro_rules! common {
    ($ty:ident) => {
        impl $ty {
            /// The label this pin was granted by.
            pub fn label(&self) -> &str {
                &self.label
            }

            fn check<T>(&self, r: Result<T, GpioError>) -> Result<T, Error> {
                r.map_err(|error| Error {
                    label: self.label.clone(),
                    error,
                })
            }
        }

        impl embedded_hal::digital::ErrorType for $ty {
            type Error = Error;
        }
    };
}

macro_rules! output {
    ($ty:ident) => {
        impl $ty {
            /// Drives the pin to its active (`true`) or inactive level.
            pub fn set(&mut self, active: bool) -> Result<(), Error> {
                let r = self.pin.set_state(state(active));
                self.check(r)?;
                self.active = active;
                Ok(())
            }

            /// Whether the pin was last set active.
            pub fn is_set_active(&self) -> bool {
                self.active
            }
        }

        impl embedded_hal::digital::OutputPin for $ty {
            fn set_low(&mut self) -> Result<(), Error> {
                self.set(false)
            }

            fn set_high(&mut self) -> Result<(), Error> {
                self.set(true)
            }
        }

        impl embedded_hal::digital::StatefulOutputPin for $ty {
            fn is_set_high(&mut self) -> Result<bool, Error> {
                Ok(self.active)
            }

            fn is_set_low(&mut self) -> Result<bool, Error> {
                Ok(!self.active)
            }

            fn toggle(&mut self) -> Result<(), Error> {
                let r = self.pin.toggle();
                self.check(r)?;
                self.active = !self.active;
                Ok(())
            }
        }
    };
}

macro_rules! input {
    ($ty:ident) => {
        impl $ty {
            /// Blocks until the pin goes from inactive to active. Each edge
            /// wakes one wait: edges that come while the service is busy
            /// are not lost.
            pub fn wait_for_rising_edge(&mut self) -> Result<(), Error> {
                wait(&self.label, self.pin.watch_rising_edge())
            }

            /// Blocks until the pin goes from active to inactive.
            pub fn wait_for_falling_edge(&mut self) -> Result<(), Error> {
                wait(&self.label, self.pin.watch_falling_edge())
            }

            /// Blocks until the pin is active (at once if it is).
            pub fn wait_for_active(&mut self) -> Result<(), Error> {
                wait(&self.label, self.pin.watch_active())
            }

            /// Blocks until the pin is inactive (at once if it is).
            pub fn wait_for_inactive(&mut self) -> Result<(), Error> {
                wait(&self.label, self.pin.watch_inactive())
            }

            /// Blocks until either edge.
            pub fn wait_for_any_edge(&mut self) -> Result<(), Error> {
                let rising = self.pin.watch_rising_edge();
                let falling = self.pin.watch_falling_edge();
                let (rising, falling) = (self.check(rising)?, self.check(falling)?);
                crate::bindings::wasi::io::poll::poll(&[&rising, &falling]);
                Ok(())
            }

            /// Whether the pin is active now.
            pub fn is_active(&mut self) -> Result<bool, Error> {
                let r = self.pin.is_active();
                self.check(r)
            }
        }

        impl embedded_hal::digital::InputPin for $ty {
            fn is_high(&mut self) -> Result<bool, Error> {
                self.is_active()
            }

            fn is_low(&mut self) -> Result<bool, Error> {
                self.is_active().map(|a| !a)
            }
        }

        /// The waits complete when the pin does; WASI 0.2 has one thread, so
        /// the service waits in the host meanwhile (other services run).
        impl embedded_hal_async::digital::Wait for $ty {
            async fn wait_for_high(&mut self) -> Result<(), Error> {
                self.wait_for_active()
            }

            async fn wait_for_low(&mut self) -> Result<(), Error> {
                self.wait_for_inactive()
            }

            async fn wait_for_rising_edge(&mut self) -> Result<(), Error> {
                $ty::wait_for_rising_edge(self)
            }

            async fn wait_for_falling_edge(&mut self) -> Result<(), Error> {
                $ty::wait_for_falling_edge(self)
            }

            async fn wait_for_any_edge(&mut self) -> Result<(), Error> {
                $ty::wait_for_any_edge(self)
            }
        }
    };
}

/// A pin this service drives. `set_high` makes it active: high, unless it
/// was requested with [`DigitalFlags::ACTIVE_LOW`]. It starts inactive.
pub struct OutputPin {
    label: String,
    pin: DigitalOutPin,
    active: bool,
}

impl OutputPin {
    /// The output pin granted as `label`.
    pub fn get(label: &str) -> Result<Self, Error> {
        Self::with_flags(label, DigitalFlags::empty())
    }

    /// The same, active-low or with a pull resistor.
    pub fn with_flags(label: &str, flags: DigitalFlags) -> Result<Self, Error> {
        let pin = kelp::get_digital_out(label, &[flags]).map_err(|error| Error {
            label: label.to_owned(),
            error,
        })?;
        Ok(OutputPin {
            label: label.to_owned(),
            pin,
            active: false,
        })
    }
}

common!(OutputPin);
output!(OutputPin);

/// A pin this service reads and watches.
pub struct InputPin {
    label: String,
    pin: DigitalInPin,
}

impl InputPin {
    /// The input pin granted as `label`.
    pub fn get(label: &str) -> Result<Self, Error> {
        Self::with_flags(label, DigitalFlags::empty())
    }

    /// The same, active-low or with a pull resistor.
    pub fn with_flags(label: &str, flags: DigitalFlags) -> Result<Self, Error> {
        let pin = kelp::get_digital_in(label, &[flags]).map_err(|error| Error {
            label: label.to_owned(),
            error,
        })?;
        Ok(InputPin {
            label: label.to_owned(),
            pin,
        })
    }
}

common!(InputPin);
input!(InputPin);

/// A pin this service both drives and reads (needs `input` and `output`).
pub struct InOutPin {
    label: String,
    pin: DigitalInOutPin,
    active: bool,
}

impl InOutPin {
    pub fn get(label: &str) -> Result<Self, Error> {
        Self::with_flags(label, DigitalFlags::empty())
    }

    pub fn with_flags(label: &str, flags: DigitalFlags) -> Result<Self, Error> {
        let pin = kelp::get_digital_in_out(label, &[flags]).map_err(|error| Error {
            label: label.to_owned(),
            error,
        })?;
        Ok(InOutPin {
            label: label.to_owned(),
            pin,
            active: false,
        })
    }
}

common!(InOutPin);
output!(InOutPin);
input!(InOutPin);
