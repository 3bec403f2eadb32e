//! Shared ground for Kelp's end-to-end tests and benchmarks: the sample
//! services, built once by this crate's build script, and helpers to find and
//! drive Kelp's binaries.

use std::path::PathBuf;

/// Paths of the built sample services.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// Path of one of Kelp's binaries (`kelp`, `kelpd`) built beside the running
/// test or benchmark. `cargo test` does not build binaries of other packages,
/// so the README's test command runs `cargo build --workspace` first (and the
/// benchmark command `cargo build --release`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test>-<hash>  →  target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "`{}` is not built; run `cargo build --workspace` (or `--release` for benchmarks) first",
        path.display()
    );
    path
}
