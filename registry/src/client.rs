//! Pushing and pulling Wasm OCI artifacts, to and from any OCI registry.
//!
//! A pull is written to `<dest>.partial` while its sha256 is computed; an
//! interrupted pull resumes from what that file holds with a `Range`
//! request, never reads past the size the manifest declares, and the file is
//! renamed to `<dest>` only once the digest matches.
//!
//! A push streams its blob, from memory or straight from a file, so pushing
//! a large file does not need its size in memory. A [`Progress`] given to
//! [`Client::with_progress`] hears how each blob transfer goes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use kelp_core::Digest;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::error::ErrorBody;
use crate::names::{ManifestRef, NameError, RepoName, Tag};
use crate::oci::{self, Descriptor, ImageManifest, WasmArtifact, digest_of};

/// How long to wait for a connection to a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest silence on a connection before the transfer is given up (and can
/// be resumed): long enough for a slow cellular link, short enough that a
/// dead one is noticed.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "`{0}` is not REGISTRY/REPOSITORY[:TAG] or REGISTRY/REPOSITORY@sha256:… (e.g. 127.0.0.1:8080/hello:v1)"
    )]
    Reference(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: the registry answered {status}{message}")]
    Status {
        what: String,
        status: StatusCode,
        message: String,
    },
    #[error("{what}: the content has digest {actual}, not {expected}")]
    Digest {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: the registry sent more than the {size} bytes the manifest declares")]
    TooLong { what: String, size: u64 },
    #[error("{what}: the registry sent {got} of the {size} bytes the manifest declares")]
    TooShort { what: String, got: u64, size: u64 },
    #[error("{0}")]
    Manifest(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = ClientError> = std::result::Result<T, E>;

/// `REGISTRY/REPOSITORY:TAG` or `REGISTRY/REPOSITORY@sha256:…`. The registry
/// is `host[:port]`, optionally with `http://` or `https://`; without a
/// scheme, loopback hosts are spoken to over plain HTTP and others over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `http(s)://host[:port]`
    pub registry: String,
    pub repo: RepoName,
    pub reference: ManifestRef,
}

impl FromStr for Reference {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || ClientError::Reference(s.to_owned());
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (Some(scheme), rest),
            Some(_) => return Err(bad()),
            None => (None, s),
        };
        let (host, path) = rest.split_once('/').ok_or_else(bad)?;
        if host.is_empty() || path.is_empty() {
            return Err(bad());
        }
        let scheme = scheme.unwrap_or_else(|| {
            let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
            if bare == "localhost" || bare.starts_with("127.") || bare == "[::1]" {
                "http"
            } else {
                "https"
            }
        });
        let (repo, reference) = if let Some((repo, digest)) = path.split_once('@') {
            let digest = digest.parse().map_err(|_| bad())?;
            (repo, ManifestRef::Digest(digest))
        } else {
            match path.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => {
                    (repo, ManifestRef::Tag(Tag::parse(tag)?))
                }
                _ => (path, ManifestRef::Tag(Tag::parse("latest")?)),
            }
        };
        Ok(Reference {
            registry: format!("{scheme}://{host}"),
            repo: RepoName::parse(repo)?,
            reference,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self
            .registry
            .split_once("://")
            .map_or(self.registry.as_str(), |(_, h)| h);
        match &self.reference {
            ManifestRef::Tag(t) => write!(f, "{host}/{}:{t}", self.repo),
            ManifestRef::Digest(d) => write!(f, "{host}/{}@{d}", self.repo),
        }
    }
}

/// Told how each blob transfer goes, to draw a progress bar.
pub trait Progress: Send + Sync {
    /// A transfer of blob `digest`, `total` bytes, starts with `done` of
    /// them already in place (a resumed pull).
    fn start(&self, digest: &Digest, total: u64, done: u64);
    /// `bytes` more moved.
    fn advance(&self, bytes: u64);
    /// The transfer ended, complete or not.
    fn finish(&self);
}

/// Ends a transfer's progress however the transfer ends.
struct Reporting<'a>(Option<&'a dyn Progress>);

impl<'a> Reporting<'a> {
    fn start(progress: Option<&'a dyn Progress>, digest: &Digest, total: u64, done: u64) -> Self {
        if let Some(p) = progress {
            p.start(digest, total, done);
        }
        Reporting(progress)
    }

    fn advance(&self, bytes: u64) {
        if let Some(p) = self.0 {
            p.advance(bytes);
        }
    }
}

impl Drop for Reporting<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            p.finish();
        }
    }
}

/// Size of the pieces a blob is streamed in.
const CHUNK: usize = 64 << 10;

/// Bytes read or written per step on a local file: few, large steps, since
/// each tokio file operation is a trip to the blocking pool.
const FILE_BUFFER: usize = 256 << 10;

/// What a pull produced.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub manifest_digest: Digest,
    pub layer: Descriptor,
}

/// A client for one registry.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    progress: Option<Arc<dyn Progress>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the registry at `base` (`http(s)://host[:port]`), sending
    /// `token` as a bearer token if given.
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("kelp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Http {
                what: "cannot build an HTTP client".to_owned(),
                source,
            })?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
            progress: None,
        })
    }

    /// Reports every blob transfer to `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        req.send().await.map_err(|source| ClientError::Http {
            what: what.to_owned(),
            source,
        })
    }

    /// Turns a non-success answer into an error carrying the registry's own
    /// words.
    async fn expect(
        &self,
        what: &str,
        res: reqwest::Response,
        ok: &[StatusCode],
    ) -> Result<reqwest::Response> {
        if ok.contains(&res.status()) {
            return Ok(res);
        }
        let status = res.status();
        let body = res.bytes().await.unwrap_or_default();
        let message = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => b
                .errors
                .iter()
                .map(|e| {
                    let code = serde_json::to_value(e.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    format!(": {code}: {}", e.message)
                })
                .collect(),
            Err(_) => String::new(),
        };
        Err(ClientError::Status {
            what: what.to_owned(),
            status,
            message,
        })
    }

    /// Pushes `wasm` as a Wasm OCI artifact tagged `tag`; returns the
    /// manifest digest.
    pub async fn push_wasm(&self, repo: &RepoName, tag: &Tag, wasm: Bytes) -> Result<Digest> {
        let artifact = WasmArtifact::new(&wasm)
            .map_err(|e| ClientError::Manifest(format!("cannot encode the manifest: {e}")))?;
        self.push_blob(repo, wasm).await?;
        self.push_artifact(repo, tag, artifact).await
    }

    /// Like [`Client::push_wasm`], streaming the `.wasm` from a file; also
    /// returns the size of the `.wasm` it pushed.
    pub async fn push_wasm_file(
        &self,
        repo: &RepoName,
        tag: &Tag,
        path: &Path,
    ) -> Result<(Digest, u64)> {
        let (digest, size) = self.push_blob_file(repo, path).await?;
        let artifact = WasmArtifact::of_layer(digest, size)
            .map_err(|e| ClientError::Manifest(format!("cannot encode the manifest: {e}")))?;
        let manifest_digest = self.push_artifact(repo, tag, artifact).await?;
        Ok((manifest_digest, size))
    }

    /// The config and manifest of an artifact whose layer is pushed.
    async fn push_artifact(
        &self,
        repo: &RepoName,
        tag: &Tag,
        artifact: WasmArtifact,
    ) -> Result<Digest> {
        self.push_blob(repo, Bytes::from(artifact.config)).await?;
        self.push_manifest(
            repo,
            &ManifestRef::Tag(tag.clone()),
            oci::OCI_MANIFEST,
            &artifact.manifest,
        )
        .await
    }

    /// Uploads a blob unless the registry has it already. `Bytes`, so the
    /// request body shares the caller's buffer instead of copying it.
    pub async fn push_blob(&self, repo: &RepoName, bytes: Bytes) -> Result<Digest> {
        let digest = digest_of(&bytes);
        let size = bytes.len() as u64;
        let pieces = (0..bytes.len())
            .step_by(CHUNK)
            .map(move |at| Ok::<_, std::io::Error>(bytes.slice(at..bytes.len().min(at + CHUNK))));
        self.upload(repo, digest, size, futures_util::stream::iter(pieces))
            .await?;
        Ok(digest)
    }

    /// Uploads a file as a blob unless the registry has it already, reading
    /// it twice (once for its digest, once to send it) rather than holding
    /// it in memory. Returns its digest and size.
    pub async fn push_blob_file(&self, repo: &RepoName, path: &Path) -> Result<(Digest, u64)> {
        let (hasher, size) = hash_file(path).await?;
        let digest = Digest::from_bytes(hasher.finalize().into());
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ClientError::Io {
                path: path.to_owned(),
                source,
            })?;
        // The announced length bounds what is sent, should the file grow;
        // a file that changed is caught by the registry's digest check.
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(size), CHUNK);
        self.upload(repo, digest, size, stream).await?;
        Ok((digest, size))
    }

    /// POST, then PUT with the digest: the upload every registry supports.
    async fn upload<S>(&self, repo: &RepoName, digest: Digest, size: u64, body: S) -> Result<()>
    where
        S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let what = format!("pushing blob {digest} to {repo}");
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let res = self
            .send(&what, self.request(reqwest::Method::HEAD, &url))
            .await?;
        if res.status() == StatusCode::OK {
            return Ok(());
        }
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let res = self
            .send(&what, self.request(reqwest::Method::POST, &url))
            .await?;
        let res = self.expect(&what, res, &[StatusCode::ACCEPTED]).await?;
        let location = res
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Status {
                what: what.clone(),
                status: res.status(),
                message: ": no Location for the upload".to_owned(),
            })?;
        let mut url = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={digest}"));
        let reporting = Reporting::start(self.progress.as_deref(), &digest, size, 0);
        // The body stream outlives this call's borrows, so it holds its own
        // handle on the progress.
        let progress = self.progress.clone();
        let counted = body.map(move |piece| {
            if let (Ok(bytes), Some(p)) = (&piece, &progress) {
                p.advance(bytes.len() as u64);
            }
            piece
        });
        let req = self
            .request(reqwest::Method::PUT, &url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(counted));
        let sent = self.send(&what, req).await;
        drop(reporting);
        self.expect(&what, sent?, &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// Pushes a manifest; returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &RepoName,
        reference: &ManifestRef,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let digest = digest_of(bytes);
        let what = format!("pushing manifest {repo}:{reference}");
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let req = self
            .request(reqwest::Method::PUT, &url)
            .header(header::CONTENT_TYPE, media_type)
            .body(bytes.to_vec());
        let res = self.send(&what, req).await?;
        self.expect(&what, res, &[StatusCode::CREATED]).await?;
        Ok(digest)
    }

    /// Fetches and checks an image manifest: its size is bounded, its digest
    /// matches the one asked for (or the one the registry names).
    pub async fn pull_manifest(
        &self,
        repo: &RepoName,
        reference: &ManifestRef,
    ) -> Result<(ImageManifest, Digest)> {
        let (bytes, digest) = self.pull_manifest_bytes(repo, reference).await?;
        let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Manifest(format!(
                "manifest {repo}@{digest} is not an image manifest: {e}"
            ))
        })?;
        Ok((manifest, digest))
    }

    /// Fetches a manifest's bytes, as [`Client::pull_manifest`] checks them,
    /// for a caller that keeps them (a device's content-addressed store).
    pub async fn pull_manifest_bytes(
        &self,
        repo: &RepoName,
        reference: &ManifestRef,
    ) -> Result<(Vec<u8>, Digest)> {
        let what = format!("pulling manifest {repo}:{reference}");
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let req = self
            .request(reqwest::Method::GET, &url)
            .header(header::ACCEPT, oci::OCI_MANIFEST);
        let res = self.send(&what, req).await?;
        let res = self.expect(&what, res, &[StatusCode::OK]).await?;
        let named: Option<Digest> = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut bytes = Vec::new();
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| ClientError::Http {
                what: what.clone(),
                source,
            })?;
            if bytes.len() + chunk.len() > oci::MAX_MANIFEST_SIZE {
                return Err(ClientError::TooLong {
                    what,
                    size: oci::MAX_MANIFEST_SIZE as u64,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let actual = digest_of(&bytes);
        let expected = match reference {
            ManifestRef::Digest(d) => Some(*d),
            ManifestRef::Tag(_) => named,
        };
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(ClientError::Digest {
                what,
                expected,
                actual,
            });
        }
        Ok((bytes, actual))
    }

    /// Pulls the Wasm artifact at `reference` into `dest`.
    pub async fn pull_wasm(
        &self,
        repo: &RepoName,
        reference: &ManifestRef,
        dest: &Path,
    ) -> Result<Pulled> {
        let (manifest, manifest_digest) = self.pull_manifest(repo, reference).await?;
        let layer = manifest
            .wasm_layer()
            .map_err(|e| ClientError::Manifest(format!("{repo}@{manifest_digest}: {e}")))?;
        self.pull_blob(repo, layer, dest).await?;
        Ok(Pulled {
            manifest_digest,
            layer: layer.clone(),
        })
    }

    /// Downloads the blob `desc` names into `dest`, resuming from
    /// `<dest>.partial` if an earlier pull left one.
    pub async fn pull_blob(&self, repo: &RepoName, desc: &Descriptor, dest: &Path) -> Result<()> {
        let what = format!("pulling blob {} from {repo}", desc.digest);
        let partial = partial_path(dest);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ClientError::Io { path, source }
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&partial)
            .await
            .map_err(io(&partial))?;
        let mut have = file.metadata().await.map_err(io(&partial))?.len();
        let mut hasher = Sha256::new();
        if have > desc.size {
            file.set_len(0).await.map_err(io(&partial))?;
            have = 0;
        }
        if have > 0 {
            // Hash what is already there; the new bytes continue the hash.
            (hasher, _) = hash_file(&partial).await?;
        }
        if have < desc.size {
            let url = format!("{}/v2/{repo}/blobs/{}", self.base, desc.digest);
            let mut req = self.request(reqwest::Method::GET, &url);
            if have > 0 {
                req = req.header(header::RANGE, format!("bytes={have}-"));
            }
            let res = self.send(&what, req).await?;
            let res = self
                .expect(&what, res, &[StatusCode::OK, StatusCode::PARTIAL_CONTENT])
                .await?;
            if res.status() == StatusCode::OK && have > 0 {
                // The registry ignored the range: start over.
                file.set_len(0).await.map_err(io(&partial))?;
                have = 0;
                hasher = Sha256::new();
            } else if res.status() == StatusCode::PARTIAL_CONTENT
                && !range_starts_at(res.headers(), have)
            {
                return Err(ClientError::Status {
                    what,
                    status: res.status(),
                    message: format!(": the reply does not start at byte {have}"),
                });
            }
            let progress =
                Reporting::start(self.progress.as_deref(), &desc.digest, desc.size, have);
            // Written in large pieces: each write to a tokio file is a trip
            // to the blocking pool, and the network hands over a few KiB at
            // a time. Whatever is buffered is a prefix of the blob, so
            // losing it on an error only means resuming from earlier.
            let mut out = tokio::io::BufWriter::with_capacity(FILE_BUFFER, &mut file);
            let mut stream = res.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(source) => {
                        // Keep what arrived, for the resume.
                        let _ = out.flush().await;
                        return Err(ClientError::Http { what, source });
                    }
                };
                progress.advance(chunk.len() as u64);
                if have + chunk.len() as u64 > desc.size {
                    // Keep what came before; the rest is not what the
                    // manifest promised.
                    let _ = out.flush().await;
                    return Err(ClientError::TooLong {
                        what,
                        size: desc.size,
                    });
                }
                out.write_all(&chunk).await.map_err(io(&partial))?;
                hasher.update(&chunk);
                have += chunk.len() as u64;
            }
            out.flush().await.map_err(io(&partial))?;
            drop(out);
            if have < desc.size {
                return Err(ClientError::TooShort {
                    what,
                    got: have,
                    size: desc.size,
                });
            }
        }
        let actual = Digest::from_bytes(hasher.finalize().into());
        if actual != desc.digest {
            drop(file);
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(ClientError::Digest {
                what,
                expected: desc.digest,
                actual,
            });
        }
        file.sync_all().await.map_err(io(&partial))?;
        drop(file);
        tokio::fs::rename(&partial, dest).await.map_err(io(dest))?;
        Ok(())
    }
}

/// The sha256 of a file so far (a hasher that more bytes can continue) and
/// its size, read in one trip to the blocking pool rather than one a read.
async fn hash_file(path: &Path) -> Result<(Sha256, u64)> {
    let owned = path.to_owned();
    let hashed = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; FILE_BUFFER];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok((hasher, size));
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
    })
    .await
    .unwrap_or_else(|e| {
        Err(std::io::Error::other(format!(
            "hashing did not finish: {e}"
        )))
    });
    hashed.map_err(|source| ClientError::Io {
        path: path.to_owned(),
        source,
    })
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

fn range_starts_at(headers: &HeaderMap, start: u64) -> bool {
    headers
        .get(header::CONTENT_RANGE)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split_once('-'))
        .is_some_and(|(first, _)| first.parse() == Ok(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_registry_a_repository_and_a_tag_or_digest() {
        let r: Reference = "127.0.0.1:5000/kelp/hello:v1".parse().unwrap();
        assert_eq!(r.registry, "http://127.0.0.1:5000");
        assert_eq!(r.repo.as_str(), "kelp/hello");
        assert_eq!(r.reference, ManifestRef::Tag(Tag::parse("v1").unwrap()));
        assert_eq!(r.to_string(), "127.0.0.1:5000/kelp/hello:v1");

        let d = digest_of(b"x");
        let r: Reference = format!("registry.example.com/hello@{d}").parse().unwrap();
        assert_eq!(r.registry, "https://registry.example.com");
        assert_eq!(r.reference, ManifestRef::Digest(d));

        let r: Reference = "http://example.com:80/hello".parse().unwrap();
        assert_eq!(r.registry, "http://example.com:80");
        assert_eq!(r.reference.to_string(), "latest");

        for bad in ["hello", "host/", "ftp://h/x", "h/UPPER:v1", "h/x@sha256:12"] {
            assert!(bad.parse::<Reference>().is_err(), "{bad}");
        }
    }
}

/// The client against Kelp's own server on a real socket.
#[cfg(test)]
#[cfg(feature = "server")]
mod against_the_server {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{Auth, PullPolicy, Registry, Store, TokenHash, router};

    /// A registry on a real socket, recording the Range headers it receives.
    async fn serve() -> (String, Arc<Mutex<Vec<String>>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let auth = Auth {
            pull: PullPolicy::Token,
            tokens: std::sync::Arc::new(vec![TokenHash::of("t")]),
        };
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let seen = ranges.clone();
        let app = router(Registry::new(store, auth)).layer(axum::middleware::map_request(
            move |req: axum::http::Request<axum::body::Body>| {
                let seen = seen.clone();
                async move {
                    if let Some(r) = req.headers().get("range") {
                        seen.lock().unwrap().push(r.to_str().unwrap().to_owned());
                    }
                    req
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), ranges, dir)
    }

    fn module() -> Vec<u8> {
        (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn pushes_then_pulls_by_tag_and_digest() {
        let (base, _, dir) = serve().await;
        let client = Client::new(&base, Some("t".into())).unwrap();
        let repo = RepoName::parse("kelp/hello").unwrap();
        let wasm = module();
        let digest = client
            .push_wasm(&repo, &Tag::parse("v1").unwrap(), wasm.clone().into())
            .await
            .unwrap();
        for reference in [
            ManifestRef::Tag(Tag::parse("v1").unwrap()),
            ManifestRef::Digest(digest),
        ] {
            let dest = dir.path().join("out.wasm");
            let pulled = client.pull_wasm(&repo, &reference, &dest).await.unwrap();
            assert_eq!(pulled.manifest_digest, digest);
            assert_eq!(std::fs::read(&dest).unwrap(), wasm);
            assert!(!partial_path(&dest).exists());
        }
        let anonymous = Client::new(&base, None).unwrap();
        let err = anonymous
            .pull_wasm(&repo, &ManifestRef::Digest(digest), &dir.path().join("x"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("UNAUTHORIZED"), "{err}");
    }

    #[tokio::test]
    async fn an_interrupted_pull_resumes_with_a_range_and_checks_the_digest() {
        let (base, ranges, dir) = serve().await;
        let client = Client::new(&base, Some("t".into())).unwrap();
        let repo = RepoName::parse("x").unwrap();
        let wasm = module();
        client
            .push_wasm(&repo, &Tag::parse("v1").unwrap(), wasm.clone().into())
            .await
            .unwrap();
        let desc = WasmArtifact::new(&wasm).unwrap().layer;
        let dest = dir.path().join("m.wasm");
        std::fs::write(partial_path(&dest), &wasm[..123_456]).unwrap();
        client.pull_blob(&repo, &desc, &dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), wasm);
        assert_eq!(*ranges.lock().unwrap(), vec!["bytes=123456-".to_owned()]);

        // A partial file with wrong bytes: the digest check catches it and
        // the next pull starts clean.
        let dest = dir.path().join("n.wasm");
        let mut wrong = wasm[..1000].to_vec();
        wrong[10] ^= 1;
        std::fs::write(partial_path(&dest), &wrong).unwrap();
        let err = client.pull_blob(&repo, &desc, &dest).await.unwrap_err();
        assert!(matches!(err, ClientError::Digest { .. }), "{err}");
        assert!(!dest.exists() && !partial_path(&dest).exists());
        client.pull_blob(&repo, &desc, &dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), wasm);
    }

    #[tokio::test]
    async fn a_blob_longer_than_declared_is_refused() {
        let (base, _, dir) = serve().await;
        let client = Client::new(&base, Some("t".into())).unwrap();
        let repo = RepoName::parse("x").unwrap();
        let wasm = module();
        client.push_blob(&repo, wasm.clone().into()).await.unwrap();
        let desc = Descriptor {
            size: 1000,
            ..WasmArtifact::new(&wasm).unwrap().layer
        };
        let dest = dir.path().join("m.wasm");
        let err = client.pull_blob(&repo, &desc, &dest).await.unwrap_err();
        assert!(
            matches!(err, ClientError::TooLong { size: 1000, .. }),
            "{err}"
        );
        assert!(!dest.exists());
        assert!(std::fs::metadata(partial_path(&dest)).unwrap().len() <= 1000);
    }

    /// Records what a client reports.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Progress for Recorder {
        fn start(&self, digest: &Digest, total: u64, done: u64) {
            let short = &digest.hex()[..8];
            self.0
                .lock()
                .unwrap()
                .push(format!("start {short} {total} {done}"));
        }
        fn advance(&self, bytes: u64) {
            let mut events = self.0.lock().unwrap();
            match events.last_mut() {
                Some(last) if last.starts_with("moved ") => {
                    let n: u64 = last["moved ".len()..].parse().unwrap();
                    *last = format!("moved {}", n + bytes);
                }
                _ => events.push(format!("moved {bytes}")),
            }
        }
        fn finish(&self) {
            self.0.lock().unwrap().push("finish".to_owned());
        }
    }

    #[tokio::test]
    async fn a_file_is_pushed_from_disk_and_every_transfer_reports_progress() {
        let (base, ranges, dir) = serve().await;
        let recorder = Arc::new(Recorder::default());
        let client = Client::new(&base, Some("t".into()))
            .unwrap()
            .with_progress(recorder.clone());
        let repo = RepoName::parse("kelp/big").unwrap();
        let wasm: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let file = dir.path().join("big.wasm");
        std::fs::write(&file, &wasm).unwrap();
        let (manifest_digest, size) = client
            .push_wasm_file(&repo, &Tag::parse("v1").unwrap(), &file)
            .await
            .unwrap();
        assert_eq!(size, wasm.len() as u64);
        // The same manifest as pushing the bytes from memory.
        assert_eq!(
            manifest_digest,
            WasmArtifact::new(&wasm).unwrap().manifest_digest
        );
        let layer = &digest_of(&wasm).hex()[..8];
        let events = std::mem::take(&mut *recorder.0.lock().unwrap());
        assert_eq!(
            events[..3],
            [
                format!("start {layer} 1000000 0"),
                "moved 1000000".to_owned(),
                "finish".to_owned(),
            ]
        );

        // A resumed pull starts from what the partial file holds.
        let desc = WasmArtifact::new(&wasm).unwrap().layer;
        let dest = dir.path().join("pulled.wasm");
        std::fs::write(partial_path(&dest), &wasm[..400_000]).unwrap();
        client.pull_blob(&repo, &desc, &dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), wasm);
        assert_eq!(*ranges.lock().unwrap(), ["bytes=400000-"]);
        let events = std::mem::take(&mut *recorder.0.lock().unwrap());
        assert_eq!(
            events,
            [
                format!("start {layer} 1000000 400000"),
                "moved 600000".to_owned(),
                "finish".to_owned(),
            ]
        );
    }
}
