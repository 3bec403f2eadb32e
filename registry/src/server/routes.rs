//! Which area of the API a request under `/v2/` is for, what access it
//! needs, and the handler that answers it.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;

use super::Registry;
use super::auth::Access;
use super::blobs::{delete_blob, get_blob};
use super::manifests::{delete_manifest, get_manifest, put_manifest};
use super::referrers::list_referrers;
use super::tags::tags_list;
use super::uploads::{cancel_upload, finish_upload, patch_upload, start_upload, upload_status};
use crate::error::{ApiError, ErrorCode};
use crate::names::RepoName;

enum Route {
    Tags,
    Manifest(String),
    Blob(String),
    Referrers(String),
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
        "referrers" => Some((name, Route::Referrers(last.to_owned()))),
        "uploads" => {
            let name = name.strip_suffix("/blobs")?;
            Some((name, Route::Upload(last.to_owned())))
        }
        _ => None,
    }
}

type QueryPairs = Query<Vec<(String, String)>>;
pub(super) async fn dispatch(
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
        (
            &Method::GET | &Method::HEAD,
            Route::Tags | Route::Manifest(_) | Route::Blob(_) | Route::Referrers(_),
        ) => Access::Pull,
        (&Method::DELETE, Route::Manifest(_) | Route::Blob(_)) => Access::Delete,
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
        (Method::DELETE, Route::Manifest(r)) => delete_manifest(&reg, &repo, &r).await,
        (Method::GET | Method::HEAD, Route::Blob(d)) => get_blob(&reg, &d, &headers, head).await,
        (Method::DELETE, Route::Blob(d)) => delete_blob(&reg, &d).await,
        (Method::GET, Route::Referrers(d)) => list_referrers(&reg, &repo, &d, &query).await,
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
