//! Says it is ready, then sleeps on a timer for ever: what most device
//! services do most of the time.

use std::time::Duration;

fn main() {
    println!("idle: ready");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
