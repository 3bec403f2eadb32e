//! `kelp verify`: check a Wasm file's signature against trusted keys.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::key::read_public_key;
use super::read_file;

/// Verify that a Wasm file is signed by one of the given public keys.
///
/// Exits 0 and prints the signer's key id when a signature by one of the keys
/// covers the whole file and any embedded manifest matches the file's kind;
/// otherwise prints why not and exits non-zero.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The signed component or core module.
    file: PathBuf,

    /// A trusted public key file (repeatable).
    #[arg(long = "public-key", short = 'K', value_name = "FILE", required = true)]
    public_keys: Vec<PathBuf>,
}

impl VerifyArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let keys = self
            .public_keys
            .iter()
            .map(|p| read_public_key(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let module = read_file(&self.file)?;
        let verified = kelp_core::verify(&module, &keys)
            .with_context(|| format!("`{}` does not verify", self.file.display()))?;
        for id in &verified.key_ids {
            println!("{}: signed by key id {id}", self.file.display());
        }
        Ok(())
    }
}
