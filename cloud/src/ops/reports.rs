//! What devices tell the cloud (the state of their services and updates,
//! their log lines, samples of memory and restarts), stored and read back.

use kelp_core::api::{
    CurrentState, LogBatch, LogStream, MAX_EXIT_REASON, MAX_LOG_BATCH, MAX_LOG_LINE,
    ServiceSamples, StoredLogLine,
};

use super::{ApiError, DEFAULT_LOG_READ, MAX_LOG_READ, MAX_SERVICES, check_id, check_service_name};
use crate::ControlPlane;
use crate::db::{self, KeyedDevice, LogRow};

/// Longest reason a device may give for an update's outcome.
const MAX_REASON: usize = 4096;

/// Refuses `id` unless it names a release of `fleet`.
async fn check_release_of(
    cp: &ControlPlane,
    fleet: &str,
    field: &str,
    id: &str,
) -> Result<(), ApiError> {
    check_id(field, id)?;
    let known = match cp.db.release_by_id(id).await? {
        Some(r) => r.fleet == fleet,
        None => false,
    };
    if known {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            "not the id of a release of this device's fleet",
        ))
    }
}

/// Records what `device` says changed: the release it runs, its services,
/// how its last update went.
pub async fn report_state(
    cp: &ControlPlane,
    device: &KeyedDevice,
    state: CurrentState,
) -> Result<(), ApiError> {
    if let Some(id) = &state.release {
        check_release_of(cp, &device.fleet, "release", id).await?;
    }
    if state.services.len() > MAX_SERVICES {
        return Err(ApiError::field(
            "services",
            format!("a device reports at most {MAX_SERVICES} services at once"),
        ));
    }
    let mut services = Vec::with_capacity(state.services.len());
    for (name, report) in state.services {
        let at = format!("services.{name}");
        check_service_name(&at, &name)?;
        let report = match report {
            Some(r) => {
                let memory =
                    r.memory.map(i64::try_from).transpose().map_err(|_| {
                        ApiError::field(format!("{at}.memory"), "memory is too large")
                    })?;
                if let Some(why) = &r.last_exit
                    && why.len() > MAX_EXIT_REASON
                {
                    return Err(ApiError::field(
                        format!("{at}.last_exit"),
                        format!("an exit reason is at most {MAX_EXIT_REASON} bytes"),
                    ));
                }
                Some(db::ServiceReportRow {
                    // Display spells a state as its JSON name does.
                    state: r.state.to_string(),
                    memory,
                    restarts: i64::from(r.restarts),
                    last_exit: r.last_exit,
                })
            }
            None => None,
        };
        services.push(db::ReportedService {
            service: name,
            status: report,
        });
    }
    if let Some(update) = &state.update {
        check_release_of(cp, &device.fleet, "update.release", &update.release).await?;
        if let Some(reason) = &update.reason
            && reason.len() > MAX_REASON
        {
            return Err(ApiError::field(
                "update.reason",
                format!("a reason is at most {MAX_REASON} bytes"),
            ));
        }
    }
    let update = state
        .update
        .as_ref()
        .map(|u| (u.state.to_string(), u.release.as_str(), u.reason.as_deref()));
    cp.db
        .report_state(
            &device.uuid,
            state.release.as_deref(),
            &services,
            update.as_ref().map(|(s, r, why)| (s.as_str(), *r, *why)),
        )
        .await?;
    Ok(())
}

/// Stores a batch of `device`'s log lines, and wakes whoever follows its
/// log.
pub async fn add_logs(
    cp: &ControlPlane,
    device: &KeyedDevice,
    batch: LogBatch,
) -> Result<(), ApiError> {
    if batch.lines.len() > MAX_LOG_BATCH {
        return Err(ApiError::field(
            "lines",
            format!("a batch holds at most {MAX_LOG_BATCH} lines"),
        ));
    }
    let mut rows = Vec::with_capacity(batch.lines.len());
    for (i, l) in batch.lines.into_iter().enumerate() {
        check_service_name(&format!("lines[{i}].service"), &l.service)?;
        if l.line.len() > MAX_LOG_LINE {
            return Err(ApiError::field(
                format!("lines[{i}].line"),
                format!("a log line is at most {MAX_LOG_LINE} bytes"),
            ));
        }
        let stream = match l.stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        };
        // PostgreSQL text cannot hold NUL; a service that prints one
        // should not get its whole batch refused for ever.
        let line = if l.line.contains('\0') {
            l.line.replace('\0', "\u{fffd}")
        } else {
            l.line
        };
        rows.push(LogRow {
            seq: 0,
            time_ms: l.time,
            service: l.service,
            stream: stream.to_owned(),
            line,
        });
    }
    cp.db.add_logs(&device.uuid, &rows).await?;
    cp.logs.notify(&device.uuid);
    Ok(())
}

/// Which of a device's log lines to read.
#[derive(Default)]
pub struct LogRead<'a> {
    /// Only this service's lines.
    pub service: Option<&'a str>,
    /// Only lines numbered after this one; without it, the newest.
    pub after: Option<i64>,
    /// How many at most (by default [`DEFAULT_LOG_READ`]).
    pub limit: Option<i64>,
}

/// Log lines of device `uuid`, oldest first.
pub async fn logs(
    cp: &ControlPlane,
    uuid: &str,
    read: LogRead<'_>,
) -> Result<Vec<LogRow>, ApiError> {
    let limit = read.limit.unwrap_or(DEFAULT_LOG_READ);
    if !(1..=MAX_LOG_READ).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("limit must be 1 to {MAX_LOG_READ}"),
        ));
    }
    if read.after.is_some_and(|a| a < 0) {
        return Err(ApiError::field(
            "after",
            "after is the id of a log line, 0 or more",
        ));
    }
    let service = match read.service {
        Some(s) => {
            check_service_name("service", s)?;
            s
        }
        None => "",
    };
    Ok(cp.db.logs(uuid, service, read.after, limit).await?)
}

/// A stored line as the API shows it.
pub fn log_view(l: LogRow) -> StoredLogLine {
    StoredLogLine {
        id: l.seq,
        time: l.time_ms,
        service: l.service,
        stream: if l.stream == "stderr" {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        },
        line: l.line,
    }
}

/// Each service's samples of device `uuid` since `since` (seconds), oldest
/// first.
pub async fn samples(
    cp: &ControlPlane,
    uuid: &str,
    since: i64,
) -> Result<ServiceSamples, ApiError> {
    Ok(cp.db.service_samples(uuid, since).await?)
}
