//! Takes one more MiB of memory every step, and touches it, until stopped.
//!
//! With `MEMHOG_HOLD=handles` it tries the way around its memory limit
//! instead: it asks the host for timers (`wasi:io/poll` pollables), which
//! live in the host's memory, and holds every one.

fn main() {
    if std::env::var("MEMHOG_HOLD").as_deref() == Ok("handles") {
        return handles();
    }
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        held.push(chunk);
        println!("memhog: holding {} MiB", held.len());
    }
}

fn handles() {
    let mut held = Vec::new();
    loop {
        held.push(wasip2::clocks::monotonic_clock::subscribe_duration(
            60_000_000_000,
        ));
        if held.len().is_multiple_of(1000) {
            println!("memhog: holding {} handles", held.len());
        }
    }
}
