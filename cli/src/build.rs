//! Building a service crate into the `.wasm` file `kelp push` ships, with
//! the wasm target it needs installed first.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use kelp_core::{Manifest, WasmKind};

/// A service crate, built.
pub struct Built {
    pub wasm: PathBuf,
    pub manifest: Manifest,
}

/// Builds the crate in `dir` for the target its `kelp.toml` asks for
/// (`kind = "component"` → wasm32-wasip2, `"core-module"` → wasm32-wasip1),
/// in release mode, with cargo's progress on stderr.
pub fn build_crate(dir: &Path) -> anyhow::Result<Built> {
    let manifest_path = dir.join("kelp.toml");
    if !manifest_path.exists() {
        bail!(
            "`{}` has no kelp.toml; a service crate needs one beside its Cargo.toml (see sample-modules/hello/kelp.toml)",
            dir.display()
        );
    }
    let manifest = kelp_core::read_manifest_file(&manifest_path)?;
    let target = target_for(manifest.kind);
    ensure_target(target)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--target", target])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run cargo")?;
    let mut wasm = None;
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let line = line.context("cannot read cargo's output")?;
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if message["reason"] == "compiler-artifact"
                && let Some(exe) = message["executable"].as_str()
                && exe.ends_with(".wasm")
            {
                wasm = Some(PathBuf::from(exe));
            }
        }
    }
    let status = child.wait().context("cannot run cargo")?;
    if !status.success() {
        bail!("building `{}` for {target} failed", dir.display());
    }
    let Some(wasm) = wasm else {
        bail!(
            "building `{}` produced no .wasm program (is it a binary crate?)",
            dir.display()
        );
    };
    Ok(Built { wasm, manifest })
}

/// The target a service of this kind is built for.
pub fn target_for(kind: WasmKind) -> &'static str {
    match kind {
        WasmKind::Component => "wasm32-wasip2",
        WasmKind::CoreModule => "wasm32-wasip1",
    }
}

/// Makes sure the Rust toolchain cargo will build with has `target`'s
/// standard library: installs it with rustup when rustup manages that
/// toolchain (rustup leaves a `rust-toolchain.toml`'s targets out when the
/// toolchain was already there, or installs nothing at all under
/// `RUSTUP_AUTO_INSTALL=0`), and otherwise fails before building, with the
/// command that fixes it. Without this, rustc's `can't find crate for core`
/// is all a newcomer sees.
///
/// The probes run in this process's directory and environment, as the build
/// does, so rustup picks the same toolchain for them.
pub fn ensure_target(target: &str) -> anyhow::Result<()> {
    let sysroot = sysroot()?;
    if has_target(&sysroot, target) {
        return Ok(());
    }
    if !managed_by_rustup(&sysroot) {
        bail!(
            "the Rust at `{}` has no standard library for {target}, and no rustup on PATH \
             manages it, so kelp cannot install the target; with rustup's Rust \
             (https://rustup.rs) the fix is: rustup target add {target}",
            sysroot.display()
        );
    }
    eprintln!("installing the {target} target with rustup (rustup target add {target})");
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .context("cannot run rustup")?;
    if !status.success() || !has_target(&sysroot, target) {
        bail!(
            "rustup could not install the {target} target ({status}); \
             run `rustup target add {target}` and try again"
        );
    }
    Ok(())
}

/// The sysroot of the `rustc` cargo builds with (`$RUSTC`, else the one on
/// `PATH`).
fn sysroot() -> anyhow::Result<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| {
            format!(
                "cannot run `{}` (is Rust installed?)",
                Path::new(&rustc).display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "`{} --print sysroot` failed ({})",
            Path::new(&rustc).display(),
            out.status
        );
    }
    let text =
        String::from_utf8(out.stdout).context("rustc printed a sysroot that is not UTF-8")?;
    Ok(PathBuf::from(text.trim()))
}

/// Whether the toolchain at `sysroot` has `target`'s standard library.
fn has_target(sysroot: &Path, target: &str) -> bool {
    sysroot
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
}

/// Whether the toolchain at `sysroot` is the one rustup picks here: then
/// `rustup target add` installs into it.
fn managed_by_rustup(sysroot: &Path) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["which", "rustc"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let Ok(text) = String::from_utf8(out.stdout) else {
        return false;
    };
    let rustups = std::fs::canonicalize(text.trim());
    let ours = std::fs::canonicalize(sysroot.join("bin/rustc"));
    matches!((rustups, ours), (Ok(a), Ok(b)) if a == b)
}
