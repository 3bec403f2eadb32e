//! Prints numbered lines as fast as it can, for ever or `LINES` lines.

use std::io::Write;

fn main() {
    let limit: u64 = std::env::var("LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let mut out = std::io::stdout().lock();
    for n in 0..limit {
        if writeln!(out, "chatty line {n}").is_err() {
            std::process::exit(1);
        }
    }
}
