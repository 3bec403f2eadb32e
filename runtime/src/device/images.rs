//! Services a device runs from a registry, pinned by digest.
//!
//! An image is named `REGISTRY/REPOSITORY@sha256:…`, the digest of its OCI
//! manifest, which `kelp push` prints. Fetching it pulls that manifest and
//! its one Wasm layer into a content-addressed store:
//!
//! ```text
//! <root>/sha256/<hex>            manifests and modules, named by their digest
//! <root>/sha256/<hex>.partial    a download in progress, resumed where it stopped
//! ```
//!
//! Every file is checked against its digest as it arrives, and again each
//! time it is used, so a file damaged on the device's own disk is fetched
//! anew, never run. What the store hands out is only a file whose bytes are
//! the ones the digest names; whether a trusted key signed them is the
//! loader's check, which comes next.

use std::fmt;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kelp_core::Digest;
use kelp_registry::oci::{ImageManifest, NotWasm};
use kelp_registry::{Client, ClientError, MAX_MANIFEST_SIZE, ManifestRef, Reference};
use sha2::{Digest as _, Sha256};

use crate::program::MAX_MODULE_SIZE;

/// An image pinned by the digest of its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    reference: Reference,
    digest: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageRefError {
    #[error(
        "image `{image}` names tag `{tag}`; pin it by digest, as REGISTRY/REPOSITORY@sha256:… (`kelp push` prints it), so the device runs exactly the file chosen"
    )]
    Tag { image: String, tag: String },
    #[error(transparent)]
    Reference(#[from] ClientError),
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let reference: Reference = s.parse()?;
        match &reference.reference {
            ManifestRef::Digest(digest) => Ok(ImageRef {
                digest: *digest,
                reference,
            }),
            ManifestRef::Tag(tag) => Err(ImageRefError::Tag {
                image: s.to_owned(),
                tag: tag.to_string(),
            }),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reference.fmt(f)
    }
}

impl ImageRef {
    /// The digest of the image's manifest.
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

/// Why an image could not be fetched. Each names the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image}: {source}")]
    Registry {
        image: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error("image {image}: manifest is not an OCI image manifest: {message}")]
    BadManifest { image: String, message: String },
    #[error("image {image}: {source}")]
    NotWasm {
        image: String,
        #[source]
        source: NotWasm,
    },
    #[error(
        "image {image}: its module is {size} bytes, more than the {MAX_MODULE_SIZE} bytes a module may have"
    )]
    TooLarge { image: String, size: u64 },
    #[error(
        "image {image}: this device does not pull from registry `{host}` (the registries its config allows: {allowed})"
    )]
    RegistryNotAllowed {
        image: String,
        host: String,
        allowed: String,
    },
    #[error("image {image}: `{path}`: {source}")]
    Io {
        image: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The content-addressed store images are fetched into.
pub struct ImageStore {
    dir: PathBuf,
    token: Option<String>,
    /// A registry (`http(s)://host[:port]`) and the token for it alone: a fleet's
    /// device pulls from its cloud's registry with its device key.
    home: std::sync::Mutex<Option<(String, String)>>,
    /// Modules (by their content-addressed path) already found signed by a
    /// key id: the same bytes are not read and verified again on every
    /// target.
    signed: std::sync::Mutex<std::collections::HashSet<(PathBuf, String)>>,
    /// One fetch at a time: two fetches of the same blob would append to
    /// the same partial file.
    fetching: tokio::sync::Mutex<()>,
    /// The registries (`host[:port]`) images may come from; `None` for any.
    allowed: std::sync::Mutex<Option<Vec<String>>>,
}

impl ImageStore {
    /// A store under `root`, fetching with `token` (sent to every registry
    /// an image names) if given.
    pub fn new(root: impl Into<PathBuf>, token: Option<String>) -> Self {
        ImageStore {
            dir: root.into().join("sha256"),
            token: token.filter(|t| !t.is_empty()),
            home: std::sync::Mutex::new(None),
            signed: std::sync::Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
            allowed: std::sync::Mutex::new(None),
        }
    }

    /// Fetches only from these registries (`host[:port]`, as an image
    /// names them): a device of a fleet pulls from the registries its config
    /// names, not from wherever a target points.
    pub fn allow_only(&self, registries: Vec<String>) {
        *self.allowed.lock().unwrap_or_else(|p| p.into_inner()) = Some(registries);
    }

    /// Refuses an image from a registry the device does not pull from.
    fn check_allowed(&self, image: &ImageRef) -> Result<(), ImageError> {
        let allowed = self.allowed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(allowed) = allowed.as_ref() else {
            return Ok(());
        };
        let registry = &image.reference.registry;
        let host = registry
            .split_once("://")
            .map_or(registry.as_str(), |(_, h)| h);
        if allowed.iter().any(|a| a == host) {
            return Ok(());
        }
        Err(ImageError::RegistryNotAllowed {
            image: image.to_string(),
            host: host.to_owned(),
            allowed: match allowed.is_empty() {
                true => "none".to_owned(),
                false => allowed.join(", "),
            },
        })
    }

    /// Fetches from `registry` (`http(s)://host[:port]`) with `token`, unless a token
    /// for every registry was given.
    pub fn set_home_registry(&self, registry: &str, token: &str) {
        *self.home.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((registry.to_owned(), token.to_owned()));
    }

    /// Refuses `module`, a file of this store, unless the key `signer` (a
    /// key id, one of `keys`) signed it.
    pub async fn check_signer(
        &self,
        module: &Path,
        signer: &str,
        keys: &[kelp_core::PublicKey],
    ) -> Result<(), String> {
        let memo = (module.to_owned(), signer.to_owned());
        if self
            .signed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&memo)
        {
            return Ok(());
        }
        let Some(key) = keys.iter().find(|k| k.key_id().to_string() == signer) else {
            return Err(format!(
                "the release says key {signer} signed it, and this device does not trust that key"
            ));
        };
        let bytes = tokio::fs::read(module)
            .await
            .map_err(|e| format!("cannot read `{}`: {e}", module.display()))?;
        kelp_core::verify(&bytes, std::slice::from_ref(key))
            .map_err(|e| format!("not signed by key {signer}, as its release says: {e}"))?;
        self.signed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(memo);
        Ok(())
    }

    /// The token to send to `registry`.
    fn token_for(&self, registry: &str) -> Option<String> {
        if self.token.is_some() {
            return self.token.clone();
        }
        match &*self.home.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((home, token)) if home == registry => Some(token.clone()),
            _ => None,
        }
    }

    /// The file that holds, or will hold, the blob `digest`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Makes sure the image's module is in the store, fetching whatever is
    /// missing or damaged, and returns the module's file.
    pub async fn fetch(&self, image: &ImageRef) -> Result<PathBuf, ImageError> {
        self.check_allowed(image)?;
        let _one_at_a_time = self.fetching.lock().await;
        let io = |path: &Path| {
            let (image, path) = (image.to_string(), path.to_owned());
            move |source| ImageError::Io {
                image,
                path,
                source,
            }
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(&self.dir))?;
        let registry = |source| ImageError::Registry {
            image: image.to_string(),
            source: Box::new(source),
        };
        // Made only when something is missing: a device whose store holds
        // the image starts without the network.
        let client = || {
            Client::new(
                &image.reference.registry,
                self.token_for(&image.reference.registry),
            )
            .map_err(registry)
        };
        let repo = &image.reference.repo;

        let manifest_path = self.blob_path(&image.digest);
        let manifest = match verified(&manifest_path, &image.digest, MAX_MANIFEST_SIZE as u64)
            .await
            .map_err(io(&manifest_path))?
        {
            Some(bytes) => bytes,
            None => {
                let (bytes, _) = client()?
                    .pull_manifest_bytes(repo, &ManifestRef::Digest(image.digest))
                    .await
                    .map_err(registry)?;
                kelp_core::fsutil::write_atomic(&manifest_path, &bytes)
                    .map_err(io(&manifest_path))?;
                bytes
            }
        };
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest).map_err(|e| ImageError::BadManifest {
                image: image.to_string(),
                message: e.to_string(),
            })?;
        let layer = manifest
            .wasm_layer()
            .map_err(|source| ImageError::NotWasm {
                image: image.to_string(),
                source,
            })?;
        if layer.size > MAX_MODULE_SIZE {
            return Err(ImageError::TooLarge {
                image: image.to_string(),
                size: layer.size,
            });
        }

        let module_path = self.blob_path(&layer.digest);
        let present = verified_file(&module_path, &layer.digest)
            .await
            .map_err(io(&module_path))?;
        if !present {
            tracing::info!(%image, layer = %layer.digest, size = layer.size, "fetching");
            client()?
                .pull_blob(repo, layer, &module_path)
                .await
                .map_err(registry)?;
        }
        Ok(module_path)
    }

    /// Removes from the store every file that none of `images` needs: the
    /// modules of releases the device will not run again, and what is left
    /// of downloads that were refused or superseded. A device's disk holds
    /// what it may still run, not everything it ever ran. Waits for a fetch
    /// under way, so nothing it is writing goes. Returns the digests of the
    /// modules kept.
    pub async fn keep_only(&self, images: &[&ImageRef]) -> Vec<Digest> {
        let _no_fetch_meanwhile = self.fetching.lock().await;
        let mut wanted = std::collections::HashSet::new();
        let mut modules = Vec::new();
        for image in images {
            wanted.insert(image.digest.hex());
            let path = self.blob_path(&image.digest);
            // A manifest that is missing or damaged is fetched again, with
            // its module, before the image runs: nothing of it to keep.
            if let Ok(Some(bytes)) = verified(&path, &image.digest, MAX_MANIFEST_SIZE as u64).await
                && let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&bytes)
                && let Ok(layer) = manifest.wasm_layer()
            {
                wanted.insert(layer.digest.hex());
                modules.push(layer.digest);
            }
        }
        let dir = self.dir.clone();
        let freed = blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            let mut freed = 0u64;
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let blob = name.strip_suffix(".partial").unwrap_or(&name);
                if wanted.contains(blob) {
                    continue;
                }
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => freed += size,
                    Err(e) => {
                        tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove from the image store")
                    }
                }
            }
            Ok(freed)
        })
        .await;
        match freed {
            Ok(0) => {}
            Ok(freed) => tracing::info!(
                freed_bytes = freed,
                "image store: removed what no release the device may run needs"
            ),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot clean the image store")
            }
        }
        modules
    }
}

/// The bytes of a small file in the store if they match `digest`; `None`
/// when it is missing, and when it is damaged (it is then removed).
async fn verified(path: &Path, digest: &Digest, max: u64) -> io::Result<Option<Vec<u8>>> {
    let (path, digest) = (path.to_owned(), *digest);
    blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(max + 1).read_to_end(&mut bytes)?;
        let actual = Digest::from_bytes(Sha256::digest(&bytes).into());
        if actual == digest {
            return Ok(Some(bytes));
        }
        discard(&path, &digest, &actual)?;
        Ok(None)
    })
    .await
}

/// Whether a (large) file in the store is there and matches `digest`; a
/// damaged one is removed.
async fn verified_file(path: &Path, digest: &Digest) -> io::Result<bool> {
    let (path, digest) = (path.to_owned(), *digest);
    blocking(move || {
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = Digest::from_bytes(hasher.finalize().into());
        if actual == digest {
            return Ok(true);
        }
        discard(&path, &digest, &actual)?;
        Ok(false)
    })
    .await
}

fn discard(path: &Path, expected: &Digest, actual: &Digest) -> io::Result<()> {
    tracing::warn!(path = %path.display(), %expected, %actual, "stored blob does not match its digest; removed, fetching it again");
    std::fs::remove_file(path)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking file task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_pinned_by_digest_and_a_tag_is_refused() {
        let digest = kelp_registry::oci::digest_of(b"manifest");
        let image: ImageRef = format!("127.0.0.1:5000/kelp/hello@{digest}")
            .parse()
            .unwrap();
        assert_eq!(image.digest(), digest);
        assert_eq!(
            image.to_string(),
            format!("127.0.0.1:5000/kelp/hello@{digest}")
        );

        for tagged in ["127.0.0.1:5000/kelp/hello:v1", "registry.example.com/hello"] {
            let err = tagged.parse::<ImageRef>().unwrap_err().to_string();
            assert!(
                err.contains(tagged) && err.contains("pin it by digest"),
                "{err}"
            );
        }
        let err = "hello.wasm".parse::<ImageRef>().unwrap_err().to_string();
        assert!(err.contains("REGISTRY/REPOSITORY"), "{err}");
    }

    #[tokio::test]
    async fn a_damaged_file_in_the_store_is_removed_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let digest = kelp_registry::oci::digest_of(b"the bytes");
        assert!(!verified_file(&path, &digest).await.unwrap());
        std::fs::write(&path, b"the bytes").unwrap();
        assert!(verified_file(&path, &digest).await.unwrap());
        assert_eq!(
            verified(&path, &digest, 100).await.unwrap().unwrap(),
            b"the bytes"
        );
        std::fs::write(&path, b"the bytez").unwrap();
        assert!(!verified_file(&path, &digest).await.unwrap());
        assert!(!path.exists());
        std::fs::write(&path, b"the bytez").unwrap();
        assert_eq!(verified(&path, &digest, 100).await.unwrap(), None);
        assert!(!path.exists());
    }
}
