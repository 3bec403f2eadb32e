//! Learning that the device asks the service to stop, without reading
//! stdin: `kelp:service/lifecycle`.
//!
//! A device asks a service to stop for an update, a restart from the cloud
//! or a shutdown, and then gives it its stop grace (10 s unless the target
//! says otherwise) to end by itself. A service that finishes what it is
//! doing and returns from `main` at once makes every update and reboot
//! that much faster; one that does not is cut off when the grace is over.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! loop {
//!     // ... one round of work ...
//!     if kelp_sdk::stop::sleep(Duration::from_secs(5)) {
//!         break; // asked to stop: save what matters, then return
//!     }
//! }
//! ```

use std::time::Duration;

use crate::bindings::wasi::io::poll::Pollable;
use crate::lifecycle_bindings::kelp::service::lifecycle;

/// Whether the device has asked this service to stop. Once true, it stays
/// true for the rest of the run.
pub fn requested() -> bool {
    lifecycle::stop_requested()
}

/// Sleeps for `duration`, or less if the device asks the service to stop
/// meanwhile. Returns whether it did: the sleep of a service's loop.
pub fn sleep(duration: Duration) -> bool {
    lifecycle::sleep(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
}

/// A pollable ready once the device asks the service to stop, to wait on
/// beside others (a GPIO edge, a socket) with `wasi:io/poll`'s `poll`.
pub fn subscribe() -> Pollable {
    lifecycle::subscribe_stop()
}
