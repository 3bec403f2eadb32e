//! `kelp sign`: embed a service manifest and sign a Wasm file.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::key::read_secret_key;
use super::{read_file, write_file_atomically};

/// Sign a Wasm file, embedding its manifest first when given.
///
/// The signature covers every byte after the 8-byte header, the manifest
/// included, in the format wasmsign2 reads. Signing a file already signed
/// over the same bytes adds a signature beside the others.
#[derive(Args, Debug)]
pub struct SignArgs {
    /// The component or core module to sign.
    input: PathBuf,

    /// Secret key file (from `kelp key generate` or `wasmsign2 keygen`).
    #[arg(long, short = 'k', value_name = "FILE")]
    key: PathBuf,

    /// Where to write the signed file (may be the input).
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,

    /// A `kelp.toml` service manifest to embed; it replaces any manifest the
    /// file already has.
    #[arg(long, short = 'm', value_name = "FILE")]
    manifest: Option<PathBuf>,
}

impl SignArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let key = read_secret_key(&self.key)?;
        let mut module = read_file(&self.input)?;
        let input = self.input.display();
        if let Some(path) = &self.manifest {
            let manifest = kelp_core::read_manifest_file(path)?;
            module = kelp_core::embed(&module, &manifest)
                .with_context(|| format!("cannot embed `{}` in `{input}`", path.display()))?;
        }
        let signed =
            kelp_core::sign(&module, &key).with_context(|| format!("cannot sign `{input}`"))?;
        write_file_atomically(&self.output, &signed)?;
        println!(
            "signed {} with key id {}",
            self.output.display(),
            key.public_key().key_id()
        );
        Ok(())
    }
}
