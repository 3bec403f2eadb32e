//! `kelp inspect`: what a Wasm file says about itself.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::read_file;

/// Show a Wasm file's kind, digest, manifest and signatures.
///
/// Signatures are listed by key id, not checked; `kelp verify` checks them.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The component or core module.
    file: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Text,
    Json,
}

impl InspectArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let module = read_file(&self.file)?;
        let info = kelp_core::inspect(&module)
            .with_context(|| format!("cannot inspect `{}`", self.file.display()))?;
        if let Output::Json = self.output {
            println!("{}", serde_json::to_string_pretty(&info)?);
            return Ok(());
        }
        println!("file:      {}", self.file.display());
        println!("kind:      {}", info.kind);
        println!("digest:    {}", info.digest);
        println!("size:      {} bytes", info.size);
        match &info.manifest {
            None => println!("manifest:  none"),
            Some(m) => {
                println!("manifest:  {} {} ({})", m.name, m.version, m.kind.as_str());
                println!("  restart: {}", m.restart);
                println!("  memory:  {}", m.memory);
                for (key, value) in &m.env {
                    println!("  env:     {key}={value}");
                }
                for (label, grant) in &m.grants.gpio {
                    let modes: Vec<String> = grant.modes.iter().map(|m| m.to_string()).collect();
                    println!("  grant:   gpio {label} ({})", modes.join(", "));
                }
                for (label, grant) in &m.grants.i2c {
                    let addresses: Vec<String> = grant
                        .addresses
                        .iter()
                        .map(|a| format!("{a:#04x}"))
                        .collect();
                    println!("  grant:   i2c {label} ({})", addresses.join(", "));
                }
                for d in &m.grants.network.connect {
                    println!("  grant:   connect {d}");
                }
                for d in &m.grants.network.udp {
                    println!("  grant:   udp {d}");
                }
                if m.grants.network.serve_http {
                    println!("  grant:   serves HTTP");
                }
            }
        }
        if info.signatures.is_empty() {
            println!("signed:    no");
        }
        for sig in &info.signatures {
            let id = sig.key_id.as_deref().unwrap_or("(no key id)");
            let state = if sig.covers_contents {
                "over these contents"
            } else {
                "stale: the file changed after signing"
            };
            println!("signed by: key id {id} ({state})");
        }
        Ok(())
    }
}
