//! Uploads: a blob in one request (`POST …/blobs/uploads/?digest=`), a
//! cross-repository mount, or a session of chunks (`POST`, `PATCH`s, the
//! closing `PUT`; `GET` for its progress, `DELETE` to cancel). Every byte is
//! hashed on its way to disk and a blob becomes visible only once its digest
//! matches.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use super::{
    DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID, Registry, SERVE_CHUNK, header_value, io_err,
    parse_digest, query_value,
};
use crate::digest::{BlobDigest, Hasher};
use crate::error::{ApiError, ErrorCode};
use crate::names::RepoName;
use crate::oci::MAX_BLOB_SIZE;
use crate::store::blocking;

/// Most upload sessions open at once. Each holds a file and a hasher; without
/// a bound, a token holder could open sessions until the disk's inodes or
/// the server's memory ran out.
pub const MAX_UPLOAD_SESSIONS: usize = 256;

/// An upload session untouched this long is dropped with its data, so that
/// abandoned uploads do not count against [`MAX_UPLOAD_SESSIONS`] for ever.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

pub(super) struct Upload {
    repo: RepoName,
    path: PathBuf,
    /// sha256 of the bytes so far: what nearly every client closes with. A
    /// sha512 closing digest is checked by hashing the file again.
    hasher: Hasher,
    len: u64,
    touched: Instant,
}

fn blob_created(repo: &RepoName, digest: &BlobDigest) -> Response {
    let mut out = HeaderMap::new();
    out.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/{digest}")),
    );
    out.insert(DOCKER_CONTENT_DIGEST, header_value(&digest.to_string()));
    out.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    (StatusCode::CREATED, out).into_response()
}

fn upload_headers(repo: &RepoName, id: &Uuid, len: u64) -> HeaderMap {
    let mut out = HeaderMap::new();
    out.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/uploads/{id}")),
    );
    out.insert(DOCKER_UPLOAD_UUID, header_value(&id.to_string()));
    // `0-<last byte>`; an empty upload is `0-0`, as Docker's registry says.
    out.insert(
        header::RANGE,
        header_value(&format!("0-{}", len.saturating_sub(1))),
    );
    out.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    out
}

pub(super) async fn start_upload(
    reg: &Registry,
    repo: &RepoName,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(mount) = query_value(query, "mount") {
        // Blobs are shared by every repository, so a mount is a lookup.
        let digest = parse_digest(mount)?;
        let store = reg.store().clone();
        let _wanted = reg.inner.gc_lock.read().await;
        let present = blocking(move || store.touch_blob(&digest))
            .await
            .map_err(io_err("reading blob"))?;
        if present {
            return Ok(blob_created(repo, &digest));
        }
    }
    if let Some(digest) = query_value(query, "digest") {
        let digest = parse_digest(digest)?;
        let expected = content_length(headers)?;
        monolithic(reg, body, digest, expected).await?;
        return Ok(blob_created(repo, &digest));
    }
    let id = Uuid::new_v4();
    let path = reg.store().upload_path(&id);
    {
        let mut uploads = reg.uploads();
        sweep_idle(&mut uploads, UPLOAD_IDLE_TIMEOUT);
        if uploads.len() >= MAX_UPLOAD_SESSIONS {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::Toomanyrequests,
                format!(
                    "{MAX_UPLOAD_SESSIONS} uploads are already in progress; finish or cancel one"
                ),
            ));
        }
        uploads.insert(
            id,
            Arc::new(tokio::sync::Mutex::new(Upload {
                repo: repo.clone(),
                path: path.clone(),
                hasher: Hasher::default(),
                len: 0,
                touched: Instant::now(),
            })),
        );
    }
    if let Err(e) = tokio::fs::File::create_new(&path).await {
        reg.uploads().remove(&id);
        return Err(ApiError::internal("creating upload file", e));
    }
    Ok((StatusCode::ACCEPTED, upload_headers(repo, &id, 0)).into_response())
}

/// Ends the sessions idle longer than `limit`, removing their files.
pub(super) fn sweep_idle(
    uploads: &mut HashMap<Uuid, Arc<tokio::sync::Mutex<Upload>>>,
    limit: Duration,
) {
    uploads.retain(|_, upload| match upload.try_lock() {
        Ok(u) if u.touched.elapsed() > limit => {
            let _ = std::fs::remove_file(&u.path);
            false
        }
        _ => true,
    });
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str().ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
                ApiError::bad_request(ErrorCode::SizeInvalid, "Content-Length is not a number")
            })
        })
        .transpose()
}

/// A blob in one request: streamed to a new upload file while hashed, checked,
/// fsynced and moved into place. Any failure removes the file.
async fn monolithic(
    reg: &Registry,
    body: Body,
    digest: BlobDigest,
    expected: Option<u64>,
) -> Result<(), ApiError> {
    let path = reg.store().upload_path(&Uuid::new_v4());
    // Removes the file on every way out but success, including this future
    // being dropped when the client goes away mid-body.
    let guard = RemoveOnDrop(Some(path.clone()));
    let mut file = tokio::fs::File::create_new(&path)
        .await
        .map_err(io_err("creating upload file"))?;
    let mut hasher = digest.algorithm().hasher();
    let written = append_body(&mut file, body, &mut hasher, 0).await?;
    check_length(expected, written)?;
    seal(reg, file, &path, hasher, digest).await?;
    guard.disarm();
    Ok(())
}

/// Deletes an upload file when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn check_length(expected: Option<u64>, written: u64) -> Result<(), ApiError> {
    match expected {
        Some(n) if n != written => Err(ApiError::bad_request(
            ErrorCode::SizeInvalid,
            format!("{n} bytes were announced but {written} arrived"),
        )),
        _ => Ok(()),
    }
}

/// Checks the digest of a complete upload, then makes it durable and visible.
async fn seal(
    reg: &Registry,
    file: tokio::fs::File,
    path: &std::path::Path,
    hasher: Hasher,
    digest: BlobDigest,
) -> Result<(), ApiError> {
    let actual = if hasher.algorithm() == digest.algorithm() {
        hasher.finish()
    } else {
        let path = path.to_owned();
        let algorithm = digest.algorithm();
        blocking(move || {
            let mut hasher = algorithm.hasher();
            std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
            Ok(hasher.finish())
        })
        .await
        .map_err(io_err("hashing upload"))?
    };
    if actual != digest {
        return Err(ApiError::bad_request(
            ErrorCode::DigestInvalid,
            format!("the uploaded content has digest {actual}, not {digest}"),
        ));
    }
    file.sync_all().await.map_err(io_err("syncing upload"))?;
    drop(file);
    let store = reg.store().clone();
    let path = path.to_owned();
    let _wanted = reg.inner.gc_lock.read().await;
    blocking(move || store.commit_upload(&path, &digest))
        .await
        .map_err(io_err("moving upload into place"))
}

/// Appends a request body to `file`, hashing it, and refuses to let the blob
/// grow past [`MAX_BLOB_SIZE`]. Returns the number of bytes written.
async fn append_body(
    file: &mut tokio::fs::File,
    body: Body,
    hasher: &mut Hasher,
    already: u64,
) -> Result<u64, ApiError> {
    // Gathered into large writes: each write to a tokio file is a trip to
    // the blocking pool. Anything still buffered when this fails is rolled
    // back with the rest of the chunk.
    let mut out = tokio::io::BufWriter::with_capacity(SERVE_CHUNK, file);
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                ErrorCode::BlobUploadInvalid,
                format!("the upload body ended early: {e}"),
            )
        })?;
        written += chunk.len() as u64;
        if already + written > MAX_BLOB_SIZE {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::SizeInvalid,
                format!("blobs are limited to {MAX_BLOB_SIZE} bytes"),
            ));
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(io_err("writing upload"))?;
    }
    out.flush().await.map_err(io_err("writing upload"))?;
    Ok(written)
}

/// The upload session `id`, locked, if it is in progress in `repo`. A session
/// of another repository is as unknown here as one that never existed.
async fn find_upload(
    reg: &Registry,
    repo: &RepoName,
    id: &str,
) -> Result<(Uuid, OwnedMutexGuard<Upload>), ApiError> {
    let unknown = || {
        ApiError::not_found(
            ErrorCode::BlobUploadUnknown,
            format!("upload `{id}` is not in progress in `{repo}`"),
        )
    };
    let uuid = Uuid::parse_str(id).map_err(|_| unknown())?;
    let upload = reg.uploads().get(&uuid).cloned().ok_or_else(unknown)?;
    let upload = upload.lock_owned().await;
    if upload.repo != *repo {
        return Err(unknown());
    }
    Ok((uuid, upload))
}

pub(super) async fn upload_status(
    reg: &Registry,
    repo: &RepoName,
    id: &str,
) -> Result<Response, ApiError> {
    let (uuid, upload) = find_upload(reg, repo, id).await?;
    Ok((
        StatusCode::NO_CONTENT,
        upload_headers(repo, &uuid, upload.len),
    )
        .into_response())
}

/// The chunk a `Content-Range: <start>-<end>` announces, checked against the
/// bytes the upload already has.
fn chunk_range(
    headers: &HeaderMap,
    repo: &RepoName,
    id: &Uuid,
    have: u64,
) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    let text = text.strip_prefix("bytes ").unwrap_or(text);
    let parsed = text
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let Some((start, end)) = parsed.filter(|(a, b)| a <= b) else {
        return Err(ApiError::bad_request(
            ErrorCode::BlobUploadInvalid,
            format!("Content-Range `{text}` is not `<start>-<end>`"),
        ));
    };
    if start != have {
        let mut err = ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            format!(
                "chunk starts at byte {start}, but the upload has {have} bytes; send byte {have} next"
            ),
        );
        for (name, value) in upload_headers(repo, id, have) {
            if let Some(name) = name {
                err = err.with_header(name, value);
            }
        }
        return Err(err);
    }
    let count = end - start + 1;
    if let Some(n) = content_length(headers)?
        && n != count
    {
        return Err(ApiError::bad_request(
            ErrorCode::SizeInvalid,
            format!("Content-Range `{text}` is {count} bytes but Content-Length is {n}"),
        ));
    }
    Ok(Some(count))
}

/// Appends a chunk to an upload session and returns the session's file,
/// still open. On any failure the file is cut back to where it was, so the
/// client can send the chunk again.
async fn append_chunk(
    upload: &mut Upload,
    uuid: &Uuid,
    repo: &RepoName,
    headers: &HeaderMap,
    body: Body,
) -> Result<tokio::fs::File, ApiError> {
    let expected = chunk_range(headers, repo, uuid, upload.len)?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&upload.path)
        .await
        .map_err(io_err("opening upload file"))?;
    // Bytes past `len` are from a chunk whose request was dropped mid-way;
    // they were never counted, so they go.
    file.set_len(upload.len)
        .await
        .map_err(io_err("trimming upload file"))?;
    file.seek(SeekFrom::Start(upload.len))
        .await
        .map_err(io_err("seeking in upload file"))?;
    let mut hasher = upload.hasher.clone();
    let result = async {
        let written = append_body(&mut file, body, &mut hasher, upload.len).await?;
        check_length(expected, written)?;
        Ok(written)
    }
    .await;
    match result {
        Ok(written) => {
            upload.hasher = hasher;
            upload.len += written;
            upload.touched = Instant::now();
            Ok(file)
        }
        Err(e) => {
            file.set_len(upload.len)
                .await
                .map_err(io_err("rolling back a failed chunk"))?;
            Err(e)
        }
    }
}

pub(super) async fn patch_upload(
    reg: &Registry,
    repo: &RepoName,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (uuid, mut upload) = find_upload(reg, repo, id).await?;
    append_chunk(&mut upload, &uuid, repo, headers, body).await?;
    Ok((
        StatusCode::ACCEPTED,
        upload_headers(repo, &uuid, upload.len),
    )
        .into_response())
}

pub(super) async fn finish_upload(
    reg: &Registry,
    repo: &RepoName,
    id: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (uuid, mut upload) = find_upload(reg, repo, id).await?;
    let Some(digest) = query_value(query, "digest") else {
        return Err(ApiError::bad_request(
            ErrorCode::DigestInvalid,
            "the closing PUT of an upload needs `?digest=sha256:…`",
        ));
    };
    let digest = parse_digest(digest)?;
    let file = append_chunk(&mut upload, &uuid, repo, headers, body).await?;
    // From here the session ends, whatever the outcome.
    reg.uploads().remove(&uuid);
    let guard = RemoveOnDrop(Some(upload.path.clone()));
    let hasher = std::mem::take(&mut upload.hasher);
    seal(reg, file, &upload.path, hasher, digest).await?;
    guard.disarm();
    Ok(blob_created(repo, &digest))
}

pub(super) async fn cancel_upload(
    reg: &Registry,
    repo: &RepoName,
    id: &str,
) -> Result<Response, ApiError> {
    let (uuid, upload) = find_upload(reg, repo, id).await?;
    reg.uploads().remove(&uuid);
    let _ = tokio::fs::remove_file(&upload.path).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
