//! `kelp pull`: a Wasm artifact from an OCI registry to a file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use kelp_registry::{Client, Reference};

/// Pull a Wasm OCI artifact to a file, checking its digest. An interrupted
/// pull resumes where it stopped.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// What: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:….
    reference: Reference,

    /// Where to write the .wasm file.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,

    /// Registry token, if the registry needs one to pull.
    #[arg(long, env = "KELP_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl PullArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let client = crate::progress::attach(
            Client::new(&self.reference.registry, self.token)?,
            "pulling",
        );
        let pulled = client
            .pull_wasm(
                &self.reference.repo,
                &self.reference.reference,
                &self.output,
            )
            .await?;
        println!(
            "pulled {} ({} bytes, {}) to {}",
            self.reference,
            pulled.layer.size,
            pulled.layer.digest,
            self.output.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}
