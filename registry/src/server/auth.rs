//! Who may push and pull, and `GET /v2/`, where clients learn it.
//!
//! Pushing always needs a token. Pulling needs one too unless the registry is
//! configured for anonymous pulls. A token is accepted as `Authorization:
//! Bearer <token>` or as the password of HTTP basic auth (what `docker login`
//! and skopeo send; the user name is ignored). Only the sha256 of each token
//! is kept, and presented tokens are compared with those hashes in constant
//! time.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use kelp_core::Digest;
use subtle::ConstantTimeEq as _;

use super::Registry;
use crate::error::{ApiError, ErrorCode};
use crate::oci::digest_of;

/// Whether pulling needs a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Anyone who can reach the registry may pull.
    Anonymous,
    /// Pulls need a token, as pushes do.
    #[default]
    Token,
}

#[derive(Debug, thiserror::Error)]
#[error("pull policy `{0}` is not `anonymous` or `token`")]
pub struct PullPolicyError(String);

impl FromStr for PullPolicy {
    type Err = PullPolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "anonymous" => Ok(PullPolicy::Anonymous),
            "token" => Ok(PullPolicy::Token),
            _ => Err(PullPolicyError(s.to_owned())),
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::Anonymous => "anonymous",
            PullPolicy::Token => "token",
        })
    }
}

/// The sha256 of a token: what is stored instead of the token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(Digest);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(digest_of(token.as_bytes()))
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.0)
    }
}

impl FromStr for TokenHash {
    type Err = kelp_core::DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(TokenHash)
    }
}

/// Where a registry's valid tokens come from: a fixed list of hashes, or
/// something that is asked each time (the fleet API's token table, where a
/// token revoked is refused on the next request).
#[async_trait::async_trait]
pub trait Tokens: Send + Sync + fmt::Debug {
    /// Whether `token` is valid now, for pushing and pulling.
    async fn accepts(&self, token: &str) -> std::io::Result<bool>;

    /// Whether `token` may pull: every token that [`Tokens::accepts`], and
    /// those good for pulling only (a fleet's device keys).
    async fn may_pull(&self, token: &str) -> std::io::Result<bool> {
        self.accepts(token).await
    }
}

#[async_trait::async_trait]
impl Tokens for Vec<TokenHash> {
    async fn accepts(&self, token: &str) -> std::io::Result<bool> {
        let presented = TokenHash::of(token);
        // Check every hash, so the time taken does not say which one matched.
        Ok(self.iter().fold(false, |found, known| {
            found | bool::from(known.0.as_bytes().ct_eq(presented.0.as_bytes()))
        }))
    }
}

/// The access rules of one registry.
#[derive(Clone, Debug)]
pub struct Auth {
    pub pull: PullPolicy,
    pub tokens: Arc<dyn Tokens>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            pull: PullPolicy::default(),
            tokens: Arc::new(Vec::<TokenHash>::new()),
        }
    }
}

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Pull,
    Push,
    /// Deleting tags, manifests and blobs: the rights of pushing. A device
    /// key, which may only pull, never deletes.
    Delete,
}

impl Auth {
    /// Allows or refuses a request for `access`, from its headers.
    pub(crate) async fn check(&self, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
        match presented_token(headers) {
            Presented::Token(token) => {
                let valid = match access {
                    Access::Push | Access::Delete => self.tokens.accepts(&token).await,
                    Access::Pull => self.tokens.may_pull(&token).await,
                }
                .map_err(|e| ApiError::internal("checking a token", e))?;
                if valid {
                    Ok(())
                } else if access != Access::Pull
                    && self.tokens.may_pull(&token).await.unwrap_or(false)
                {
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        ErrorCode::Denied,
                        if access == Access::Push {
                            "the token presented may pull but not push"
                        } else {
                            "the token presented may pull but not delete"
                        },
                    ))
                } else {
                    Err(unauthorized("the token presented is not valid"))
                }
            }
            Presented::Malformed => Err(unauthorized(
                "the Authorization header is neither `Bearer <token>` nor basic auth",
            )),
            Presented::None if access == Access::Pull && self.pull == PullPolicy::Anonymous => {
                Ok(())
            }
            Presented::None => Err(unauthorized(match access {
                Access::Push => "pushing needs a token",
                Access::Delete => "deleting needs a token",
                Access::Pull => "pulling from this registry needs a token",
            })),
        }
    }
}

pub(crate) fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"kelp\""),
    )
}

enum Presented {
    None,
    Token(String),
    Malformed,
}

fn presented_token(headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::None;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Presented::Token(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return Presented::Malformed;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Presented::Malformed;
        };
        return match decoded.split_once(':') {
            // Clients that got a challenge but hold no credentials send an
            // empty user and password: that is no credentials at all.
            Some((_, "")) => Presented::None,
            Some((_, password)) => Presented::Token(password.to_owned()),
            None => Presented::Malformed,
        };
    }
    Presented::Malformed
}

/// `GET /v2/`: 200 for a valid token, 401 with a challenge otherwise, even
/// when pulls are anonymous. Docker-style clients send credentials only after
/// this endpoint challenged them, so answering 200 to a client without
/// credentials would leave it unable to push.
pub(super) async fn base(State(reg): State<Registry>, headers: HeaderMap) -> Response {
    match reg.inner.auth.check(&headers, Access::Push).await {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/json")],
            "{}".to_owned(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[tokio::test]
    async fn tokens_are_accepted_as_bearer_or_basic_password() {
        let auth = Auth {
            pull: PullPolicy::Token,
            tokens: Arc::new(vec![TokenHash::of("s3cret")]),
        };
        assert!(
            auth.check(&headers("Bearer s3cret"), Access::Push)
                .await
                .is_ok()
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret");
        assert!(
            auth.check(&headers(&format!("Basic {basic}")), Access::Push)
                .await
                .is_ok()
        );
        let err = auth
            .check(&headers("Bearer wrong"), Access::Pull)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
        assert!(err.to_string().contains("not valid"), "{err}");
        let err = auth
            .check(&HeaderMap::new(), Access::Pull)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("pulling"), "{err}");
    }

    #[tokio::test]
    async fn anonymous_pull_still_needs_a_token_to_push() {
        let auth = Auth {
            pull: PullPolicy::Anonymous,
            tokens: Arc::new(vec![TokenHash::of("t")]),
        };
        assert!(auth.check(&HeaderMap::new(), Access::Pull).await.is_ok());
        let empty = base64::engine::general_purpose::STANDARD.encode(":");
        assert!(
            auth.check(&headers(&format!("Basic {empty}")), Access::Pull)
                .await
                .is_ok()
        );
        let err = auth
            .check(&HeaderMap::new(), Access::Push)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("pushing needs a token"), "{err}");
    }
}
