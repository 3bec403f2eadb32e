//! Manifests: `GET`, `HEAD` and `PUT /v2/<name>/manifests/<reference>`, by
//! tag or by digest. A pushed manifest is checked (type, fields, the blobs
//! it names) before it is stored and tagged.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;

use super::{
    DOCKER_CONTENT_DIGEST, OCI_SUBJECT, OCI_TAG, Registry, header_value, io_err, parse_digest,
};
use crate::digest::{Algorithm, BlobDigest};
use crate::error::{ApiError, ErrorCode};
use crate::names::{RepoName, Tag};
use crate::oci::{self, MAX_MANIFEST_SIZE};
use crate::store::{Store, blocking};

/// A manifest named by tag or by digest (of either algorithm).
#[derive(Clone, Debug)]
pub(super) enum ManifestRef {
    Tag(Tag),
    Digest(BlobDigest),
}

impl std::fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestRef::Tag(t) => t.fmt(f),
            ManifestRef::Digest(d) => d.fmt(f),
        }
    }
}

pub(super) fn parse_reference(r: &str) -> Result<ManifestRef, ApiError> {
    if r.contains(':') {
        return parse_digest(r).map(ManifestRef::Digest);
    }
    Tag::parse(r)
        .map(ManifestRef::Tag)
        .map_err(|e| ApiError::bad_request(ErrorCode::ManifestInvalid, e.to_string()))
}

/// A descriptor as the server reads one, with any digest it accepts.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    pub media_type: String,
    pub digest: BlobDigest,
    pub size: u64,
}

/// What the server needs of a stored image manifest or index: the blobs and
/// manifests it names, and the `subject` it refers to.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Parsed {
    pub schema_version: u32,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub subject: Option<Descriptor>,
    #[serde(default)]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Parsed {
    /// The blobs this manifest keeps alive: its config and its layers (a
    /// non-distributable layer is not in the registry, so it is left out),
    /// or the manifests an index lists.
    pub(super) fn references(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(
                self.layers
                    .iter()
                    .flatten()
                    .filter(|l| !non_distributable(&l.media_type)),
            )
            .chain(self.manifests.iter().flatten())
    }
}

/// Layer types the spec lets a manifest name without the blob being pushed:
/// they are fetched from their `urls`, never through the registry.
fn non_distributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

pub(super) async fn get_manifest(
    reg: &Registry,
    repo: &RepoName,
    reference: &str,
    head: bool,
) -> Result<Response, ApiError> {
    let reference = parse_reference(reference)?;
    let store = reg.store().clone();
    let repo2 = repo.clone();
    let wanted = reference.clone();
    let found = blocking(move || {
        if !store.repo_exists(&repo2) {
            return Ok(Err(ErrorCode::NameUnknown));
        }
        let digest = match &wanted {
            ManifestRef::Digest(d) => *d,
            ManifestRef::Tag(t) => match store.resolve_tag(&repo2, t)? {
                Some(d) => d,
                None => return Ok(Err(ErrorCode::ManifestUnknown)),
            },
        };
        let Some(media_type) = store.manifest_type(&repo2, &digest)? else {
            return Ok(Err(ErrorCode::ManifestUnknown));
        };
        match store.read_verified(&digest)? {
            Some(bytes) => Ok(Ok((digest, media_type, bytes))),
            None => Ok(Err(ErrorCode::ManifestUnknown)),
        }
    })
    .await
    .map_err(io_err("reading manifest"))?;
    let (digest, media_type, bytes): (BlobDigest, String, Vec<u8>) = match found {
        Ok(found) => found,
        Err(ErrorCode::NameUnknown) => {
            return Err(ApiError::not_found(
                ErrorCode::NameUnknown,
                format!("repository `{repo}` is not in the registry"),
            ));
        }
        Err(code) => {
            return Err(ApiError::not_found(
                code,
                format!("manifest `{reference}` is not in `{repo}`"),
            ));
        }
    };
    let mut out = HeaderMap::new();
    out.insert(header::CONTENT_TYPE, header_value(&media_type));
    out.insert(DOCKER_CONTENT_DIGEST, header_value(&digest.to_string()));
    out.insert(
        header::CONTENT_LENGTH,
        header_value(&bytes.len().to_string()),
    );
    if head {
        return Ok((StatusCode::OK, out).into_response());
    }
    Ok((StatusCode::OK, out, bytes).into_response())
}

async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                ErrorCode::ManifestInvalid,
                format!("the manifest body ended early: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::SizeInvalid,
                format!("manifests are limited to {limit} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

fn invalid_manifest(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::ManifestInvalid, message)
}

/// Checks a pushed manifest and returns its media type and what it says:
/// the JSON parses, its `mediaType` (if any) agrees with `Content-Type`, it
/// is a type this registry knows, its required fields are there, and every
/// blob an image manifest references is stored with the size the manifest
/// says (but for non-distributable layers, which are never pushed).
fn check_manifest(
    store: &Store,
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<(String, Parsed), ApiError> {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return Err(invalid_manifest(format!("manifest is not JSON: {e}"))),
    };
    let declared = value.get("mediaType").and_then(|v| v.as_str());
    let media_type = match (content_type, declared) {
        (Some(c), Some(d)) if c != d => {
            return Err(invalid_manifest(format!(
                "Content-Type `{c}` does not match the manifest's mediaType `{d}`"
            )));
        }
        (Some(c), _) => c.to_owned(),
        (None, Some(d)) => d.to_owned(),
        (None, None) => {
            return Err(invalid_manifest(
                "the manifest has no mediaType and the request no Content-Type",
            ));
        }
    };
    if !oci::MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(invalid_manifest(format!(
            "manifest type `{media_type}` is not one of {}",
            oci::MANIFEST_TYPES.join(", ")
        )));
    }
    let index = media_type == oci::OCI_INDEX || media_type == oci::DOCKER_MANIFEST_LIST;
    let parsed: Parsed = match serde_json::from_value(value) {
        Ok(p) => p,
        Err(e) => return Err(invalid_manifest(format!("not a valid manifest: {e}"))),
    };
    if parsed.schema_version != 2 {
        return Err(invalid_manifest(format!(
            "schemaVersion is {}, not 2",
            parsed.schema_version
        )));
    }
    if index {
        if parsed.manifests.is_none() {
            return Err(invalid_manifest("not a valid image index: no `manifests`"));
        }
        return Ok((media_type, parsed));
    }
    let (Some(config), Some(layers)) = (&parsed.config, &parsed.layers) else {
        return Err(invalid_manifest(
            "not a valid image manifest: it needs `config` and `layers`",
        ));
    };
    for descriptor in std::iter::once(config).chain(layers) {
        if non_distributable(&descriptor.media_type) {
            continue;
        }
        let size = store
            .blob_size(&descriptor.digest)
            .map_err(io_err("reading blob size"))?;
        match size {
            None => {
                return Err(ApiError::bad_request(
                    ErrorCode::ManifestBlobUnknown,
                    format!(
                        "the manifest references blob {}, which is not in the registry; push it first",
                        descriptor.digest
                    ),
                ));
            }
            Some(size) if size != descriptor.size => {
                return Err(invalid_manifest(format!(
                    "the manifest says blob {} has {} bytes, but it has {size}",
                    descriptor.digest, descriptor.size
                )));
            }
            Some(_) => {}
        }
    }
    Ok((media_type, parsed))
}

pub(super) async fn put_manifest(
    reg: &Registry,
    repo: &RepoName,
    reference: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let reference = parse_reference(reference)?;
    let mut tags: Vec<Tag> = Vec::new();
    match &reference {
        ManifestRef::Tag(t) => tags.push(t.clone()),
        ManifestRef::Digest(_) => {
            for (key, value) in query {
                if key == "tag" {
                    tags.push(Tag::parse(value).map_err(|e| {
                        ApiError::bad_request(ErrorCode::ManifestInvalid, e.to_string())
                    })?);
                }
            }
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
        .filter(|v| !v.is_empty());
    let bytes = read_limited(body, MAX_MANIFEST_SIZE).await?;
    let algorithm = match &reference {
        ManifestRef::Digest(d) => d.algorithm(),
        ManifestRef::Tag(_) => Algorithm::Sha256,
    };
    let digest = BlobDigest::of(algorithm, &bytes);
    if let ManifestRef::Digest(wanted) = &reference
        && *wanted != digest
    {
        return Err(ApiError::bad_request(
            ErrorCode::DigestInvalid,
            format!("the manifest has digest {digest}, not {wanted}"),
        ));
    }
    let store = reg.store().clone();
    let repo2 = repo.clone();
    let tags2 = tags.clone();
    // Checked and linked under the read side of the GC lock: see `gc`.
    let _wanted = reg.inner.gc_lock.read().await;
    let subject = blocking(move || {
        let (media_type, parsed) = match check_manifest(&store, content_type.as_deref(), &bytes) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        store.put_blob(algorithm, &bytes)?;
        store.link_manifest(&repo2, &digest, &media_type)?;
        for tag in &tags2 {
            store.set_tag(&repo2, tag, &digest)?;
        }
        Ok(Ok(parsed.subject.map(|s| s.digest)))
    })
    .await
    .map_err(io_err("storing manifest"))??;
    tracing::info!(repo = %repo, %digest, tags = tags.len(), "manifest pushed");
    let mut out = HeaderMap::new();
    out.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/manifests/{digest}")),
    );
    out.insert(DOCKER_CONTENT_DIGEST, header_value(&digest.to_string()));
    if matches!(reference, ManifestRef::Digest(_)) {
        for tag in &tags {
            out.append(OCI_TAG, header_value(tag.as_str()));
        }
    }
    // Tells the client this registry indexes referrers, so it need not
    // maintain the fallback tag itself.
    if let Some(subject) = subject {
        out.insert(OCI_SUBJECT, header_value(&subject.to_string()));
    }
    out.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok((StatusCode::CREATED, out).into_response())
}

/// `DELETE /v2/<name>/manifests/<reference>`: by tag, the tag goes; by
/// digest, the manifest leaves the repository with every tag on it. Its
/// blobs go at the next garbage collection, if nothing else uses them. A
/// manifest the registry retains (a release's image) is not deleted.
pub(super) async fn delete_manifest(
    reg: &Registry,
    repo: &RepoName,
    reference: &str,
) -> Result<Response, ApiError> {
    let reference = parse_reference(reference)?;
    if let ManifestRef::Digest(digest) = &reference {
        let retained = reg
            .inner
            .retained
            .manifests()
            .await
            .map_err(io_err("reading retained manifests"))?;
        if retained.iter().any(|d| BlobDigest::from(*d) == *digest) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Denied,
                format!(
                    "manifest {digest} is an image of a release; it is kept while the release exists"
                ),
            ));
        }
    }
    let store = reg.store().clone();
    let repo2 = repo.clone();
    let wanted = reference.clone();
    let removed = blocking(move || match &wanted {
        ManifestRef::Tag(tag) => store.delete_tag(&repo2, tag),
        ManifestRef::Digest(digest) => store.unlink_manifest(&repo2, digest),
    })
    .await
    .map_err(io_err("deleting manifest"))?;
    if !removed {
        return Err(ApiError::not_found(
            ErrorCode::ManifestUnknown,
            format!("manifest `{reference}` is not in `{repo}`"),
        ));
    }
    tracing::info!(repo = %repo, %reference, "manifest deleted");
    Ok(StatusCode::ACCEPTED.into_response())
}
