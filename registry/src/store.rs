//! The content-addressed store on disk.
//!
//! ```text
//! <root>/blobs/sha256/<hex>                      blobs and manifests, by digest
//! <root>/blobs/sha512/<hex>                      the same, by sha512 digest
//! <root>/uploads/<uuid>                          uploads in progress
//! <root>/repositories/<name>/manifests/<hex>     manifest in repo: its media type
//! <root>/repositories/<name>/tags/<tag>          tag: the manifest digest
//! <root>/quarantine/<hex>.<n>                    blobs that failed verification
//! ```
//!
//! A blob appears under `blobs/` only by a rename of a complete, fsynced file
//! whose digest was checked against its name, so a crash leaves the old state
//! or the new one, and never a partial blob. Uploads live on the same file
//! system, so the rename is atomic; leftovers there are removed at start.
//! Every small file (tag, manifest link) is written to a temporary file,
//! fsynced and renamed over.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kelp_core::fsutil::write_atomic;

use crate::digest::{Algorithm, BlobDigest};
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
        for dir in ["blobs/sha256", "blobs/sha512", "repositories", "quarantine"] {
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

    fn blob_dir(&self, algorithm: Algorithm) -> PathBuf {
        self.root.join("blobs").join(algorithm.name())
    }

    pub(crate) fn blob_path(&self, digest: &BlobDigest) -> PathBuf {
        self.blob_dir(digest.algorithm()).join(digest.hex())
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
    pub fn blob_size(&self, digest: &BlobDigest) -> io::Result<Option<u64>> {
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
    pub fn open_verified(&self, digest: &BlobDigest) -> io::Result<Option<(File, u64)>> {
        let path = self.blob_path(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut hasher = digest.algorithm().hasher();
        // A `Hasher` is an `io::Write` that hashes what it is given.
        let len = io::copy(&mut file, &mut hasher)?;
        if hasher.finish() != *digest {
            tracing::error!(%digest, path = %path.display(), "stored blob does not match its digest; quarantined");
            self.quarantine(&path, digest)?;
            return Ok(None);
        }
        file.seek(SeekFrom::Start(0))?;
        Ok(Some((file, len)))
    }

    fn quarantine(&self, path: &Path, digest: &BlobDigest) -> io::Result<()> {
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
    pub fn read_verified(&self, digest: &BlobDigest) -> io::Result<Option<Vec<u8>>> {
        let Some((mut file, len)) = self.open_verified(digest)? else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// Moves a complete, fsynced upload into place under its digest. The
    /// caller has checked the digest.
    pub fn commit_upload(&self, upload: &Path, digest: &BlobDigest) -> io::Result<()> {
        let dest = self.blob_path(digest);
        if dest.exists() {
            // Same address, same content: keep the one already there, as
            // new to garbage collection as the upload would have been.
            fs::remove_file(upload)?;
            self.touch_blob(digest)?;
            return Ok(());
        }
        fs::rename(upload, &dest)?;
        // An upload's file keeps the time of its last chunk, which may be
        // long ago; the blob is new now, for garbage collection's grace.
        self.touch_blob(digest)?;
        sync_dir(&self.blob_dir(digest.algorithm()))
    }

    /// Stores a small blob held in memory (a manifest, a config) under its
    /// digest by `algorithm`.
    pub fn put_blob(&self, algorithm: Algorithm, bytes: &[u8]) -> io::Result<BlobDigest> {
        let digest = BlobDigest::of(algorithm, bytes);
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
        digest: &BlobDigest,
        media_type: &str,
    ) -> io::Result<()> {
        let dir = self.repo_dir(repo).join("manifests");
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(digest.hex()), media_type.as_bytes())
    }

    /// The media type of manifest `digest` in `repo`, if the repo holds it.
    pub fn manifest_type(
        &self,
        repo: &RepoName,
        digest: &BlobDigest,
    ) -> io::Result<Option<String>> {
        let path = self.repo_dir(repo).join("manifests").join(digest.hex());
        match fs::read_to_string(path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn set_tag(&self, repo: &RepoName, tag: &Tag, digest: &BlobDigest) -> io::Result<()> {
        let dir = self.repo_dir(repo).join("tags");
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(tag.as_str()), digest.to_string().as_bytes())
    }

    pub fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> io::Result<Option<BlobDigest>> {
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

impl Store {
    /// Marks a stored blob as just wanted (a client was told it is there),
    /// so garbage collection gives it a full grace period before it could
    /// go. Returns whether the blob exists.
    pub(crate) fn touch_blob(&self, digest: &BlobDigest) -> io::Result<bool> {
        match File::options().write(true).open(self.blob_path(digest)) {
            Ok(f) => {
                f.set_modified(std::time::SystemTime::now())?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a blob. Returns whether it was there.
    pub fn delete_blob(&self, digest: &BlobDigest) -> io::Result<bool> {
        match fs::remove_file(self.blob_path(digest)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every stored blob (manifests included) with when it was last
    /// written or touched.
    pub fn blobs(&self) -> io::Result<Vec<(BlobDigest, std::time::SystemTime)>> {
        let mut out = Vec::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            for entry in fs::read_dir(self.blob_dir(algorithm))? {
                let entry = entry?;
                let name = entry.file_name();
                let Ok(digest) = BlobDigest::from_hex(&name.to_string_lossy()) else {
                    continue;
                };
                if digest.algorithm() != algorithm {
                    continue;
                }
                // A blob quarantined by a read in the meantime is gone.
                match entry.metadata() {
                    Ok(m) => out.push((digest, m.modified()?)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// Every repository that holds manifests.
    pub fn repos(&self) -> io::Result<Vec<RepoName>> {
        let mut out = Vec::new();
        let root = self.root.join("repositories");
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                if !entry.file_type()?.is_dir() {
                    continue;
                }
                let path = entry.path();
                if entry.file_name() == "manifests" {
                    let name = dir.strip_prefix(&root).unwrap_or(&dir).to_string_lossy();
                    if let Ok(repo) = RepoName::parse(&name) {
                        out.push(repo);
                    }
                } else if entry.file_name() != "tags" {
                    stack.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The manifests `repo` holds, with their media types.
    pub fn manifests(&self, repo: &RepoName) -> io::Result<Vec<(BlobDigest, String)>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(self.repo_dir(repo).join("manifests")) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if let Ok(digest) = BlobDigest::from_hex(&name.to_string_lossy()) {
                out.push((digest, fs::read_to_string(entry.path())?));
            }
        }
        Ok(out)
    }

    /// Removes manifest `digest` from `repo` with every tag that points at
    /// it. Returns whether the repo held it. The blob stays until garbage
    /// collection finds nothing else uses it.
    pub fn unlink_manifest(&self, repo: &RepoName, digest: &BlobDigest) -> io::Result<bool> {
        for tag in self.tags(repo)?.unwrap_or_default() {
            let Ok(tag) = Tag::parse(&tag) else { continue };
            if self.resolve_tag(repo, &tag)? == Some(*digest) {
                self.delete_tag(repo, &tag)?;
            }
        }
        match fs::remove_file(self.repo_dir(repo).join("manifests").join(digest.hex())) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a tag. Returns whether it was there.
    pub fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> io::Result<bool> {
        match fs::remove_file(self.repo_dir(repo).join("tags").join(tag.as_str())) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
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
        let digest = store.put_blob(Algorithm::Sha256, b"hello").unwrap();
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
