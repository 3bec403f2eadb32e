//! Runs for `CRASH_AFTER_MS` milliseconds (default 200), then fails: with exit
//! code 1, or with a panic (a trap) when `CRASH_WITH=panic`.

use std::time::Duration;

fn main() {
    let after = std::env::var("CRASH_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!("crashy: up, failing in {after} ms");
    std::thread::sleep(Duration::from_millis(after));
    if std::env::var("CRASH_WITH").as_deref() == Ok("panic") {
        panic!("crashy: deliberate panic");
    }
    eprintln!("crashy: giving up");
    std::process::exit(1);
}
