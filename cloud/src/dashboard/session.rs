//! Signing in and out, the session a signed-in browser holds, and the
//! checks every posted form passes.
//!
//! A browser signs in by posting an API token; the server answers with a
//! random session id in a cookie that scripts cannot read (`HttpOnly`) and
//! that browsers send only with requests this site starts (`SameSite=Strict`),
//! and keeps only the id's sha256. Each session has its own CSRF token,
//! which every form carries in a hidden field and every post must present;
//! a post whose `Origin` (or `Sec-Fetch-Site`) says another site sent it is
//! refused before that.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq as _;

use super::{DashError, MAX_FORM_BODY, render};
use crate::{ControlPlane, ops, secret};

/// How long a sign-in lasts: a working day, after which the browser signs
/// in again. Revoking the token it signed in with ends it at once.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// The session cookie's name.
pub const COOKIE: &str = "kelp_session";

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// The API token it signed in with, named in the log beside changes.
    pub token_id: String,
    /// The token its forms carry.
    pub csrf: String,
    id_hash: String,
}

/// The value of cookie `name` in `headers`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl FromRequestParts<ControlPlane> for Session {
    type Rejection = DashError;

    async fn from_request_parts(parts: &mut Parts, cp: &ControlPlane) -> Result<Self, DashError> {
        let id = cookie(&parts.headers, COOKIE).ok_or(DashError::SignIn)?;
        // A session id is 64 hex digits; anything else names no session.
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DashError::SignIn);
        }
        let id_hash = secret::hash(id);
        match ops::sessions::find(cp, &id_hash).await? {
            Some(row) => Ok(Session {
                token_id: row.token_id,
                csrf: row.csrf,
                id_hash,
            }),
            None => Err(DashError::SignIn),
        }
    }
}

/// Whether the request reached us over HTTPS, as far as we can tell: a
/// proxy in front says so with `X-Forwarded-Proto`, and a browser's
/// `Origin` names the scheme it used. The cookie is then marked `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    let header_is = |name: &str, prefix: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with(prefix))
    };
    header_is("x-forwarded-proto", "https") || header_is("origin", "https://")
}

/// Refuses a post another site's page sent: browsers say so in
/// `Sec-Fetch-Site`, and name the sending page's origin in `Origin`, which
/// must then be this host. A client that sends neither (not a browser) is
/// let through to the CSRF check.
pub fn check_origin(headers: &HeaderMap) -> Result<(), DashError> {
    let refuse = || DashError::forbidden("this form was sent from another site; refused");
    if let Some(site) = headers.get("sec-fetch-site") {
        match site.to_str().map_err(|_| refuse())? {
            "same-origin" | "none" => {}
            _ => return Err(refuse()),
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().map_err(|_| refuse())?;
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .ok_or_else(refuse)?;
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(refuse)?;
    if origin_host.eq_ignore_ascii_case(host.trim()) {
        Ok(())
    } else {
        Err(refuse())
    }
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// A form posted by a signed-in browser from one of this site's pages,
/// with the session's CSRF token; the session and the form's fields.
pub struct Posted<T> {
    pub session: Session,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<ControlPlane> for Posted<T> {
    type Rejection = DashError;

    async fn from_request(req: Request, cp: &ControlPlane) -> Result<Self, DashError> {
        let (mut parts, body) = req.into_parts();
        check_origin(&parts.headers)?;
        let session = Session::from_request_parts(&mut parts, cp).await?;
        let bytes = axum::body::to_bytes(body, MAX_FORM_BODY)
            .await
            .map_err(|_| {
                DashError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the form is larger than {MAX_FORM_BODY} bytes"),
                )
            })?;
        let CsrfField { csrf } = serde_urlencoded::from_bytes(&bytes).unwrap_or(CsrfField {
            csrf: String::new(),
        });
        if csrf.is_empty() || !bool::from(csrf.as_bytes().ct_eq(session.csrf.as_bytes())) {
            return Err(DashError::forbidden(
                "this form's CSRF token is missing or is not this session's; reload the page \
                 and try again",
            ));
        }
        let form = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| DashError::bad_request(format!("the form is not complete: {e}")))?;
        Ok(Posted { session, form })
    }
}

#[derive(askama::Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    error: Option<&'a str>,
}

/// `GET /login`: the sign-in form, or the fleets for a browser already
/// signed in.
pub async fn login_page(session: Result<Session, DashError>) -> Result<Response, DashError> {
    match session {
        Ok(_) => Ok(Redirect::to("/").into_response()),
        Err(DashError::SignIn) => render(&LoginPage { error: None }),
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /login`: signs in with an API token, or shows the form again with
/// what was wrong.
pub async fn login(
    State(cp): State<ControlPlane>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, DashError> {
    check_origin(&headers)?;
    if body.len() > MAX_FORM_BODY {
        return Err(DashError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the form is too large",
        ));
    }
    let form: LoginForm = serde_urlencoded::from_bytes(&body)
        .map_err(|e| DashError::bad_request(format!("the form is not complete: {e}")))?;
    let lifetime = i64::try_from(SESSION_LIFETIME.as_secs()).unwrap_or(i64::MAX);
    let Some(id) = ops::sessions::open(&cp, form.token.trim(), lifetime).await? else {
        let mut page = render(&LoginPage {
            error: Some("That token is not a live API token of this cloud."),
        })?;
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(page);
    };
    let secure = if over_https(&headers) { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={lifetime}{secure}");
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie)
            .map_err(|e| DashError::Failed(ops::ApiError::Internal(format!("bad cookie: {e}"))))?,
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct NoFields {}

/// `POST /logout`: ends the session here and in the browser.
pub async fn logout(
    State(cp): State<ControlPlane>,
    Posted { session, .. }: Posted<NoFields>,
) -> Result<Response, DashError> {
    ops::sessions::close(&cp, &session.id_hash, &session.token_id).await?;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("kelp_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn posts_from_other_sites_are_refused() {
        let same = headers(&[("host", "cloud:8080"), ("origin", "http://cloud:8080")]);
        assert!(check_origin(&same).is_ok());
        let other = headers(&[("host", "cloud:8080"), ("origin", "https://evil.example")]);
        assert!(check_origin(&other).is_err());
        let opaque = headers(&[("host", "cloud:8080"), ("origin", "null")]);
        assert!(check_origin(&opaque).is_err());
        let fetch = headers(&[("host", "cloud:8080"), ("sec-fetch-site", "cross-site")]);
        assert!(check_origin(&fetch).is_err());
        // Not a browser: the CSRF token decides.
        assert!(check_origin(&headers(&[("host", "cloud:8080")])).is_ok());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; kelp_session=abc ;b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers(&[]), COOKIE), None);
    }
}
