//! `kelp push` and `kelp demo` on a machine whose Rust lacks the wasm
//! target a service builds for: installed with rustup when rustup manages
//! that Rust, else a stop before anything is built, naming the command that
//! fixes it. The toolchain here is a stand-in (`rustc`, `rustup` and
//! `cargo` scripts on `PATH` that log what they are asked), so no test
//! touches the machine's real toolchains.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sample-modules");

/// A stand-in toolchain in a temporary directory.
struct Toolchain {
    dir: tempfile::TempDir,
}

impl Toolchain {
    /// A Rust with no wasm targets; with `rustup`, one that rustup manages.
    fn new(rustup: bool) -> Toolchain {
        let dir = tempfile::tempdir().unwrap();
        let sysroot = dir.path().join("sysroot");
        let log = dir.path().join("calls.log");
        let (sysroot_s, log_s) = (sysroot.display(), log.display());
        script(
            &sysroot.join("bin/rustc"),
            &format!(
                "if [ \"$1 $2\" = \"--print sysroot\" ]; then echo '{sysroot_s}'; exit 0; fi\n\
                 echo \"rustc $*\" >> '{log_s}'; exit 1\n"
            ),
        );
        script(
            &dir.path().join("tools/cargo"),
            &format!(
                "echo \"cargo $*\" >> '{log_s}'\necho 'error: stand-in cargo' >&2; exit 101\n"
            ),
        );
        if rustup {
            script(
                &dir.path().join("tools/rustup"),
                &format!(
                    "echo \"rustup $*\" >> '{log_s}'\n\
                     case \"$1\" in\n\
                     which) echo '{sysroot_s}/bin/rustc' ;;\n\
                     target) [ \"$2\" = add ] && /bin/mkdir -p '{sysroot_s}'/lib/rustlib/\"$3\"/lib ;;\n\
                     esac\n"
                ),
            );
        }
        Toolchain { dir }
    }

    /// Installs `target` as if it had always been there.
    fn with_target(self, target: &str) -> Toolchain {
        std::fs::create_dir_all(self.sysroot().join("lib/rustlib").join(target).join("lib"))
            .unwrap();
        self
    }

    fn sysroot(&self) -> PathBuf {
        self.dir.path().join("sysroot")
    }

    /// `kelp ARGS` with only this toolchain on `PATH`.
    fn kelp(&self, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.sysroot().join("bin").display(),
            self.dir.path().join("tools").display()
        );
        let mut cmd = Command::new(kelp_tests::binary("kelp"));
        cmd.args(args)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // What cargo sets for a test would point kelp at the real toolchain.
        for var in ["CARGO", "RUSTC", "RUSTUP_TOOLCHAIN", "RUSTC_WRAPPER"] {
            cmd.env_remove(var);
        }
        cmd.output().unwrap()
    }

    /// What the stand-in tools were asked, one call a line.
    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
    }
}

fn script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn push(toolchain: &Toolchain, sample: &str) -> (Output, String) {
    let out = toolchain.kelp(&[
        "push",
        &format!("{SAMPLES}/{sample}"),
        "--to",
        "127.0.0.1:9/kelp/sample:v1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

#[test]
fn push_installs_a_missing_target_with_rustup_and_says_so() {
    let toolchain = Toolchain::new(true);
    let (out, stderr) = push(&toolchain, "hello");
    assert!(
        stderr.contains("installing the wasm32-wasip2 target with rustup"),
        "{stderr}"
    );
    let calls = toolchain.calls();
    let added = calls.find("rustup target add wasm32-wasip2");
    let built = calls.find("cargo build --release --target wasm32-wasip2");
    assert!(
        matches!((added, built), (Some(a), Some(b)) if a < b),
        "the target is added, then the crate built: {calls}"
    );
    assert!(
        toolchain
            .sysroot()
            .join("lib/rustlib/wasm32-wasip2/lib")
            .is_dir()
    );
    // The stand-in cargo fails the build itself, which kelp reports.
    assert!(!out.status.success());
    assert!(stderr.contains("for wasm32-wasip2 failed"), "{stderr}");
}

#[test]
fn a_core_module_gets_wasm32_wasip1() {
    let toolchain = Toolchain::new(true);
    let (_, stderr) = push(&toolchain, "hello-p1");
    assert!(
        stderr.contains("installing the wasm32-wasip1 target with rustup"),
        "{stderr}"
    );
    assert!(
        toolchain
            .calls()
            .contains("cargo build --release --target wasm32-wasip1"),
        "{}",
        toolchain.calls()
    );
}

#[test]
fn push_with_the_target_installed_asks_rustup_nothing() {
    let toolchain = Toolchain::new(true).with_target("wasm32-wasip2");
    let (_, stderr) = push(&toolchain, "hello");
    assert!(!stderr.contains("installing"), "{stderr}");
    let calls = toolchain.calls();
    assert!(!calls.contains("rustup target"), "{calls}");
    assert!(
        calls.contains("cargo build --release --target wasm32-wasip2"),
        "{calls}"
    );
}

#[test]
fn push_without_rustup_stops_before_building_and_names_the_fix() {
    let toolchain = Toolchain::new(false);
    let (out, stderr) = push(&toolchain, "hello");
    assert!(!out.status.success());
    assert!(
        stderr.contains("has no standard library for wasm32-wasip2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rustup target add wasm32-wasip2"),
        "{stderr}"
    );
    assert!(
        !toolchain.calls().contains("cargo"),
        "nothing is built: {}",
        toolchain.calls()
    );
}

#[test]
fn demo_without_the_target_stops_before_starting_anything() {
    let toolchain = Toolchain::new(false);
    let data = toolchain.dir.path().join("demo-data");
    let started = Instant::now();
    let out = toolchain.kelp(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("rustup target add wasm32-wasip2"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!data.exists(), "no cloud was started, no data written");
    assert!(
        !toolchain.calls().contains("cargo"),
        "{}",
        toolchain.calls()
    );
}
