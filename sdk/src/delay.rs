//! Pauses, for drivers that need settle or conversion times.

use crate::bindings::wasi::gpio::delay;

/// `embedded_hal::delay::DelayNs` over the host's delay. Short pauses are
/// exact to the host's clock; long ones let other services run meanwhile.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delay;

impl embedded_hal::delay::DelayNs for Delay {
    fn delay_ns(&mut self, ns: u32) {
        delay::delay_ns(ns);
    }

    fn delay_us(&mut self, us: u32) {
        delay::delay_us(us);
    }

    fn delay_ms(&mut self, ms: u32) {
        delay::delay_ms(ms);
    }
}

impl embedded_hal_async::delay::DelayNs for Delay {
    async fn delay_ns(&mut self, ns: u32) {
        delay::delay_ns(ns);
    }

    async fn delay_us(&mut self, us: u32) {
        delay::delay_us(us);
    }

    async fn delay_ms(&mut self, ms: u32) {
        delay::delay_ms(ms);
    }
}
