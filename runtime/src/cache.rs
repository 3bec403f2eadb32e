//! The compile cache: Cranelift output (`.cwasm`) on disk, keyed by the
//! module's sha256 and the engine's compatibility hash.
//!
//! Deserializing a `.cwasm` maps native code into the process, so a file is
//! loaded only if this supervisor wrote it: every entry carries an HMAC-SHA256
//! tag, under a key that only the cache owner can read, over the compatibility
//! hash, the module digest and the code. A file that was truncated, changed,
//! swapped for another module's, or copied from another device fails the
//! check, is deleted, and the module is compiled again.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};

use kelp_core::fsutil::write_atomic;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use kelp_core::Digest;
use sha2::Sha256;

type Tag = Hmac<Sha256>;

/// Length of the cache key in bytes.
const KEY_LEN: usize = 32;

/// Largest `.cwasm` the cache reads back. Compiled code is a few times the
/// size of the module; anything beyond this is not ours.
const MAX_ENTRY: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot use compile cache directory `{path}`: {error}")]
    Dir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot read or create compile cache key `{path}`: {error}")]
    Key {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What looking a module up in the cache found.
#[derive(Debug)]
pub(crate) enum Lookup {
    Hit(Vec<u8>),
    Miss,
    /// There was a file, but it failed the check and was removed.
    Rejected(String),
}

pub(crate) struct CompileCache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
    compat: String,
}

impl CompileCache {
    /// Opens (creating if needed) the cache under `root` for `engine`.
    pub(crate) fn open(root: &Path, engine: &wasmtime::Engine) -> Result<Self, CacheError> {
        let compat = compatibility_key(engine);
        let dir = root.join(&compat);
        fs::create_dir_all(&dir).map_err(|error| CacheError::Dir {
            path: dir.clone(),
            error,
        })?;
        let key = load_or_create_key(&root.join("key"))?;
        Ok(CompileCache { dir, key, compat })
    }

    fn paths(&self, digest: &Digest) -> (PathBuf, PathBuf) {
        let hex = digest.hex();
        (
            self.dir.join(format!("{hex}.cwasm")),
            self.dir.join(format!("{hex}.tag")),
        )
    }

    fn tag(&self, digest: &Digest, code: &[u8]) -> Tag {
        // A key of any length is accepted by HMAC; this cannot fail.
        let mut mac = <Tag as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(self.compat.as_bytes());
        mac.update(digest.as_bytes());
        mac.update(code);
        mac
    }

    pub(crate) fn get(&self, digest: &Digest) -> Lookup {
        let (code_path, tag_path) = self.paths(digest);
        let code = match read_bounded(&code_path) {
            Ok(Some(code)) => code,
            Ok(None) => return Lookup::Miss,
            Err(e) => return self.reject(digest, format!("unreadable: {e}")),
        };
        let tag = match fs::read(&tag_path) {
            Ok(tag) => tag,
            Err(e) => return self.reject(digest, format!("no tag: {e}")),
        };
        match self.tag(digest, &code).verify_slice(&tag) {
            Ok(()) => Lookup::Hit(code),
            Err(_) => self.reject(digest, "tag does not match its contents".into()),
        }
    }

    fn reject(&self, digest: &Digest, why: String) -> Lookup {
        let (code_path, tag_path) = self.paths(digest);
        let _ = fs::remove_file(code_path);
        let _ = fs::remove_file(tag_path);
        Lookup::Rejected(why)
    }

    /// Stores compiled code. Failure to cache is not failure to run, so errors
    /// are only logged.
    pub(crate) fn put(&self, digest: &Digest, code: &[u8]) {
        let (code_path, tag_path) = self.paths(digest);
        let tag = self.tag(digest, code).finalize().into_bytes();
        // The tag goes last: a crash between the two leaves an entry that
        // fails its check and is recompiled.
        let result = write_atomic(&code_path, code).and_then(|()| write_atomic(&tag_path, &tag));
        if let Err(error) = result {
            tracing::warn!(%digest, %error, path = %code_path.display(), "cannot write compile cache entry");
        }
    }

    /// Removes the entries of every module but `keep`; returns how many
    /// went. What cannot be read or removed is left for the next time.
    pub(crate) fn keep_only(&self, keep: &[Digest]) -> usize {
        let keep: std::collections::HashSet<String> = keep.iter().map(Digest::hex).collect();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(hex) = name
                .strip_suffix(".cwasm")
                .or_else(|| name.strip_suffix(".tag"))
            else {
                continue;
            };
            if !keep.contains(hex)
                && fs::remove_file(entry.path()).is_ok()
                && name.ends_with(".cwasm")
            {
                removed += 1;
            }
        }
        removed
    }

    #[cfg(test)]
    pub(crate) fn code_path(&self, digest: &Digest) -> PathBuf {
        self.paths(digest).0
    }
}

/// The engine's compatibility hash as a short file-name-safe string: code
/// compiled by one wasmtime build or configuration is never offered to another.
fn compatibility_key(engine: &wasmtime::Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut code = Vec::new();
    file.take(MAX_ENTRY + 1).read_to_end(&mut code)?;
    if code.len() as u64 > MAX_ENTRY {
        return Err(std::io::Error::other("larger than any compiled module"));
    }
    Ok(Some(code))
}

fn load_or_create_key(path: &Path) -> Result<[u8; KEY_LEN], CacheError> {
    let err = |error| CacheError::Key {
        path: path.to_owned(),
        error,
    };
    match fs::read(path) {
        Ok(bytes) if bytes.len() == KEY_LEN => {
            let mut key = [0u8; KEY_LEN];
            key.copy_from_slice(&bytes);
            return Ok(key);
        }
        // A key of the wrong length is replaced; every entry tagged with the
        // old one is then rejected and recompiled, which is safe.
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut key = [0u8; KEY_LEN];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(err)?;
    write_private(path, &key).map_err(err)?;
    Ok(key)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    #[test]
    fn stores_and_finds_entries_and_rejects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let engine = wasmtime::Engine::default();
        let cache = CompileCache::open(dir.path(), &engine).unwrap();
        assert!(matches!(cache.get(&digest(1)), Lookup::Miss));

        cache.put(&digest(1), b"compiled code");
        assert!(matches!(cache.get(&digest(1)), Lookup::Hit(c) if c == b"compiled code"));

        // One flipped byte: rejected and removed.
        let path = cache.code_path(&digest(1));
        fs::write(&path, b"compiled codf").unwrap();
        assert!(matches!(cache.get(&digest(1)), Lookup::Rejected(_)));
        assert!(!path.exists());
        assert!(matches!(cache.get(&digest(1)), Lookup::Miss));

        // Another module's entry, renamed to this module's name: rejected.
        cache.put(&digest(2), b"other module");
        fs::copy(cache.code_path(&digest(2)), cache.code_path(&digest(3))).unwrap();
        let (_, tag2) = cache.paths(&digest(2));
        let (_, tag3) = cache.paths(&digest(3));
        fs::copy(tag2, tag3).unwrap();
        assert!(matches!(cache.get(&digest(3)), Lookup::Rejected(_)));
    }

    #[test]
    fn only_the_entries_kept_stay() {
        let dir = tempfile::tempdir().unwrap();
        let engine = wasmtime::Engine::default();
        let cache = CompileCache::open(dir.path(), &engine).unwrap();
        for n in 1..=3 {
            cache.put(&digest(n), b"code");
        }
        assert_eq!(cache.keep_only(&[digest(2)]), 2);
        assert!(matches!(cache.get(&digest(1)), Lookup::Miss));
        assert!(matches!(cache.get(&digest(2)), Lookup::Hit(_)));
        assert!(matches!(cache.get(&digest(3)), Lookup::Miss));
        // The device's cache key is not an entry.
        assert!(dir.path().join("key").exists());
    }

    #[test]
    fn entries_from_another_device_are_foreign() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let engine = wasmtime::Engine::default();
        let a = CompileCache::open(ours.path(), &engine).unwrap();
        let b = CompileCache::open(theirs.path(), &engine).unwrap();
        b.put(&digest(7), b"their code");
        let (code, tag) = b.paths(&digest(7));
        let (our_code, our_tag) = a.paths(&digest(7));
        fs::copy(code, our_code).unwrap();
        fs::copy(tag, our_tag).unwrap();
        assert!(matches!(a.get(&digest(7)), Lookup::Rejected(_)));
    }
}
