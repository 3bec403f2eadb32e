//! `/api/v1/devices`: devices, their names, tags, restarts, samples and
//! logs.

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::extract::{AtDevice, JsonBody, User};
use super::{Answer, Cp, Q, json, path, query};
use crate::db;
use crate::ops::{
    self, DeviceUpdate, DeviceView, ErrorBody, RestartRequested, ServiceSample, ServiceSamples,
    StoredLogLine, TagValue,
};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceFilter {
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    fleet: Option<String>,
    /// Only devices whose uuid sorts after this one: the last uuid of the
    /// previous page.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    after: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(DeviceFilter), security(("api_token" = [])), responses((status = 200, description = "One page of devices, by uuid.", body = Vec<DeviceView>), (status = 404, description = "No fleet of the name `fleet` gives.", body = ErrorBody)))]
pub(super) async fn list_devices(cp: Cp, _user: User, filter: Q<DeviceFilter>) -> Answer {
    let f = query(filter)?;
    let page = ops::devices::page(&cp, f.fleet.as_deref(), f.after.as_deref(), f.limit).await?;
    let mut views = Vec::with_capacity(page.len());
    for d in page {
        views.push(ops::devices::view(&cp, d).await?);
    }
    Ok(json(views))
}

#[utoipa::path(get, path = "/api/v1/devices/{uuid}", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), security(("api_token" = [])), responses((status = 200, description = "The device.", body = DeviceView), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn show_device(cp: Cp, _user: User, at: AtDevice) -> Answer {
    let device = at.find(&cp).await?;
    Ok(json(ops::devices::view(&cp, device).await?))
}

/// `PATCH /api/v1/devices/{uuid}`: renames a device. The name is only
/// shown to people, so no device's target changes.
#[utoipa::path(patch, path = "/api/v1/devices/{uuid}", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$")), request_body = DeviceUpdate, security(("api_token" = [])), responses((status = 200, description = "The device as it is now.", body = DeviceView), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn update_device(
    cp: Cp,
    user: User,
    at: AtDevice,
    JsonBody(body): JsonBody<DeviceUpdate>,
) -> Answer {
    let device = at.find(&cp).await?;
    if let Some(name) = &body.name {
        ops::devices::rename(&cp, &user.token_id, &device, name).await?;
    }
    let device = ops::devices::find(&cp, &device.uuid).await?;
    Ok(json(ops::devices::view(&cp, device).await?))
}

/// `PUT /api/v1/devices/{uuid}/tags/{tag}`: sets a tag; answers the device.
#[utoipa::path(put, path = "/api/v1/devices/{uuid}/tags/{tag}", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("tag" = String, Path, description = "The tag's name.", pattern = r"^[A-Za-z0-9._+-]{1,64}$")), request_body = TagValue, security(("api_token" = [])), responses((status = 200, description = "The device with the tag set.", body = DeviceView), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn set_tag(
    cp: Cp,
    _user: User,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(body): JsonBody<TagValue>,
) -> Answer {
    let (uuid, tag) = path(p)?;
    let device = ops::devices::set_tag(&cp, &uuid, &tag, &body.value).await?;
    Ok(json(ops::devices::view(&cp, device).await?))
}

/// `DELETE /api/v1/devices/{uuid}/tags/{tag}`.
#[utoipa::path(delete, path = "/api/v1/devices/{uuid}/tags/{tag}", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("tag" = String, Path, description = "The tag's name.", pattern = r"^[A-Za-z0-9._+-]{1,64}$")), security(("api_token" = [])), responses((status = 204, description = "Removed."), (status = 404, description = "No such device, or it has no such tag.", body = ErrorBody)))]
pub(super) async fn delete_tag(
    cp: Cp,
    _user: User,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    let (uuid, tag) = path(p)?;
    ops::devices::delete_tag(&cp, &uuid, &tag).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/devices/{uuid}/services/{service}/restart`: asks the
/// device to restart one service it runs.
#[utoipa::path(post, path = "/api/v1/devices/{uuid}/services/{service}/restart", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), ("service" = String, Path, description = "A service the device reports.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")), security(("api_token" = [])), responses((status = 202, description = "Asked: the device restarts the service when it next hears from the cloud.", body = RestartRequested), (status = 404, description = "No such device, or it reports no such service.", body = ErrorBody)))]
pub(super) async fn restart_service(
    cp: Cp,
    user: User,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    let (uuid, service) = path(p)?;
    let (_, count) = ops::devices::restart(&cp, &user.token_id, &uuid, &service).await?;
    let body = RestartRequested { service, count };
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct SamplesQuery {
    /// Seconds since the epoch; the last hour when absent.
    since: Option<i64>,
}

/// `GET /api/v1/devices/{uuid}/samples?since=`: each service's memory and
/// restarts over time.
#[utoipa::path(get, path = "/api/v1/devices/{uuid}/samples", tag = "devices", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), SamplesQuery), security(("api_token" = [])), responses((status = 200, description = "Each service's samples (memory, restarts), oldest first, kept for a day.", body = BTreeMap<String, Vec<ServiceSample>>), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn device_samples(
    cp: Cp,
    _user: User,
    at: AtDevice,
    q: Q<SamplesQuery>,
) -> Answer {
    let device = at.find(&cp).await?;
    let since = query(q)?.since.unwrap_or_else(|| db::now() - 60 * 60);
    let samples: ServiceSamples = ops::reports::samples(&cp, &device.uuid, since).await?;
    Ok(json(samples))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only lines numbered after this one: the last `id` the caller saw.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Only this service's lines.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    service: Option<String>,
}

/// `GET /api/v1/devices/{uuid}/logs[?limit=N][&after=ID][&service=NAME]`:
/// the newest lines, or with `after` the first lines after that one; oldest
/// first either way.
#[utoipa::path(get, path = "/api/v1/devices/{uuid}/logs", tag = "logs", params(("uuid" = String, Path, description = "The device's uuid.", pattern = r"^[A-Za-z0-9_-]{1,64}$"), LogQuery), security(("api_token" = [])), responses((status = 200, description = "Log lines, oldest first. To follow the log, ask again with `after` set to the last `id` seen.", body = Vec<StoredLogLine>), (status = 404, description = "No such device.", body = ErrorBody)))]
pub(super) async fn device_logs(cp: Cp, _user: User, at: AtDevice, q: Q<LogQuery>) -> Answer {
    let device = at.find(&cp).await?;
    let q = query(q)?;
    let read = ops::reports::LogRead {
        service: q.service.as_deref(),
        after: q.after,
        limit: q.limit,
    };
    let lines: Vec<StoredLogLine> = ops::reports::logs(&cp, &device.uuid, read)
        .await?
        .into_iter()
        .map(ops::reports::log_view)
        .collect();
    Ok(json(lines))
}
