//! OCI manifests and descriptors, and the Wasm artifact Kelp stores.

use std::collections::BTreeMap;

use kelp_core::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Config media type of a Wasm OCI artifact (CNCF TAG Runtime's Wasm OCI
/// artifact layout, as wasm-pkg-tools and wkg write it).
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Media type of the one layer of a Wasm OCI artifact: the `.wasm` itself.
pub const WASM_LAYER: &str = "application/wasm";

/// Largest blob the registry accepts. A Wasm component is a few hundred KiB
/// to a few tens of MiB; this leaves room for large ones while bounding the
/// disk one push can fill.
pub const MAX_BLOB_SIZE: u64 = 512 << 20;

/// Largest manifest the registry accepts and the client reads, held in
/// memory while it is checked. The spec asks registries to take at least
/// 4 MB; a Wasm manifest is under 1 KiB.
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// The manifest types the registry stores, in the order it prefers them.
pub const MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// The sha256 digest of some bytes.
pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_bytes(Sha256::digest(bytes).into())
}

/// A content descriptor: what a manifest says about one blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest (also the shape of Docker's schema 2 manifest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Why a manifest is not a Wasm artifact.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotWasm {
    #[error("it is not a Wasm artifact (config type `{0}`)")]
    Config(String),
    #[error("it has {0} `{WASM_LAYER}` layers; a Wasm artifact has exactly one")]
    Layers(usize),
}

impl ImageManifest {
    /// The one `.wasm` layer of a Wasm artifact.
    pub fn wasm_layer(&self) -> Result<&Descriptor, NotWasm> {
        let is_wasm = self.artifact_type.as_deref() == Some(WASM_CONFIG)
            || self.config.media_type == WASM_CONFIG;
        if !is_wasm {
            return Err(NotWasm::Config(self.config.media_type.clone()));
        }
        let mut layers = self.layers.iter().filter(|l| l.media_type == WASM_LAYER);
        match (layers.next(), layers.count()) {
            (Some(layer), 0) => Ok(layer),
            (first, rest) => Err(NotWasm::Layers(usize::from(first.is_some()) + rest)),
        }
    }
}

/// An OCI image index (also the shape of Docker's manifest list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// The config blob of a Wasm artifact. Kelp writes the two fields every
/// consumer reads; the layer digest lets a reader cross-check the layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmConfig {
    pub architecture: String,
    pub os: String,
    #[serde(rename = "layerDigests", default)]
    pub layer_digests: Vec<Digest>,
}

/// The config blob, layer and manifest of a Wasm OCI artifact, serialized
/// once so the bytes pushed are the bytes digested.
pub struct WasmArtifact {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub layer: Descriptor,
}

impl WasmArtifact {
    pub fn new(wasm: &[u8]) -> Result<Self, serde_json::Error> {
        WasmArtifact::of_layer(digest_of(wasm), wasm.len() as u64)
    }

    /// The artifact of a `.wasm` known by its digest and size, for a file
    /// pushed from disk without being held in memory.
    pub fn of_layer(digest: Digest, size: u64) -> Result<Self, serde_json::Error> {
        let layer = Descriptor {
            media_type: WASM_LAYER.to_owned(),
            digest,
            size,
            annotations: BTreeMap::new(),
        };
        let config = serde_json::to_vec(&WasmConfig {
            architecture: "wasm".to_owned(),
            os: "wasip2".to_owned(),
            layer_digests: vec![layer.digest],
        })?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_owned()),
            artifact_type: Some(WASM_CONFIG.to_owned()),
            config: Descriptor {
                media_type: WASM_CONFIG.to_owned(),
                digest: digest_of(&config),
                size: config.len() as u64,
                annotations: BTreeMap::new(),
            },
            layers: vec![layer.clone()],
            subject: None,
            annotations: BTreeMap::new(),
        };
        let manifest = serde_json::to_vec(&manifest)?;
        Ok(WasmArtifact {
            manifest_digest: digest_of(&manifest),
            config,
            manifest,
            layer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wasm_artifact_has_one_wasm_layer_and_the_wasm_config() {
        let a = WasmArtifact::new(b"\0asm\x01\0\0\0").unwrap();
        let m: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m["mediaType"], OCI_MANIFEST);
        assert_eq!(m["artifactType"], WASM_CONFIG);
        assert_eq!(m["config"]["mediaType"], WASM_CONFIG);
        assert_eq!(m["config"]["digest"], digest_of(&a.config).to_string());
        assert_eq!(m["layers"][0]["mediaType"], WASM_LAYER);
        assert_eq!(m["layers"][0]["size"], 8);
        assert_eq!(a.manifest_digest, digest_of(&a.manifest));
    }

    #[test]
    fn only_a_manifest_with_the_wasm_config_and_one_wasm_layer_is_a_wasm_artifact() {
        let a = WasmArtifact::new(b"\0asm\x01\0\0\0").unwrap();
        let mut m: ImageManifest = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m.wasm_layer().unwrap(), &a.layer);

        m.layers.push(a.layer.clone());
        assert_eq!(m.wasm_layer().unwrap_err(), NotWasm::Layers(2));
        m.layers.clear();
        assert_eq!(m.wasm_layer().unwrap_err(), NotWasm::Layers(0));

        m.layers.push(a.layer.clone());
        m.artifact_type = None;
        m.config.media_type = "application/vnd.oci.image.config.v1+json".into();
        let err = m.wasm_layer().unwrap_err().to_string();
        assert!(
            err.contains("application/vnd.oci.image.config.v1+json"),
            "{err}"
        );
    }
}
