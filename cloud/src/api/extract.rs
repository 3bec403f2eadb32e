//! What handlers take from a request: who is calling, the fleet or device
//! the path names, and a JSON body parsed so that a bad one is refused with
//! the field at fault.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::db::{DeviceRow, FleetRow, KeyedDevice};
use crate::ops::{self, ApiError, Scope};
use crate::{ControlPlane, secret};

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
    let value = serde_path_to_error::deserialize(Strict(value)).map_err(|e| {
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

/// A JSON value that gives a struct only from an object. serde's derived
/// structs also take an array of their fields in order, so without this
/// `{"web": ["registry/repo@sha256:…"]}` would be a release's service.
struct Strict(serde_json::Value);

impl<'de> serde::Deserializer<'de> for Strict {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            serde_json::Value::Array(items) => v.visit_seq(StrictSeq(items.into_iter())),
            serde_json::Value::Object(fields) => v.visit_map(StrictMap {
                fields: fields.into_iter(),
                value: None,
            }),
            other => other.deserialize_any(v),
        }
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            serde_json::Value::Null => v.visit_none(),
            other => v.visit_some(Strict(other)),
        }
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::{Error as _, Unexpected};
        let unexpected = match &self.0 {
            serde_json::Value::Object(_) => return self.deserialize_any(v),
            serde_json::Value::Array(_) => Unexpected::Seq,
            serde_json::Value::String(s) => Unexpected::Str(s),
            serde_json::Value::Bool(b) => Unexpected::Bool(*b),
            serde_json::Value::Null => Unexpected::Unit,
            serde_json::Value::Number(_) => Unexpected::Other("number"),
        };
        Err(serde_json::Error::invalid_type(unexpected, &"an object"))
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, v)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
        ignored_any
    }
}

struct StrictSeq(std::vec::IntoIter<serde_json::Value>);

impl<'de> serde::de::SeqAccess<'de> for StrictSeq {
    type Error = serde_json::Error;

    fn next_element_seed<T: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Strict(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct StrictMap {
    fields: serde_json::map::IntoIter,
    value: Option<serde_json::Value>,
}

impl<'de> serde::de::MapAccess<'de> for StrictMap {
    type Error = serde_json::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.fields.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        let key = serde::de::value::StringDeserializer::<serde_json::Error>::new(key);
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let value = self.value.take().unwrap_or(serde_json::Value::Null);
        seed.deserialize(Strict(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
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
        match ops::tokens::live(cp, token).await? {
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
        match ops::fleets::of_provisioning_key(cp, key).await? {
            Some(fleet) => Ok(ProvisioningKey { fleet }),
            None => Err(ApiError::unauthorized(
                "the provisioning key is not valid or was rotated",
            )),
        }
    }
}

/// The route's path parameter `name`, or a JSON 400 if the path is not
/// text.
async fn param(parts: &mut Parts, name: &str) -> Result<String, ApiError> {
    let Path(mut params) = Path::<HashMap<String, String>>::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::field("path", e.body_text()))?;
    params
        .remove(name)
        .ok_or_else(|| ApiError::Internal(format!("the route has no parameter `{name}`")))
}

/// The fleet the route's `{name}` names. It is looked up only when the
/// handler asks ([`AtFleet::find`]), once the whole request is taken, so a
/// body that is refused is refused before a name that is unknown.
pub struct AtFleet(Result<String, ApiError>);

impl AtFleet {
    /// The fleet, or a 404.
    pub async fn find(self, cp: &ControlPlane) -> Result<FleetRow, ApiError> {
        ops::fleets::find(cp, &self.0?).await
    }

    /// The fleet as the scope of an operation it shares with devices.
    pub async fn scope(self, cp: &ControlPlane) -> Result<Scope, ApiError> {
        Ok(Scope::Fleet(self.find(cp).await?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AtFleet {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(AtFleet(param(parts, "name").await))
    }
}

/// The device the route's `{uuid}` names, looked up as [`AtFleet`] is.
pub struct AtDevice(Result<String, ApiError>);

impl AtDevice {
    /// The device, or a 404.
    pub async fn find(self, cp: &ControlPlane) -> Result<DeviceRow, ApiError> {
        ops::devices::find(cp, &self.0?).await
    }

    /// The device as the scope of an operation it shares with fleets.
    pub async fn scope(self, cp: &ControlPlane) -> Result<Scope, ApiError> {
        Ok(Scope::Device(self.find(cp).await?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AtDevice {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(AtDevice(param(parts, "uuid").await))
    }
}

/// The route's `{key}`, unchecked: the operation checks it.
pub struct Key(Result<String, ApiError>);

impl Key {
    pub fn take(self) -> Result<String, ApiError> {
        self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Key(param(parts, "key").await))
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
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        m: i64,
    }

    #[test]
    fn whole_numbers_written_as_floats_are_integers_and_bodies_are_objects() {
        let b: Body =
            parse_json(br#"{"n": -35937.0, "list": [316.0, 1e3], "inner": {"m": 2.0}}"#).unwrap();
        assert_eq!((b.n, b.list), (-35937, vec![316, 1000]));
        assert_eq!(b.inner.map(|i| i.m), Some(2));

        for (bad, field) in [
            (&br#"{"n": 1.5, "list": []}"#[..], "n"),
            // Past 2^53 a float may not be the number written.
            (br#"{"n": 9007199254740993.0, "list": []}"#, "n"),
            (br#"{"n": -9223372036854775809, "list": []}"#, "n"),
            // serde reads a struct from an array of its fields too.
            (br#"[1, []]"#, "body"),
            (br#"{"n": 1, "list": []} {}"#, "body"),
            // Nor inside the body.
            (br#"{"n": 1, "list": [], "inner": [2]}"#, "inner"),
        ] {
            let err = parse_json::<Body>(bad).unwrap_err();
            let ApiError::Client { field: Some(f), .. } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(f, field, "{}: {err}", String::from_utf8_lossy(bad));
        }
    }
}
