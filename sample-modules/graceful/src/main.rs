//! Says it is ready, then works in a loop, a round every 200 ms, until the
//! device asks it to stop (`kelp_sdk::stop`); then says how many rounds it
//! did and ends at once, well inside its stop grace.

use std::time::Duration;

fn main() {
    println!("graceful: ready");
    let mut rounds = 0u64;
    while !kelp_sdk::stop::sleep(Duration::from_millis(200)) {
        rounds += 1;
    }
    println!("graceful: asked to stop after {rounds} rounds; done");
}
