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
///
/// A whole number written with a fraction (`316.0`) is read as the integer
/// it is: JSON Schema, and so the OpenAPI document, counts it as one, and
/// some JSON writers spell every number that way. The body must be an
/// object.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut value: serde_json::Value = {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = serde::Deserialize::deserialize(&mut de)
            .map_err(|e| ApiError::field("body", format!("not JSON: {e}")))?;
        de.end().map_err(|e| {
            ApiError::field("body", format!("trailing data after the JSON value: {e}"))
        })?;
        value
    };
    // Every body is a JSON object; serde would also read a struct from an
    // array of its fields in order, which no client means to send.
    if !value.is_object() {
        return Err(ApiError::field("body", "the body is not a JSON object"));
    }
    whole_numbers_as_integers(&mut value);
    let value = serde_path_to_error::deserialize(value).map_err(|e| {
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
    Ok(value)
}

/// Largest magnitude up to which every whole number has an exact `f64`:
/// past it, a float may not be the number its writer wrote.
const EXACT_FLOAT: f64 = 9_007_199_254_740_992.0; // 2^53

/// Rewrites every number in `value` that is a whole float of at most
/// [`EXACT_FLOAT`] in magnitude as that integer.
fn whole_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::{Number, Value};
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() <= EXACT_FLOAT)
            {
                // Exact: the value is whole and well inside i64.
                *n = Number::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        n: i64,
        list: Vec<u16>,
    }

    #[test]
    fn whole_numbers_written_as_floats_are_integers_and_bodies_are_objects() {
        let b: Body = parse_json(br#"{"n": -35937.0, "list": [316.0, 1e3]}"#).unwrap();
        assert_eq!((b.n, b.list), (-35937, vec![316, 1000]));

        for (bad, field) in [
            (&br#"{"n": 1.5, "list": []}"#[..], "n"),
            // Past 2^53 a float may not be the number written.
            (br#"{"n": 9007199254740993.0, "list": []}"#, "n"),
            (br#"{"n": -9223372036854775809, "list": []}"#, "n"),
            // serde reads a struct from an array of its fields too.
            (br#"[1, []]"#, "body"),
            (br#"{"n": 1, "list": []} {}"#, "body"),
        ] {
            let err = parse_json::<Body>(bad).unwrap_err();
            let ApiError::Client { field: Some(f), .. } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(f, field, "{}: {err}", String::from_utf8_lossy(bad));
        }
    }
}
