pub mod demo;
pub mod device;
pub mod env;
pub mod fleet;
pub mod inspect;
pub mod key;
pub mod login;
pub mod logs;
pub mod pull;
pub mod push;
pub mod release;
pub mod run;
pub mod sign;
pub mod verify;

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

/// Reads a whole input file, naming it in the error.
pub fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// so a reader never sees half a file and a failed write leaves the old one.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomically(path, bytes, 0o644)
}

/// [`write_file_atomically`], readable by its owner only: for keys.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomically(path, bytes, 0o600)
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let context = || format!("cannot write `{}`", path.display());
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kelp-")
        .tempfile_in(dir)
        .with_context(context)?;
    tmp.write_all(bytes).with_context(context)?;
    tmp.as_file().sync_all().with_context(context)?;
    set_mode(tmp.as_file(), mode).with_context(context)?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(context)?;
    Ok(())
}

fn set_mode(file: &std::fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}
