//! Building a service crate into the `.wasm` file `kelp push` ships.

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
    let target = match manifest.kind {
        WasmKind::Component => "wasm32-wasip2",
        WasmKind::CoreModule => "wasm32-wasip1",
    };
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
