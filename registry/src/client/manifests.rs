//! Manifests: pushed by tag or digest, pulled with their size bounded and
//! their digest checked.

use futures_util::StreamExt as _;
use kelp_core::Digest;
use reqwest::StatusCode;
use reqwest::header;

use super::Client;
use super::error::{ClientError, Result};
use crate::names::{ManifestRef, RepoName};
use crate::oci::{self, ImageManifest, digest_of};

impl Client {
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
}
