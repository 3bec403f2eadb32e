//! Waits for rising edges on `button` and logs each press. `PRESSES` stops
//! it after that many.

use std::process::ExitCode;

use kelp_sdk::{Flags, InputPin};

fn main() -> ExitCode {
    let stop_after: Option<u64> = std::env::var("PRESSES").ok().and_then(|n| n.parse().ok());
    // Pulled down: the line reads low until the button connects it high.
    let mut button = match InputPin::with_flags("button", Flags::PULL_DOWN) {
        Ok(pin) => pin,
        Err(e) => {
            eprintln!("button: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("waiting for presses");
    let mut presses = 0u64;
    loop {
        if let Err(e) = button.wait_for_rising_edge() {
            eprintln!("button: {e}");
            return ExitCode::FAILURE;
        }
        presses += 1;
        println!("button pressed ({presses})");
        if stop_after == Some(presses) {
            return ExitCode::SUCCESS;
        }
    }
}
