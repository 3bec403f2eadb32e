//! Tags: `GET /v2/<name>/tags/list`, in order and paginated with `n` and
//! `last` as the spec says.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Registry, header_value, io_err, query_value};
use crate::error::{ApiError, ErrorCode};
use crate::names::RepoName;
use crate::store::blocking;

/// Most tags in one page of `tags/list`; a larger `n` gets this many and a
/// `Link` to the next page, as the spec allows.
pub const MAX_TAGS_PAGE: usize = 1000;

#[derive(serde::Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: &'a [String],
}

pub(super) async fn tags_list(
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
