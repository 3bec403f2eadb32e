//! `kelp push`: a `.wasm` file to an OCI registry, as a Wasm artifact.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use kelp_registry::{Client, ManifestRef, Reference};

/// Push a .wasm file to a registry as a Wasm OCI artifact.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// The component or module to push.
    file: PathBuf,

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
        let wasm = tokio::fs::read(&self.file)
            .await
            .with_context(|| format!("cannot read {}", self.file.display()))?;
        let client = Client::new(&self.to.registry, self.token)?;
        let size = wasm.len();
        let digest = client.push_wasm(&self.to.repo, tag, wasm.into()).await?;
        println!(
            "pushed {} ({size} bytes) as {}@{digest}",
            self.file.display(),
            self.to
        );
        Ok(ExitCode::SUCCESS)
    }
}
