//! Wasm OCI artifacts: a `.wasm` layer, its config and the manifest naming
//! both, pushed and pulled as one.

use std::path::Path;

use bytes::Bytes;
use kelp_core::Digest;

use super::Client;
use super::error::{ClientError, Result};
use crate::names::{ManifestRef, RepoName, Tag};
use crate::oci::{self, Descriptor, WasmArtifact};

/// What a pull produced.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub manifest_digest: Digest,
    pub layer: Descriptor,
}

impl Client {
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
}
