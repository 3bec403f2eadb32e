//! Blobs: `GET` and `HEAD /v2/<name>/blobs/<digest>`, verified before the
//! first byte goes out, with single `Range`s for resumed pulls.

use std::io::SeekFrom;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncSeekExt as _;

use super::{DOCKER_CONTENT_DIGEST, Registry, SERVE_CHUNK, header_value, io_err, parse_digest};
use crate::error::{ApiError, ErrorCode};
use crate::store::blocking;

pub(super) async fn get_blob(
    reg: &Registry,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    let digest = parse_digest(digest)?;
    let unknown = || {
        ApiError::not_found(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is not in the registry"),
        )
    };
    let mut out = HeaderMap::new();
    out.insert(DOCKER_CONTENT_DIGEST, header_value(&digest.to_string()));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if head {
        // A client that finds a blob here skips uploading it and pushes a
        // manifest naming it next: the blob's time is stamped, so garbage
        // collection spares it that long.
        let _wanted = reg.inner.gc_lock.read().await;
        let store = reg.store().clone();
        let size = blocking(move || {
            store.touch_blob(&digest)?;
            store.blob_size(&digest)
        })
        .await
        .map_err(io_err("reading blob size"))?
        .ok_or_else(unknown)?;
        out.insert(header::CONTENT_LENGTH, header_value(&size.to_string()));
        return Ok((StatusCode::OK, out).into_response());
    }
    // Verify before serving: the whole blob is hashed before the first byte
    // goes out, so a client never receives (and a device never resumes from)
    // bytes that do not match their address. Hashing while streaming could
    // only cut the connection after the damage, which a client cannot tell
    // from a flaky link, and cannot check a `Range` at all.
    let store = reg.store().clone();
    let (file, len) = blocking(move || store.open_verified(&digest))
        .await
        .map_err(io_err("reading blob"))?
        .ok_or_else(unknown)?;
    let mut file = tokio::fs::File::from_std(file);
    let (status, start, count) = match headers.get(header::RANGE).map(|v| parse_range(v, len)) {
        Some(Some(Ok((start, end)))) => {
            out.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{len}")),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Some(Some(Err(()))) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes */{len}")),
                )],
            )
                .into_response());
        }
        // No Range, or one this server does not interpret (several ranges,
        // other units): the whole blob, as RFC 9110 allows.
        Some(None) | None => (StatusCode::OK, 0, len),
    };
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(io_err("seeking in blob"))?;
    out.insert(header::CONTENT_LENGTH, header_value(&count.to_string()));
    let stream = tokio_util::io::ReaderStream::with_capacity(
        tokio::io::AsyncReadExt::take(file, count),
        SERVE_CHUNK,
    );
    Ok((status, out, Body::from_stream(stream)).into_response())
}

/// A single `bytes=` range against a blob of `len` bytes: `None` if not
/// understood, `Some(Err)` if unsatisfiable, else the inclusive bounds.
fn parse_range(value: &HeaderValue, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(Err(()));
        }
        return Some(Ok((len.saturating_sub(suffix), len - 1)));
    }
    let start: u64 = first.parse().ok()?;
    let end = if last.is_empty() {
        len.saturating_sub(1)
    } else {
        let end: u64 = last.parse().ok()?;
        if end < start {
            return None;
        }
        end.min(len.saturating_sub(1))
    };
    if start >= len {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

/// `DELETE /v2/<name>/blobs/<digest>`. Blobs are shared by every
/// repository, so one a manifest still uses (anywhere, or a release's) is
/// not deleted: the manifest goes first.
pub(super) async fn delete_blob(reg: &Registry, digest: &str) -> Result<Response, ApiError> {
    let digest = parse_digest(digest)?;
    let retained = reg
        .inner
        .retained
        .manifests()
        .await
        .map_err(io_err("reading retained manifests"))?;
    let _exclusive = reg.inner.gc_lock.write().await;
    let store = reg.store().clone();
    let outcome = blocking(move || {
        let users = super::gc::users(&store, &retained)?;
        if let Some(user) = users.get(&digest) {
            return Ok(Err(user.clone()));
        }
        store.delete_blob(&digest).map(Ok)
    })
    .await
    .map_err(io_err("deleting blob"))?;
    match outcome {
        Ok(true) => {
            tracing::info!(%digest, "blob deleted");
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Ok(false) => Err(ApiError::not_found(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is not in the registry"),
        )),
        Err((repo, manifest)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            match repo {
                Some(repo) if manifest == digest => {
                    format!("blob {digest} is a manifest of `{repo}`; delete it as a manifest")
                }
                Some(repo) => format!(
                    "blob {digest} is used by manifest {manifest} of `{repo}`; delete that first"
                ),
                None => format!(
                    "blob {digest} belongs to an image of a release; it is kept while the release exists"
                ),
            },
        )),
    }
}
