//! Never yields: the service a supervisor must keep from starving the others.

fn main() {
    println!("spin: spinning");
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}
