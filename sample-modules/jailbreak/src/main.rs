//! Tries every way out of its `/data` preopen it can think of, and prints one
//! line per attempt: `denied: …` or `ESCAPED: …`. A host that isolates it
//! well sees only `denied`.

use std::fs;
use std::path::Path;

fn attempt(what: &str, result: std::io::Result<String>) {
    match result {
        Ok(found) => println!("ESCAPED: {what}: {found}"),
        Err(e) => println!("denied: {what}: {e}"),
    }
}

fn read(path: &str) -> std::io::Result<String> {
    fs::read_to_string(path).map(|s| s.chars().take(40).collect())
}

fn list(path: &str) -> std::io::Result<String> {
    let names: Vec<String> = fs::read_dir(path)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    Ok(names.join(","))
}

#[expect(
    deprecated,
    reason = "the portable symlink call that std offers on WASI"
)]
fn make_link(target: &str, link: &str) -> std::io::Result<()> {
    fs::soft_link(target, link)
}

fn main() {
    // The one thing it may do: use its own directory.
    match fs::write("/data/mine.txt", "ok").and_then(|()| fs::read_to_string("/data/mine.txt")) {
        Ok(_) => println!("allowed: write and read /data/mine.txt"),
        Err(e) => println!("broken: /data/mine.txt: {e}"),
    }
    attempt("read /etc/passwd", read("/etc/passwd"));
    attempt("read /data/../etc/passwd", read("/data/../etc/passwd"));
    attempt(
        "read /data/../../../../etc/passwd",
        read("/data/../../../../etc/passwd"),
    );
    attempt("list /data/..", list("/data/.."));
    attempt("list /", list("/"));
    attempt(
        "write /data/../outside.txt",
        fs::write("/data/../outside.txt", "x").map(|()| "written".to_owned()),
    );
    // A symlink the host planted (`/data/planted` pointing at the host's /etc).
    if Path::new("/data/planted").symlink_metadata().is_ok() {
        attempt("read /data/planted/passwd", read("/data/planted/passwd"));
        attempt("list /data/planted", list("/data/planted"));
    }
    // A symlink the guest makes itself, pointing out.
    {
        let _ = fs::remove_file("/data/own-link");
        match make_link("/etc", "/data/own-link") {
            Ok(()) => attempt("read /data/own-link/passwd", read("/data/own-link/passwd")),
            Err(e) => println!("denied: symlink /data/own-link -> /etc: {e}"),
        }
        let _ = fs::remove_file("/data/up-link");
        match make_link("../../..", "/data/up-link") {
            Ok(()) => attempt("list /data/up-link", list("/data/up-link")),
            Err(e) => println!("denied: symlink /data/up-link -> ../../..: {e}"),
        }
    }
    println!("jailbreak: done");
}
