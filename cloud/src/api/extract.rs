//! What handlers take from a request: who is calling, and a JSON body
//! parsed so that a bad one is refused with the field at fault.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::ControlPlane;
use crate::db::KeyedDevice;
use crate::secret;

/// Largest JSON request body. A release with the most services, each with
/// the most variables at their longest, is well under it; anything larger is
/// refused before it is parsed.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// A JSON request body, refused with a 400 naming the field at fault.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY)
            .await
            .map_err(|_| {
                ApiError::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {MAX_JSON_BODY} bytes"),
                )
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as a `T`, naming the field at fault if it is not one.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let field = if path == "." {
            // A missing or unknown field is reported at its parent; the
            // message names it between backticks.
            message
                .split('`')
                .nth(1)
                .filter(|_| message.contains("field `"))
                .map_or_else(|| "body".to_owned(), str::to_owned)
        } else {
            path
        };
        ApiError::field(field, message)
    })?;
    de.end()
        .map_err(|e| ApiError::field("body", format!("trailing data after the JSON value: {e}")))?;
    Ok(value)
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("this endpoint needs `Authorization: Bearer <token>`")
    })?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || rest.is_empty() {
        return Err(ApiError::unauthorized(
            "the Authorization header is not `Bearer <token>`",
        ));
    }
    Ok(rest)
}

/// A caller holding a live API token; the token's id, which the log names
/// beside every change it makes.
pub struct User {
    pub token_id: String,
}

impl FromRequestParts<ControlPlane> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, cp: &ControlPlane) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        match cp.db.token_by_hash(&secret::hash(token)).await? {
            Some(token_id) => Ok(User { token_id }),
            None => Err(ApiError::unauthorized(
                "the API token is not valid or was revoked",
            )),
        }
    }
}

/// A device calling with its device key; the device as found by its key,
/// so a handler needs no second read to learn its fleet.
pub struct DeviceKey {
    pub device: KeyedDevice,
}

impl FromRequestParts<ControlPlane> for DeviceKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, cp: &ControlPlane) -> Result<Self, ApiError> {
        let key = bearer(parts)?;
        match cp.keys.device(secret::hash(key)).await? {
            Some(device) => Ok(DeviceKey { device }),
            None => Err(ApiError::unauthorized(
                "the device key is not valid or was replaced by a later registration",
            )),
        }
    }
}

/// A caller holding a fleet's provisioning key; the fleet's name.
pub struct ProvisioningKey {
    pub fleet: String,
}

impl FromRequestParts<ControlPlane> for ProvisioningKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, cp: &ControlPlane) -> Result<Self, ApiError> {
        let key = bearer(parts)?;
        match cp.db.provisioning_key_by_hash(&secret::hash(key)).await? {
            Some(fleet) => Ok(ProvisioningKey { fleet }),
            None => Err(ApiError::unauthorized(
                "the provisioning key is not valid or was rotated",
            )),
        }
    }
}
