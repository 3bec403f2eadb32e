//! Takes one more MiB of memory every step, and touches it, until stopped.

fn main() {
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
