//! `kelp key`: publisher signing keys.

use std::fs::OpenOptions;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use kelp_core::{MAX_KEY_FILE_SIZE, PublicKey, SecretKey};

/// Manage signing keys.
#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    Generate(GenerateArgs),
}

/// Generate an Ed25519 key pair, in the raw format wasmsign2 also reads.
///
/// Writes `kelp.key` (secret, mode 0600) and `kelp.pub` (public) in the
/// directory given by `-o`, created if need be (default: the current
/// directory), or to the files
/// named by `--secret-key` and `--public-key`. Existing files are never
/// overwritten.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Directory to write `kelp.key` and `kelp.pub` in (created if missing).
    #[arg(short = 'o', long = "out-dir", value_name = "DIR", conflicts_with_all = ["secret_key", "public_key"])]
    out_dir: Option<PathBuf>,

    /// Where to write the secret key.
    #[arg(long, value_name = "FILE", requires = "public_key")]
    secret_key: Option<PathBuf>,

    /// Where to write the public key.
    #[arg(long, value_name = "FILE", requires = "secret_key")]
    public_key: Option<PathBuf>,
}

impl KeyArgs {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            KeyCommand::Generate(args) => args.run(),
        }
    }
}

impl GenerateArgs {
    fn run(self) -> anyhow::Result<()> {
        let (secret_path, public_path) = match (self.secret_key, self.public_key) {
            (Some(s), Some(p)) => (s, p),
            _ => {
                let dir = self.out_dir.unwrap_or_else(|| PathBuf::from("."));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create `{}`", dir.display()))?;
                (dir.join("kelp.key"), dir.join("kelp.pub"))
            }
        };
        for path in [&secret_path, &public_path] {
            if path.exists() {
                bail!("`{}` already exists; not overwriting a key", path.display());
            }
        }
        let secret = SecretKey::generate()?;
        let public = secret.public_key();
        write_new(&secret_path, &secret.to_bytes(), 0o600)?;
        write_new(&public_path, &public.to_bytes(), 0o644)?;
        println!("secret key: {}", secret_path.display());
        println!("public key: {}", public_path.display());
        println!("key id:     {}", public.key_id());
        Ok(())
    }
}

pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let context = || format!("cannot write `{}`", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(context)?;
    file.write_all(bytes).with_context(context)?;
    file.sync_all().with_context(context)?;
    Ok(())
}

/// Reads a key file, refusing anything too large to be a key.
fn read_key_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let context = || format!("cannot read {what} `{}`", path.display());
    let file = std::fs::File::open(path).with_context(context)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(context)?;
    if bytes.len() > MAX_KEY_FILE_SIZE {
        bail!(
            "{what} `{}` is larger than {MAX_KEY_FILE_SIZE} bytes; it is not a key",
            path.display()
        );
    }
    Ok(bytes)
}

pub fn read_secret_key(path: &Path) -> anyhow::Result<SecretKey> {
    let bytes = read_key_file(path, "secret key")?;
    SecretKey::from_bytes(&bytes).with_context(|| format!("`{}`", path.display()))
}

pub fn read_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let bytes = read_key_file(path, "public key")?;
    PublicKey::from_bytes(&bytes).with_context(|| format!("`{}`", path.display()))
}
