//! Referrers (OCI 1.1): `GET /v2/<name>/referrers/<digest>` lists the
//! manifests of a repository whose `subject` is `<digest>` (signatures,
//! SBOMs, attestations attached to an artifact), as an image index,
//! filtered by `?artifactType=` when asked.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::manifests::Parsed;
use super::{Registry, io_err, parse_digest, query_value};
use crate::digest::BlobDigest;
use crate::error::ApiError;
use crate::names::RepoName;
use crate::oci;
use crate::store::{Store, blocking};

const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Referrer {
    media_type: String,
    digest: BlobDigest,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Referrer>,
}

/// The manifests of `repo` that name `subject`, in digest order.
fn referrers(
    store: &Store,
    repo: &RepoName,
    subject: &BlobDigest,
    artifact_type: Option<&str>,
) -> std::io::Result<Vec<Referrer>> {
    let mut out = Vec::new();
    for (digest, media_type) in store.manifests(repo)? {
        let Some(bytes) = store.read_verified(&digest)? else {
            continue;
        };
        let Ok(doc) = serde_json::from_slice::<Parsed>(&bytes) else {
            continue;
        };
        if doc.subject.as_ref().map(|s| s.digest) != Some(*subject) {
            continue;
        }
        // The image spec: a manifest without `artifactType` is typed by
        // its config.
        let kind = doc
            .artifact_type
            .clone()
            .or_else(|| doc.config.as_ref().map(|c| c.media_type.clone()));
        if artifact_type.is_some() && kind.as_deref() != artifact_type {
            continue;
        }
        out.push(Referrer {
            media_type,
            digest,
            size: bytes.len() as u64,
            artifact_type: kind,
            annotations: doc.annotations,
        });
    }
    out.sort_by_key(|r| r.digest.to_string());
    Ok(out)
}

pub(super) async fn list_referrers(
    reg: &Registry,
    repo: &RepoName,
    digest: &str,
    query: &[(String, String)],
) -> Result<Response, ApiError> {
    let subject = parse_digest(digest)?;
    let artifact_type = query_value(query, "artifactType").map(str::to_owned);
    let store = reg.store().clone();
    let repo = repo.clone();
    let filter = artifact_type.clone();
    let manifests = blocking(move || referrers(&store, &repo, &subject, filter.as_deref()))
        .await
        .map_err(io_err("listing referrers"))?;
    let body = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: oci::OCI_INDEX,
        manifests,
    })
    .map_err(|e| ApiError::internal("encoding referrers", std::io::Error::other(e)))?;
    let mut out = HeaderMap::new();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(oci::OCI_INDEX),
    );
    if artifact_type.is_some() {
        out.insert(
            OCI_FILTERS_APPLIED,
            HeaderValue::from_static("artifactType"),
        );
    }
    // A repository or subject never pushed has no referrers: an empty
    // index, never 404, as the spec asks of a registry that serves them.
    Ok((StatusCode::OK, out, body).into_response())
}
