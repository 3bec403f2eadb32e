//! The OCI distribution API over a [`Store`].

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::StreamExt as _;
use kelp_core::Digest;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use crate::auth::{Access, Auth};
use crate::error::{ApiError, ErrorCode};
use crate::names::{ManifestRef, RepoName, Tag};
use crate::oci::{self, ImageIndex, ImageManifest, MAX_BLOB_SIZE, MAX_MANIFEST_SIZE};
use crate::store::{Store, blocking};

/// Most upload sessions open at once. Each holds a file and a hasher; without
/// a bound, a token holder could open sessions until the disk's inodes or
/// the server's memory ran out.
pub const MAX_UPLOAD_SESSIONS: usize = 256;

/// An upload session untouched this long is dropped with its data, so that
/// abandoned uploads do not count against [`MAX_UPLOAD_SESSIONS`] for ever.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Most tags in one page of `tags/list`; a larger `n` gets this many and a
/// `Link` to the next page, as the spec allows.
pub const MAX_TAGS_PAGE: usize = 1000;

/// Bytes read from or written to disk per step when a blob is served or
/// uploaded. Each read or write of a tokio file is a trip to the blocking
/// pool; at the default 4 KiB a 20 MiB blob took 5,120 of them, and pulling
/// it ran at a twentieth of disk speed.
const SERVE_CHUNK: usize = 256 << 10;

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");

/// The registry's shared state: its store, its access rules and the uploads
/// in progress. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    auth: Auth,
    uploads: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<Upload>>>>,
}

struct Upload {
    repo: RepoName,
    path: PathBuf,
    hasher: Sha256,
    len: u64,
    touched: Instant,
}

impl Registry {
    pub fn new(store: Store, auth: Auth) -> Self {
        Registry {
            inner: Arc::new(Inner {
                store,
                auth,
                uploads: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<tokio::sync::Mutex<Upload>>>> {
        // A poisoned map is still a consistent map: every change to it is a
        // single insert or remove.
        self.inner
            .uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The OCI distribution API under `/v2/`.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/{*path}", any(dispatch))
        .layer(axum::middleware::map_response(api_version))
        .with_state(registry)
}

async fn api_version(mut response: Response) -> Response {
    response.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

/// `GET /v2/`: 200 for a valid token, 401 with a challenge otherwise, even
/// when pulls are anonymous. Docker-style clients send credentials only after
/// this endpoint challenged them, so answering 200 to a client without
/// credentials would leave it unable to push.
async fn base(State(reg): State<Registry>, headers: HeaderMap) -> Response {
    match reg.inner.auth.check(&headers, Access::Push).await {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/json")],
            "{}".to_owned(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

enum Route {
    Tags,
    Manifest(String),
    Blob(String),
    UploadStart,
    Upload(String),
}

/// Splits `<name>/<endpoint>` from the right, since a name has slashes too.
fn parse_route(path: &str) -> Option<(&str, Route)> {
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some((name, Route::Tags));
    }
    if let Some(name) = path
        .strip_suffix("/blobs/uploads/")
        .or_else(|| path.strip_suffix("/blobs/uploads"))
    {
        return Some((name, Route::UploadStart));
    }
    let (head, last) = path.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some((name, Route::Manifest(last.to_owned()))),
        "blobs" => Some((name, Route::Blob(last.to_owned()))),
        "uploads" => {
            let name = name.strip_suffix("/blobs")?;
            Some((name, Route::Upload(last.to_owned())))
        }
        _ => None,
    }
}

type QueryPairs = Query<Vec<(String, String)>>;

fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn dispatch(
    State(reg): State<Registry>,
    method: Method,
    Path(path): Path<String>,
    Query(query): QueryPairs,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some((name, route)) = parse_route(&path) else {
        return Err(ApiError::not_found(
            ErrorCode::Unsupported,
            format!("no OCI endpoint at `/v2/{path}`"),
        ));
    };
    let access = match (&method, &route) {
        (&Method::GET | &Method::HEAD, Route::Tags | Route::Manifest(_) | Route::Blob(_)) => {
            Access::Pull
        }
        _ => Access::Push,
    };
    reg.inner.auth.check(&headers, access).await?;
    let repo = RepoName::parse(name)
        .map_err(|e| ApiError::bad_request(ErrorCode::NameInvalid, e.to_string()))?;
    let head = method == Method::HEAD;
    match (method, route) {
        (Method::GET, Route::Tags) => tags_list(&reg, &repo, &query).await,
        (Method::GET | Method::HEAD, Route::Manifest(r)) => {
            get_manifest(&reg, &repo, &r, head).await
        }
        (Method::PUT, Route::Manifest(r)) => {
            put_manifest(&reg, &repo, &r, &query, &headers, body).await
        }
        (Method::GET | Method::HEAD, Route::Blob(d)) => get_blob(&reg, &d, &headers, head).await,
        (Method::POST, Route::UploadStart) => {
            start_upload(&reg, &repo, &query, &headers, body).await
        }
        (Method::GET, Route::Upload(id)) => upload_status(&reg, &repo, &id).await,
        (Method::PATCH, Route::Upload(id)) => patch_upload(&reg, &repo, &id, &headers, body).await,
        (Method::PUT, Route::Upload(id)) => {
            finish_upload(&reg, &repo, &id, &query, &headers, body).await
        }
        (Method::DELETE, Route::Upload(id)) => cancel_upload(&reg, &repo, &id).await,
        (method, _) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("`{method}` is not supported on `/v2/{path}`"),
        )),
    }
}

fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse().map_err(|e: kelp_core::DigestError| {
        ApiError::bad_request(ErrorCode::DigestInvalid, e.to_string())
    })
}

fn header_value(s: &str) -> HeaderValue {
    // Every value built here is ASCII made of names, digests and numbers that
    // were validated before.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> ApiError + '_ {
    move |e| ApiError::internal(context, e)
}

// ---------------------------------------------------------------- blobs

async fn get_blob(
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
        let store = reg.store().clone();
        let size = blocking(move || store.blob_size(&digest))
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

// -------------------------------------------------------------- uploads

fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
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

async fn start_upload(
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
        let present = blocking(move || store.blob_size(&digest))
            .await
            .map_err(io_err("reading blob size"))?;
        if present.is_some() {
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
        sweep_idle(&mut uploads);
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
                hasher: Sha256::new(),
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

fn sweep_idle(uploads: &mut HashMap<Uuid, Arc<tokio::sync::Mutex<Upload>>>) {
    uploads.retain(|_, upload| match upload.try_lock() {
        Ok(u) if u.touched.elapsed() > UPLOAD_IDLE_TIMEOUT => {
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
    digest: Digest,
    expected: Option<u64>,
) -> Result<(), ApiError> {
    let path = reg.store().upload_path(&Uuid::new_v4());
    // Removes the file on every way out but success, including this future
    // being dropped when the client goes away mid-body.
    let guard = RemoveOnDrop(Some(path.clone()));
    let mut file = tokio::fs::File::create_new(&path)
        .await
        .map_err(io_err("creating upload file"))?;
    let mut hasher = Sha256::new();
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
    hasher: Sha256,
    digest: Digest,
) -> Result<(), ApiError> {
    let actual = Digest::from_bytes(hasher.finalize().into());
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
    blocking(move || store.commit_upload(&path, &digest))
        .await
        .map_err(io_err("moving upload into place"))
}

/// Appends a request body to `file`, hashing it, and refuses to let the blob
/// grow past [`MAX_BLOB_SIZE`]. Returns the number of bytes written.
async fn append_body(
    file: &mut tokio::fs::File,
    body: Body,
    hasher: &mut Sha256,
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

async fn upload_status(reg: &Registry, repo: &RepoName, id: &str) -> Result<Response, ApiError> {
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

async fn patch_upload(
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

async fn finish_upload(
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

async fn cancel_upload(reg: &Registry, repo: &RepoName, id: &str) -> Result<Response, ApiError> {
    let (uuid, upload) = find_upload(reg, repo, id).await?;
    reg.uploads().remove(&uuid);
    let _ = tokio::fs::remove_file(&upload.path).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ------------------------------------------------------------ manifests

fn parse_reference(r: &str) -> Result<ManifestRef, ApiError> {
    if r.contains(':') {
        return parse_digest(r).map(ManifestRef::Digest);
    }
    Tag::parse(r)
        .map(ManifestRef::Tag)
        .map_err(|e| ApiError::bad_request(ErrorCode::ManifestInvalid, e.to_string()))
}

async fn get_manifest(
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
    let (digest, media_type, bytes) = match found {
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

/// Checks a pushed manifest and returns its media type: the JSON parses, its
/// `mediaType` (if any) agrees with `Content-Type`, it is a type this
/// registry knows, its required fields are there, and every blob an image
/// manifest references is stored with the size the manifest says.
fn check_manifest(
    store: &Store,
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<String, ApiError> {
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
    if media_type == oci::OCI_INDEX || media_type == oci::DOCKER_MANIFEST_LIST {
        return match serde_json::from_value::<ImageIndex>(value) {
            Ok(index) if index.schema_version == 2 => Ok(media_type),
            Ok(index) => Err(invalid_manifest(format!(
                "schemaVersion is {}, not 2",
                index.schema_version
            ))),
            Err(e) => Err(invalid_manifest(format!("not a valid image index: {e}"))),
        };
    }
    let manifest = match serde_json::from_value::<ImageManifest>(value) {
        Ok(m) => m,
        Err(e) => {
            return Err(invalid_manifest(format!("not a valid image manifest: {e}")));
        }
    };
    if manifest.schema_version != 2 {
        return Err(invalid_manifest(format!(
            "schemaVersion is {}, not 2",
            manifest.schema_version
        )));
    }
    for descriptor in std::iter::once(&manifest.config).chain(&manifest.layers) {
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
    Ok(media_type)
}

async fn put_manifest(
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
    let digest = oci::digest_of(&bytes);
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
    blocking(move || {
        let media_type = match check_manifest(&store, content_type.as_deref(), &bytes) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        store.put_blob(&bytes)?;
        store.link_manifest(&repo2, &digest, &media_type)?;
        for tag in &tags2 {
            store.set_tag(&repo2, tag, &digest)?;
        }
        Ok(Ok(()))
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
    out.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok((StatusCode::CREATED, out).into_response())
}

// ----------------------------------------------------------------- tags

#[derive(serde::Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: &'a [String],
}

async fn tags_list(
    reg: &Registry,
    repo: &RepoName,
    query: &[(String, String)],
) -> Result<Response, ApiError> {
    let n = match query_value(query, "n") {
        None => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::bad_request(
                ErrorCode::Unsupported,
                format!("`n={n}` is not a number of tags"),
            )
        })?),
    };
    let last = query_value(query, "last").map(str::to_owned);
    let store = reg.store().clone();
    let repo2 = repo.clone();
    let Some(all) = blocking(move || store.tags(&repo2))
        .await
        .map_err(io_err("listing tags"))?
    else {
        return Err(ApiError::not_found(
            ErrorCode::NameUnknown,
            format!("repository `{repo}` is not in the registry"),
        ));
    };
    let after: Vec<String> = match &last {
        Some(last) => all.into_iter().filter(|t| t > last).collect(),
        None => all,
    };
    let page = n.unwrap_or(MAX_TAGS_PAGE).min(MAX_TAGS_PAGE);
    let tags = &after[..page.min(after.len())];
    let mut out = HeaderMap::new();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if page > 0
        && after.len() > page
        && let Some(last) = tags.last()
    {
        out.insert(
            header::LINK,
            header_value(&format!(
                "</v2/{repo}/tags/list?n={page}&last={last}>; rel=\"next\""
            )),
        );
    }
    let body = serde_json::to_vec(&TagList {
        name: repo.as_str(),
        tags,
    })
    .map_err(|e| ApiError::internal("encoding tag list", std::io::Error::other(e)))?;
    Ok((StatusCode::OK, out, body).into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;
    use crate::auth::{PullPolicy, TokenHash};
    use crate::oci::{WasmArtifact, digest_of};

    const TOKEN: &str = "test-token";

    struct T {
        _dir: tempfile::TempDir,
        app: Router,
    }

    fn registry(pull: PullPolicy) -> T {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let auth = Auth {
            pull,
            tokens: std::sync::Arc::new(vec![TokenHash::of(TOKEN)]),
        };
        T {
            app: router(Registry::new(store, auth)),
            _dir: dir,
        }
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .map(|v| v.to_str().unwrap())
                .unwrap_or("")
        }
        fn code(&self) -> String {
            let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
            body["errors"][0]["code"].as_str().unwrap().to_owned()
        }
        fn message(&self) -> String {
            let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
            body["errors"][0]["message"].as_str().unwrap().to_owned()
        }
    }

    impl T {
        async fn send(&self, req: Request<Body>) -> Reply {
            let res = self.app.clone().oneshot(req).await.unwrap();
            let status = res.status();
            let headers = res.headers().clone();
            let body = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec();
            Reply {
                status,
                headers,
                body,
            }
        }

        async fn call(
            &self,
            method: &str,
            uri: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Reply {
            let mut req = Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {TOKEN}"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            self.send(req.body(Body::from(body.to_vec())).unwrap())
                .await
        }

        async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
            let d = digest_of(bytes);
            let r = self
                .call(
                    "POST",
                    &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                    &[],
                    bytes,
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::CREATED,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            d
        }

        async fn push_wasm(&self, repo: &str, tag: &str, wasm: &[u8]) -> WasmArtifact {
            let a = WasmArtifact::new(wasm).unwrap();
            self.push_blob(repo, wasm).await;
            self.push_blob(repo, &a.config).await;
            let r = self
                .call(
                    "PUT",
                    &format!("/v2/{repo}/manifests/{tag}"),
                    &[("content-type", oci::OCI_MANIFEST)],
                    &a.manifest,
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::CREATED,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(
                r.header("docker-content-digest"),
                a.manifest_digest.to_string()
            );
            a
        }
    }

    #[tokio::test]
    async fn a_blob_pushed_in_one_request_comes_back_whole_and_in_ranges() {
        let t = registry(PullPolicy::Token);
        let d = t.push_blob("kelp/hello", b"0123456789").await;
        let r = t
            .call("GET", &format!("/v2/kelp/hello/blobs/{d}"), &[], b"")
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, b"0123456789");
        assert_eq!(r.header("docker-content-digest"), d.to_string());

        let r = t
            .call(
                "GET",
                &format!("/v2/kelp/hello/blobs/{d}"),
                &[("range", "bytes=4-")],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.body, b"456789");
        assert_eq!(r.header("content-range"), "bytes 4-9/10");

        let r = t
            .call(
                "GET",
                &format!("/v2/kelp/hello/blobs/{d}"),
                &[("range", "bytes=10-")],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.header("content-range"), "bytes */10");

        let r = t
            .call("HEAD", &format!("/v2/kelp/hello/blobs/{d}"), &[], b"")
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-length"), "10");
    }

    #[tokio::test]
    async fn a_wrong_digest_is_refused_and_nothing_is_stored() {
        let t = registry(PullPolicy::Token);
        let claimed = digest_of(b"something else");
        let r = t
            .call(
                "POST",
                &format!("/v2/x/blobs/uploads/?digest={claimed}"),
                &[],
                b"payload",
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), "DIGEST_INVALID");
        assert!(
            r.message().contains(&digest_of(b"payload").to_string()),
            "{}",
            r.message()
        );
        for d in [claimed, digest_of(b"payload")] {
            let r = t.call("HEAD", &format!("/v2/x/blobs/{d}"), &[], b"").await;
            assert_eq!(r.status, StatusCode::NOT_FOUND);
        }
        let r = t
            .call("GET", &format!("/v2/x/blobs/{claimed}"), &[], b"")
            .await;
        assert_eq!(r.code(), "BLOB_UNKNOWN");
        let r = t.call("GET", "/v2/x/blobs/sha256:nothex", &[], b"").await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        );
    }

    #[tokio::test]
    async fn chunks_must_arrive_in_order_and_the_digest_is_checked_at_the_end() {
        let t = registry(PullPolicy::Token);
        let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        let location = r.header("location").to_owned();
        assert!(location.starts_with("/v2/x/blobs/uploads/"));
        assert!(!r.header("docker-upload-uuid").is_empty());

        let r = t
            .call("PATCH", &location, &[("content-range", "0-4")], b"hello")
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        assert_eq!(r.header("range"), "0-4");
        // A gap, then an overlap: both 416, and the session is unharmed.
        let r = t
            .call("PATCH", &location, &[("content-range", "6-7")], b"xx")
            .await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.header("range"), "0-4");
        let r = t
            .call("PATCH", &location, &[("content-range", "3-4")], b"lo")
            .await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
        // A range that disagrees with the body is refused and rolled back.
        let r = t
            .call("PATCH", &location, &[("content-range", "5-9")], b", w")
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "SIZE_INVALID")
        );
        let r = t.call("GET", &location, &[], b"").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(r.header("range"), "0-4");

        let d = digest_of(b"hello, world");
        let r = t
            .call(
                "PUT",
                &format!("{location}?digest={d}"),
                &[("content-range", "5-11")],
                b", world",
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("location"), format!("/v2/x/blobs/{d}"));
        let r = t.call("GET", &format!("/v2/x/blobs/{d}"), &[], b"").await;
        assert_eq!(r.body, b"hello, world");
        // The session is gone once closed.
        let r = t.call("PATCH", &location, &[], b"more").await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN")
        );

        // A closing PUT whose digest does not match ends the session.
        let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
        let location = r.header("location").to_owned();
        t.call("PATCH", &location, &[], b"abc").await;
        let r = t
            .call("PUT", &format!("{location}?digest={d}"), &[], b"")
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        );
        let r = t
            .call(
                "GET",
                &format!("/v2/x/blobs/{}", digest_of(b"abc")),
                &[],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);

        let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
        let location = r.header("location").to_owned();
        let r = t.call("DELETE", &location, &[], b"").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = t.call("GET", &location, &[], b"").await;
        assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
    }

    #[tokio::test]
    async fn bytes_a_dropped_chunk_left_behind_do_not_end_up_in_the_blob() {
        let t = registry(PullPolicy::Token);
        let r = t.call("POST", "/v2/x/blobs/uploads/", &[], b"").await;
        let location = r.header("location").to_owned();
        let file = t
            ._dir
            .path()
            .join("uploads")
            .join(r.header("docker-upload-uuid"));
        t.call("PATCH", &location, &[], b"good ").await;
        // What a chunk whose request died mid-body leaves: bytes on disk that
        // the session never counted.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        std::io::Write::write_all(&mut f, b"GARBAGE").unwrap();
        let r = t
            .call("PATCH", &location, &[("content-range", "5-9")], b"bytes")
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        let d = digest_of(b"good bytes");
        let r = t
            .call("PUT", &format!("{location}?digest={d}"), &[], b"")
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let r = t.call("GET", &format!("/v2/x/blobs/{d}"), &[], b"").await;
        assert_eq!(r.body, b"good bytes");
    }

    #[tokio::test]
    async fn manifests_round_trip_by_tag_and_digest_with_their_type() {
        let t = registry(PullPolicy::Token);
        let a = t
            .push_wasm("kelp/hello", "v1", b"\0asm fake component")
            .await;
        for reference in ["v1".to_owned(), a.manifest_digest.to_string()] {
            let r = t
                .call(
                    "GET",
                    &format!("/v2/kelp/hello/manifests/{reference}"),
                    &[],
                    b"",
                )
                .await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body, a.manifest);
            assert_eq!(r.header("content-type"), oci::OCI_MANIFEST);
            assert_eq!(
                r.header("docker-content-digest"),
                a.manifest_digest.to_string()
            );
            let r = t
                .call(
                    "HEAD",
                    &format!("/v2/kelp/hello/manifests/{reference}"),
                    &[],
                    b"",
                )
                .await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.header("content-length"), a.manifest.len().to_string());
        }
        let r = t.call("GET", "/v2/kelp/hello/manifests/v2", &[], b"").await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
        );
        let r = t
            .call("GET", "/v2/kelp/nothing/manifests/v1", &[], b"")
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
        );
        // The same manifest is not in another repository.
        t.push_wasm("other", "v1", b"another").await;
        let r = t
            .call(
                "GET",
                &format!("/v2/other/manifests/{}", a.manifest_digest),
                &[],
                b"",
            )
            .await;
        assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    }

    #[tokio::test]
    async fn manifests_with_missing_blobs_or_fields_are_refused() {
        let t = registry(PullPolicy::Token);
        let a = WasmArtifact::new(b"never pushed").unwrap();
        let ct = [("content-type", oci::OCI_MANIFEST)];
        let r = t.call("PUT", "/v2/x/manifests/v1", &ct, &a.manifest).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN")
        );
        assert!(
            r.message().contains(&a.config.len().to_string()) || r.message().contains("sha256:")
        );

        let no_layers = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0}}"#;
        let r = t.call("PUT", "/v2/x/manifests/v1", &ct, no_layers).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
        );
        assert!(r.message().contains("layers"), "{}", r.message());

        let r = t.call("PUT", "/v2/x/manifests/v1", &ct, b"{not json").await;
        assert_eq!(r.code(), "MANIFEST_INVALID");
        let r = t
            .call(
                "PUT",
                "/v2/x/manifests/v1",
                &[("content-type", "text/plain")],
                b"{}",
            )
            .await;
        assert_eq!(r.code(), "MANIFEST_INVALID");

        // Pushing by digest checks the digest.
        let wrong = digest_of(b"other");
        let r = t
            .call("PUT", &format!("/v2/x/manifests/{wrong}"), &ct, &a.manifest)
            .await;
        assert_eq!(r.code(), "DIGEST_INVALID");

        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        let r = t.call("PUT", "/v2/x/manifests/v1", &ct, &big).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn tags_are_listed_in_order_and_paginated() {
        let t = registry(PullPolicy::Token);
        for tag in ["v3", "v1", "latest", "v2"] {
            t.push_wasm("x", tag, b"same module").await;
        }
        let r = t.call("GET", "/v2/x/tags/list", &[], b"").await;
        let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(list["name"], "x");
        assert_eq!(
            list["tags"],
            serde_json::json!(["latest", "v1", "v2", "v3"])
        );

        let r = t.call("GET", "/v2/x/tags/list?n=2", &[], b"").await;
        let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(list["tags"], serde_json::json!(["latest", "v1"]));
        assert_eq!(
            r.header("link"),
            "</v2/x/tags/list?n=2&last=v1>; rel=\"next\""
        );
        let r = t.call("GET", "/v2/x/tags/list?n=2&last=v1", &[], b"").await;
        let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(list["tags"], serde_json::json!(["v2", "v3"]));
        assert_eq!(r.header("link"), "");
        let r = t.call("GET", "/v2/x/tags/list?n=0", &[], b"").await;
        let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(list["tags"], serde_json::json!([]));
        let r = t.call("GET", "/v2/nope/tags/list", &[], b"").await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
        );
    }

    #[tokio::test]
    async fn hostile_names_and_requests_get_4xx_never_5xx() {
        let t = registry(PullPolicy::Token);
        for uri in [
            "/v2/../etc/tags/list",
            "/v2/a/..%2f..%2fetc/tags/list",
            "/v2/%2e%2e/blobs/uploads/",
            "/v2/UPPER/manifests/v1",
            "/v2/x/manifests/..",
            "/v2/x/manifests/sha256:..%2f..",
            "/v2/x/blobs/uploads/not-a-uuid",
            "/v2/x/blobs/uploads/../../etc",
            "/v2/x/nothing",
        ] {
            for method in ["GET", "PUT", "PATCH", "DELETE"] {
                let r = t
                    .call(
                        method,
                        uri,
                        &[("content-range", "0-99999999999999999999")],
                        b"x",
                    )
                    .await;
                assert!(r.status.is_client_error(), "{method} {uri}: {}", r.status);
            }
        }
        let r = t.call("GET", "/v2/Bad..Name/tags/list", &[], b"").await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "NAME_INVALID")
        );
        assert!(r.message().contains("Bad..Name"), "{}", r.message());
    }

    #[tokio::test]
    async fn pushing_needs_a_token_and_pulling_follows_the_policy() {
        let t = registry(PullPolicy::Anonymous);
        let d = t.push_blob("x", b"public").await;
        let anonymous = |method: &str, uri: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap()
        };
        let r = t.send(anonymous("GET", &format!("/v2/x/blobs/{d}"))).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = t.send(anonymous("POST", "/v2/x/blobs/uploads/")).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
        );
        assert_eq!(r.header("www-authenticate"), "Basic realm=\"kelp\"");
        let r = t.send(anonymous("GET", "/v2/")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = t.call("GET", "/v2/", &[], b"").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");

        let t = registry(PullPolicy::Token);
        let d = t.push_blob("x", b"private").await;
        let r = t.send(anonymous("GET", &format!("/v2/x/blobs/{d}"))).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
        );
    }
}
