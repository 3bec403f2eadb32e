//! Blobs: pushed streamed, from memory or a file, unless the registry has
//! them; pulled to `<dest>.partial`, resumed with a `Range`, and moved into
//! place only once their digest matches.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt as _;
use kelp_core::Digest;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::error::{ClientError, Result};
use super::progress::Reporting;
use super::{CHUNK, Client, FILE_BUFFER};
use crate::names::RepoName;
use crate::oci::{Descriptor, digest_of};

impl Client {
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

pub(super) fn partial_path(dest: &Path) -> PathBuf {
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
