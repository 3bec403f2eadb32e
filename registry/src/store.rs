//! The content-addressed store on disk.
//!
//! ```text
//! <root>/blobs/sha256/<hex>                      blobs and manifests, by digest
//! <root>/uploads/<uuid>                          uploads in progress
//! <root>/repositories/<name>/manifests/<hex>     manifest in repo: its media type
//! <root>/repositories/<name>/tags/<tag>          tag: the manifest digest
//! <root>/quarantine/<hex>.<n>                    blobs that failed verification
//! ```
//!
//! A blob appears under `blobs/` only by a rename of a complete, fsynced file
//! whose sha256 was checked against its name, so a crash leaves the old state
//! or the new one, and never a partial blob. Uploads live on the same file
//! system, so the rename is atomic; leftovers there are removed at start.
//! Every small file (tag, manifest link) is written to a temporary file,
//! fsynced and renamed over.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kelp_core::Digest;
use kelp_core::fsutil::write_atomic;
use sha2::{Digest as _, Sha256};

use crate::names::{RepoName, Tag};

/// A handle on the store's directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Runs blocking file work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking file task failed: {e}")))?
}

impl Store {
    /// Opens (creating if needed) a store at `root`, and removes uploads a
    /// previous process left unfinished.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        for dir in ["blobs/sha256", "repositories", "quarantine"] {
            fs::create_dir_all(root.join(dir))?;
        }
        let uploads = root.join("uploads");
        if uploads.exists() {
            fs::remove_dir_all(&uploads)?;
        }
        fs::create_dir_all(&uploads)?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub(crate) fn upload_path(&self, id: &uuid::Uuid) -> PathBuf {
        self.root.join("uploads").join(id.to_string())
    }

    fn repo_dir(&self, repo: &RepoName) -> PathBuf {
        // `RepoName` admits only `[a-z0-9._-]` components that start with a
        // letter or digit, so this stays under `repositories/`.
        self.root.join("repositories").join(repo.as_str())
    }

    /// The size of a stored blob, or `None`.
    pub fn blob_size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a blob after checking its whole content against its digest, and
    /// returns it rewound with its size. A blob that fails the check is moved
    /// to `quarantine/` (never served, never deleted) and reported missing,
    /// so that a client pushes it again.
    pub fn open_verified(&self, digest: &Digest) -> io::Result<Option<(File, u64)>> {
        let path = self.blob_path(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut hasher = Sha256::new();
        // `Sha256` is an `io::Write` that hashes what it is given.
        let len = io::copy(&mut file, &mut hasher)?;
        if Digest::from_bytes(hasher.finalize().into()) != *digest {
            tracing::error!(%digest, path = %path.display(), "stored blob does not match its digest; quarantined");
            self.quarantine(&path, digest)?;
            return Ok(None);
        }
        file.seek(SeekFrom::Start(0))?;
        Ok(Some((file, len)))
    }

    fn quarantine(&self, path: &Path, digest: &Digest) -> io::Result<()> {
        for n in 0..1000u32 {
            let dest = self
                .root
                .join("quarantine")
                .join(format!("{}.{n}", digest.hex()));
            if !dest.exists() {
                return fs::rename(path, dest);
            }
        }
        fs::remove_file(path)
    }

    /// Reads a whole (small) blob after verifying it.
    pub fn read_verified(&self, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        let Some((mut file, len)) = self.open_verified(digest)? else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// Moves a complete, fsynced upload into place under its digest. The
    /// caller has checked the digest.
    pub fn commit_upload(&self, upload: &Path, digest: &Digest) -> io::Result<()> {
        let dest = self.blob_path(digest);
        if dest.exists() {
            // Same address, same content: keep the one already there.
            return fs::remove_file(upload);
        }
        fs::rename(upload, &dest)?;
        sync_dir(&self.root.join("blobs/sha256"))
    }

    /// Stores a small blob held in memory (a manifest, a config).
    pub fn put_blob(&self, bytes: &[u8]) -> io::Result<Digest> {
        let digest = crate::oci::digest_of(bytes);
        if self.blob_path(&digest).exists() {
            return Ok(digest);
        }
        let tmp = self.upload_path(&uuid::Uuid::new_v4());
        let result = (|| {
            let mut f = File::create_new(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            self.commit_upload(&tmp, &digest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| digest)
    }

    pub fn repo_exists(&self, repo: &RepoName) -> bool {
        self.repo_dir(repo).join("manifests").is_dir()
    }

    /// Records that `repo` holds the manifest `digest` of type `media_type`.
    pub fn link_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
    ) -> io::Result<()> {
        let dir = self.repo_dir(repo).join("manifests");
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(digest.hex()), media_type.as_bytes())
    }

    /// The media type of manifest `digest` in `repo`, if the repo holds it.
    pub fn manifest_type(&self, repo: &RepoName, digest: &Digest) -> io::Result<Option<String>> {
        let path = self.repo_dir(repo).join("manifests").join(digest.hex());
        match fs::read_to_string(path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn set_tag(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> io::Result<()> {
        let dir = self.repo_dir(repo).join("tags");
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(tag.as_str()), digest.to_string().as_bytes())
    }

    pub fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> io::Result<Option<Digest>> {
        let path = self.repo_dir(repo).join("tags").join(tag.as_str());
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The tags of `repo` in ASCII order, or `None` if no manifest was ever
    /// pushed to it.
    pub fn tags(&self, repo: &RepoName) -> io::Result<Option<Vec<String>>> {
        if !self.repo_exists(repo) {
            return Ok(None);
        }
        let mut tags = Vec::new();
        match fs::read_dir(self.repo_dir(repo).join("tags")) {
            Ok(entries) => {
                for entry in entries {
                    let name = entry?.file_name();
                    let name = name.to_string_lossy();
                    // Temporary files of an atomic write start with a dot,
                    // which no tag may.
                    if Tag::parse(&name).is_ok() {
                        tags.push(name.into_owned());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        tags.sort();
        Ok(Some(tags))
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupted_blob_is_quarantined_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = store.put_blob(b"hello").unwrap();
        assert_eq!(store.read_verified(&digest).unwrap().unwrap(), b"hello");
        fs::write(store.blob_path(&digest), b"jello").unwrap();
        assert!(store.read_verified(&digest).unwrap().is_none());
        assert!(!store.blob_path(&digest).exists());
        let quarantined = fs::read_dir(dir.path().join("quarantine")).unwrap().count();
        assert_eq!(quarantined, 1);
    }

    #[test]
    fn leftover_uploads_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.upload_path(&uuid::Uuid::new_v4()), b"half a blo").unwrap();
        Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("uploads")).unwrap().count(), 0);
    }
}
