//! Reads the TMP102 at 0x48 on the `sensors` bus with the tmp1x2 driver from
//! crates.io, unchanged, and logs the temperature every `INTERVAL_MS`
//! milliseconds (default 1000). `READINGS` stops it after that many.

use std::process::ExitCode;
use std::time::Duration;

use kelp_sdk::I2c;
use tmp1x2::{SlaveAddr, Tmp1x2};

fn main() -> ExitCode {
    let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let interval = Duration::from_millis(number("INTERVAL_MS").unwrap_or(1000));
    let readings = number("READINGS");
    let bus = match I2c::open("sensors") {
        Ok(bus) => bus,
        Err(e) => {
            eprintln!("thermometer: bus `sensors`: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sensor = Tmp1x2::new(bus, SlaveAddr::default());
    let mut taken = 0u64;
    loop {
        match sensor.read_temperature() {
            Ok(celsius) => println!("temperature: {celsius:.1} °C"),
            Err(tmp1x2::Error::I2C(e)) => {
                eprintln!("thermometer: {e}");
                return ExitCode::FAILURE;
            }
        }
        taken += 1;
        if readings == Some(taken) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(interval);
    }
}
