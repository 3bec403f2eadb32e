//! Counts its own starts in `/data/count`, which the device keeps across
//! restarts and updates.

use std::fs;

fn main() {
    let path = "/data/count";
    let previous: u64 = match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().unwrap_or(0),
        Err(_) => 0,
    };
    let count = previous + 1;
    // Write to a temporary file and rename it, so a stop mid-write never
    // leaves a torn count behind.
    if let Err(e) = fs::write("/data/count.tmp", count.to_string())
        .and_then(|()| fs::rename("/data/count.tmp", path))
    {
        eprintln!("counter: cannot save count: {e}");
        std::process::exit(1);
    }
    println!("count={count}");
}
