//! `/device/v1/…`: what devices ask and tell. A device registers with its
//! fleet's provisioning key, then calls with the device key that hands out:
//! for its target state (long-polled, by ETag), to report what changed, and
//! with batches of its log lines.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::extract::{DeviceKey, JsonBody, ProvisioningKey};
use super::{Answer, Cp, query};
use crate::ControlPlane;
use crate::ops::targets::Target;
use crate::ops::{
    self, ApiError, CurrentState, ErrorBody, LogBatch, Register, RegisteredDevice, TargetState,
};

/// Longest a device may long-poll its target state (`?wait=`). Longer waits
/// are cut to this: short enough to pass through proxies that drop idle
/// connections after a minute or two, long enough that an idle fleet costs
/// one request per device per minute.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How often a held `?wait=` request looks at the database again even
/// without word of a change: another process serving the same database may
/// have changed the target, and this bounds how late its devices hear. A
/// look that finds the fleet's change count where it was costs one small
/// read.
pub const RECHECK: Duration = Duration::from_secs(5);

/// Registers a device into the fleet whose provisioning key it presents.
/// Registering an existing uuid again (a re-flashed device that lost its
/// key) hands out a new key and the old one stops working; only the hash
/// is stored, so the old key cannot be handed out again. A uuid registered
/// in another fleet is refused, never moved.
#[utoipa::path(post, path = "/device/v1/register", tag = "device", request_body = Register, security(("provisioning_key" = [])), responses((status = 201, description = "Registered; the device key is shown this once.", body = RegisteredDevice), (status = 200, description = "Registered again (a re-flashed device): a new device key; the old one no longer works.", body = RegisteredDevice), (status = 403, description = "The uuid belongs to another fleet.", body = ErrorBody)))]
pub(super) async fn register(
    cp: Cp,
    key: ProvisioningKey,
    JsonBody(body): JsonBody<Register>,
) -> Answer {
    let (new, out) = ops::devices::register(&cp, key.fleet, body).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(out)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StateQuery {
    /// Seconds to wait for the target to differ from `If-None-Match`; at
    /// most a minute is waited, however many are asked for.
    #[param(minimum = 0)]
    wait: Option<i64>,
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == etag || tag == "*"
        })
}

/// The answer to a device that holds `target` and whose `If-None-Match`
/// is in `headers`: the target, unless the device has it already.
fn changed_target(headers: &HeaderMap, target: &Target) -> Option<Response> {
    if etag_matches(headers, &target.etag) {
        return None;
    }
    let mut response = (StatusCode::OK, target.body.clone()).into_response();
    let h = response.headers_mut();
    h.insert(header::ETAG, target.etag_header.clone());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Some(response)
}

fn not_modified(target: &Target) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    response
        .headers_mut()
        .insert(header::ETAG, target.etag_header.clone());
    response
}

/// `GET /device/v1/state`: the calling device's target. With
/// `If-None-Match` naming the current ETag the answer is 304; with `?wait=N`
/// as well, the request is held until the target changes or N seconds (at
/// most [`MAX_WAIT`]) pass.
#[utoipa::path(get, path = "/device/v1/state", tag = "device", params(StateQuery, ("If-None-Match" = Option<String>, Header, description = "The ETag of the target the device holds.")), security(("device_key" = [])), responses((status = 200, description = "The calling device's target state.", body = TargetState, headers(("ETag" = String, description = "The target's version, for `If-None-Match`."))), (status = 304, description = "The target is the one `If-None-Match` names.", headers(("ETag" = String)))))]
pub(super) async fn device_state(
    State(cp): State<ControlPlane>,
    DeviceKey { device }: DeviceKey,
    q: Result<Query<StateQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let wait = u64::try_from(q.wait.unwrap_or(0))
        .map_err(|_| ApiError::field("wait", "wait is a number of seconds, 0 or more"))?;
    let wait = Duration::from_secs(wait).min(MAX_WAIT);
    cp.seen.saw(&device.uuid);
    if wait.is_zero() {
        // The key's lookup read the change count: one query in all while
        // the fleet's copy is current.
        let target = ops::targets::of(&cp, &device).await?;
        return Ok(changed_target(&headers, &target).unwrap_or_else(|| not_modified(&target)));
    }
    let deadline = tokio::time::Instant::now() + wait;
    // The fleet the key found holds for the whole wait: a device never
    // moves to another. Subscribe before reading the target again, so a
    // change since the key was looked up, or between that read and the
    // wait, still wakes this request.
    let uuid = device.uuid;
    let fleet = device.fleet;
    let mut changes = cp.changes.subscribe(&fleet);
    let mut stopping = cp.changes.stopping();
    let mut device = ops::devices::keyed(&cp, &uuid).await?;
    let mut target = ops::targets::of(&cp, &device).await?;
    loop {
        if let Some(response) = changed_target(&headers, &target) {
            return Ok(response);
        }
        let now = tokio::time::Instant::now();
        let stopped = *stopping.borrow();
        if now >= deadline || stopped {
            return Ok(not_modified(&target));
        }
        // Wait for word of a change, the next recheck or the end of the
        // wait. A server shutting down answers at once rather than keep
        // every held device (and so its own exit) waiting out the wait.
        let until = deadline.min(now + RECHECK);
        let told = tokio::select! {
            woke = tokio::time::timeout_at(until, changes.changed()) => match woke {
                Ok(Ok(())) => true,
                Ok(Err(_)) => {
                    // No sender left: no more word will come; wait out the time.
                    tokio::time::sleep_until(until).await;
                    false
                }
                Err(_) => false,
            },
            // The borrow `wait_for` returns is not `Send`; drop it here.
            () = async { drop(stopping.wait_for(|s| *s).await) } => false,
        };
        // Work the target out again only if it may have changed: when told
        // so, or when another process counted a change this one was not
        // told of. A recheck that finds nothing costs one small read.
        let now = ops::devices::keyed(&cp, &uuid).await?;
        if told || now.generation != device.generation {
            device = now;
            target = ops::targets::of(&cp, &device).await?;
        }
    }
}

/// `PATCH /device/v1/state`: the calling device says what changed.
#[utoipa::path(patch, path = "/device/v1/state", tag = "device", request_body = CurrentState, security(("device_key" = [])), responses((status = 204, description = "Recorded.")))]
pub(super) async fn report_state(
    cp: Cp,
    DeviceKey { device }: DeviceKey,
    JsonBody(body): JsonBody<CurrentState>,
) -> Answer {
    ops::reports::report_state(&cp, &device, body).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /device/v1/logs`: a batch of the calling device's log lines.
#[utoipa::path(post, path = "/device/v1/logs", tag = "device", request_body = LogBatch, security(("device_key" = [])), responses((status = 204, description = "Stored.")))]
pub(super) async fn upload_logs(
    cp: Cp,
    DeviceKey { device }: DeviceKey,
    JsonBody(body): JsonBody<LogBatch>,
) -> Answer {
    ops::reports::add_logs(&cp, &device, body).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
