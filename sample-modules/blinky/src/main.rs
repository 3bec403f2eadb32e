//! Toggles the `led` output every `BLINK_MS` milliseconds (default 500) and
//! logs each change. `BLINK_COUNT` stops it after that many toggles;
//! `FAIL_AFTER` makes it crash after that many, leaving the LED on, to show
//! the device putting the line back to its safe level. Asked to stop, it
//! ends at once (`kelp_sdk::stop`).

use std::process::ExitCode;
use std::time::Duration;

use embedded_hal::digital::StatefulOutputPin;
use kelp_sdk::OutputPin;

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn main() -> ExitCode {
    let period = Duration::from_millis(env_number("BLINK_MS").unwrap_or(500));
    let count = env_number("BLINK_COUNT");
    let fail_after = env_number("FAIL_AFTER");
    let mut led = match OutputPin::get("led") {
        Ok(led) => led,
        Err(e) => {
            eprintln!("blinky: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut toggles = 0u64;
    loop {
        if let Err(e) = led.toggle() {
            eprintln!("blinky: {e}");
            return ExitCode::FAILURE;
        }
        toggles += 1;
        println!("led {}", if led.is_set_active() { "on" } else { "off" });
        if fail_after == Some(toggles) {
            panic!("blinky: failing on purpose after {toggles} toggles");
        }
        if count == Some(toggles) {
            return ExitCode::SUCCESS;
        }
        // Asked to stop (an update, a restart, a reboot): end now rather
        // than when the device's stop grace runs out.
        if kelp_sdk::stop::sleep(period) {
            return ExitCode::SUCCESS;
        }
    }
}
