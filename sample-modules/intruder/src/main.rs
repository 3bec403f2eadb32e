//! Tries hardware it was not granted and logs each refusal. It must end
//! without having touched anything: every attempt below is refused.

use std::process::ExitCode;

use embedded_hal::i2c::I2c as _;
use kelp_sdk::{I2c, InOutPin, InputPin, OutputPin};

fn main() -> ExitCode {
    let mut allowed = Vec::new();
    let mut report = |what: &str, result: Result<(), String>| match result {
        Ok(()) => {
            println!("ALLOWED: {what}");
            allowed.push(what.to_owned());
        }
        Err(e) => println!("refused: {what}: {e}"),
    };
    let gpio = |r: Result<(), kelp_sdk::PinError>| r.map_err(|e| e.to_string());

    // A pin the device has but this manifest does not grant.
    report("output `led`", gpio(OutputPin::get("led").map(drop)));
    // A granted pin in a mode not granted.
    report("output `button`", gpio(OutputPin::get("button").map(drop)));
    report("in-out `button`", gpio(InOutPin::get("button").map(drop)));
    // Edges were not granted on `button`, only reading: the pin can be had,
    // but not watched. Getting it touches nothing; the watch is refused.
    report(
        "edge watch on `button`",
        gpio(InputPin::get("button").and_then(|mut b| b.wait_for_rising_edge())),
    );
    // Granted by the manifest, but the device has no such pin.
    report("output `door`", gpio(OutputPin::get("door").map(drop)));
    // Raw names and paths are labels like any other, and none is granted.
    for name in ["gpiochip0", "/dev/gpiochip0", "../led", ""] {
        report(
            &format!("input `{name}`"),
            gpio(InputPin::get(name).map(drop)),
        );
    }
    // A bus not granted at all.
    report(
        "bus `internal`",
        I2c::open("internal").map(drop).map_err(|e| e.to_string()),
    );
    // The granted bus, at addresses not granted.
    match I2c::open("sensors") {
        Ok(mut bus) => {
            for address in [0x49u8, 0x50, 0x00, 0x7f] {
                let mut buf = [0u8; 2];
                report(
                    &format!("read at {address:#04x} on `sensors`"),
                    bus.write_read(address, &[0], &mut buf)
                        .map_err(|e| e.to_string()),
                );
            }
            report(
                "write at 0x50 on `sensors`",
                bus.write(0x50u8, &[0, 1, 2]).map_err(|e| e.to_string()),
            );
        }
        Err(e) => println!("bus `sensors` unavailable: {e}"),
    }
    if allowed.is_empty() {
        println!("every attempt was refused");
        ExitCode::SUCCESS
    } else {
        println!("{} attempts were allowed", allowed.len());
        ExitCode::FAILURE
    }
}
