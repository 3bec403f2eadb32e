//! Sets the `led` output `N` times (first argument, default 1,000,000) as
//! fast as it can and prints the time per call in nanoseconds: the guest
//! side of the host-call benchmark.

use std::process::ExitCode;
use std::time::Instant;

use embedded_hal::digital::OutputPin as _;
use kelp_sdk::OutputPin;

fn main() -> ExitCode {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut led = match OutputPin::get("led") {
        Ok(led) => led,
        Err(e) => {
            eprintln!("toggler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    for i in 0..n {
        let result = if i % 2 == 0 {
            led.set_high()
        } else {
            led.set_low()
        };
        if let Err(e) = result {
            eprintln!("toggler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{} ns per call",
        elapsed.as_nanos() as f64 / f64::from(n.max(1))
    );
    ExitCode::SUCCESS
}
