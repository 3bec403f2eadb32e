//! A device's log lines as they arrive: `GET /devices/{uuid}/logs/stream`
//! answers Server-Sent Events, one `line` event per stored line, each with
//! the line's number as its id, so a browser that loses the connection
//! resumes after the last line it got (`Last-Event-ID`) and misses none.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::watch;

use super::DashError;
use super::session::Session;
use crate::ControlPlane;
use crate::ops::{self, reports::LogRead};

/// How often a stream looks for new lines without word of any: lines
/// another `kelp-cloud` process stored (on a shared PostgreSQL) reach this
/// one's streams at most this late. One small indexed read per open page.
pub const LOG_RECHECK: Duration = Duration::from_secs(2);

/// Most lines read from the database at once; a stream resuming far behind
/// catches up in reads of this size rather than one unbounded read.
pub const LOG_STREAM_BATCH: i64 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Only this service's lines.
    service: Option<String>,
    /// Lines numbered after this one (the last the page shows); without
    /// it, only lines that arrive from now on.
    after: Option<i64>,
}

struct Follow {
    cp: ControlPlane,
    uuid: String,
    service: String,
    after: i64,
    pending: VecDeque<crate::db::LogRow>,
    news: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
}

impl Follow {
    /// The next line, waiting for one; `None` when the server stops or the
    /// database fails (the browser then reconnects and resumes).
    async fn next(&mut self) -> Option<crate::db::LogRow> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                self.after = line.seq;
                return Some(line);
            }
            if *self.stopping.borrow() {
                return None;
            }
            // Marked seen before reading, so word of a batch stored during
            // the read is not lost.
            self.news.mark_unchanged();
            let read = LogRead {
                service: (!self.service.is_empty()).then_some(self.service.as_str()),
                after: Some(self.after),
                limit: Some(LOG_STREAM_BATCH),
            };
            match ops::reports::logs(&self.cp, &self.uuid, read).await {
                Ok(lines) if !lines.is_empty() => {
                    self.pending.extend(lines);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, uuid = %self.uuid, "cannot read log lines to stream");
                    return None;
                }
            }
            tokio::select! {
                _ = self.news.changed() => {}
                () = tokio::time::sleep(LOG_RECHECK) => {}
                () = async { drop(self.stopping.wait_for(|s| *s).await) } => return None,
            }
        }
    }
}

fn event(line: &crate::db::LogRow) -> Event {
    let data = serde_json::json!({
        "id": line.seq,
        "time": line.time_ms,
        "service": line.service,
        "stream": line.stream,
        "line": line.line,
    });
    Event::default()
        .id(line.seq.to_string())
        .event("line")
        .data(data.to_string())
}

/// `GET /devices/{uuid}/logs/stream?service=&after=`.
pub async fn stream(
    State(cp): State<ControlPlane>,
    _session: Session,
    Path(uuid): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, DashError> {
    let Query(q) = query.map_err(|e| DashError::bad_request(e.body_text()))?;
    let device = ops::devices::find(&cp, &uuid).await?;
    let service = q.service.unwrap_or_default();
    if !service.is_empty() {
        ops::check_service_name("service", &service)?;
    }
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| DashError::bad_request("Last-Event-ID is not a line number"))?,
        ),
        None => q.after,
    };
    if resume.is_some_and(|n| n < 0) {
        return Err(DashError::bad_request("after is a line number, 0 or more"));
    }
    // Subscribe before the first read, so no line stored in between is
    // missed.
    let news = cp.logs.subscribe(&device.uuid);
    let after = match resume {
        Some(n) => n,
        None => {
            let newest = LogRead {
                limit: Some(1),
                ..LogRead::default()
            };
            let lines = ops::reports::logs(&cp, &device.uuid, newest).await?;
            lines.last().map_or(0, |l| l.seq)
        }
    };
    let follow = Follow {
        stopping: cp.changes.stopping(),
        cp,
        uuid: device.uuid,
        service,
        after,
        pending: VecDeque::new(),
        news,
    };
    let events = futures_util::stream::unfold(follow, |mut f| async move {
        let line = f.next().await?;
        Some((Ok::<_, Infallible>(event(&line)), f))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
