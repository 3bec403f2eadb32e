//! The smallest Kelp service: greets whoever `NAME` (or the first argument)
//! names, and exits with `EXIT_CODE` (default 0).

fn main() {
    let name = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("NAME").ok())
        .unwrap_or_else(|| "world".to_owned());
    println!("Hello, {name}! Greetings from a WebAssembly component.");
    let code = std::env::var("EXIT_CODE")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    std::process::exit(code);
}
