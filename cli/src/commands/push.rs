//! `kelp push`: a `.wasm` file to an OCI registry, as a Wasm artifact.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use kelp_registry::{Client, ManifestRef, Reference};

/// Build (given a crate), sign and push a service to a registry as a Wasm
/// OCI artifact.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// A service crate (a directory with Cargo.toml and kelp.toml), which is
    /// built, or a .wasm file, which is pushed as it is.
    file: PathBuf,

    /// Sign with this secret key (from `kelp key generate`) before pushing.
    #[arg(long, value_name = "FILE", env = "KELP_KEY")]
    key: Option<PathBuf>,

    /// Embed this manifest (a kelp.toml) in a .wasm file before signing; a
    /// crate's own kelp.toml is always embedded.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,

    /// Where: REGISTRY/REPOSITORY:TAG, e.g. 127.0.0.1:8080/hello:v1.
    #[arg(long, value_name = "REGISTRY/REPO:TAG")]
    to: Reference,

    /// Registry token (the admin token `kelp-cloud serve` printed).
    #[arg(long, env = "KELP_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl PushArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let ManifestRef::Tag(tag) = &self.to.reference else {
            bail!("push to a tag (REGISTRY/REPO:TAG), not a digest");
        };
        let (path, manifest) = if self.file.is_dir() {
            let built = crate::build::build_crate(&self.file)?;
            (built.wasm, Some(built.manifest))
        } else {
            let manifest = match &self.manifest {
                Some(m) => Some(kelp_core::read_manifest_file(m)?),
                None => None,
            };
            (self.file.clone(), manifest)
        };
        let client = crate::progress::attach(
            Client::new(&self.to.registry, self.token.clone())?,
            "pushing",
        );
        let (digest, size) = if manifest.is_none() && self.key.is_none() {
            // Pushed as it is: streamed from the file, never held whole.
            warn_unsigned();
            client.push_wasm_file(&self.to.repo, tag, &path).await?
        } else {
            // Embedding and signing rewrite the file: it is held in memory.
            let mut wasm = tokio::fs::read(&path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            if let Some(manifest) = &manifest {
                wasm = kelp_core::embed(&wasm, manifest).with_context(|| {
                    format!("cannot embed the manifest in `{}`", path.display())
                })?;
            }
            match &self.key {
                Some(key) => {
                    let key = super::key::read_secret_key(key)?;
                    wasm = kelp_core::sign(&wasm, &key)
                        .with_context(|| format!("cannot sign `{}`", path.display()))?;
                    eprintln!("signed with key id {}", key.public_key().key_id());
                }
                None => warn_unsigned(),
            }
            let size = wasm.len() as u64;
            let digest = client.push_wasm(&self.to.repo, tag, wasm.into()).await?;
            (digest, size)
        };
        println!(
            "pushed {} ({size} bytes) as {}@{digest}",
            path.display(),
            self.to
        );
        Ok(ExitCode::SUCCESS)
    }
}

fn warn_unsigned() {
    eprintln!("warning: pushing unsigned (no --key); devices that pin keys will refuse it");
}
