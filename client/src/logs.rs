//! Device logs: read a page at a time, or followed as they grow.

use std::time::Duration;

use kelp_core::api::StoredLogLine;

use crate::{Client, Error};

/// Most log lines the cloud sends for one read.
pub const MAX_LOG_READ: u32 = 1000;

/// How often [`LogFollower::next`] asks for new lines while there are
/// none: a new line shows within a second, and an idle follower costs the
/// cloud one small read a second.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Which log lines [`Client::logs`] reads.
#[derive(Clone, Debug, Default)]
pub struct LogQuery<'a> {
    /// Only this service's.
    pub service: Option<&'a str>,
    /// Only lines after this id; without it, the newest lines.
    pub after: Option<i64>,
    /// At most this many (100 when absent; at most [`MAX_LOG_READ`]).
    pub limit: Option<u32>,
}

impl Client {
    /// Log lines of the device, oldest first: the newest ones, or with
    /// `after` the first ones after that id.
    pub async fn logs(&self, uuid: &str, q: &LogQuery<'_>) -> Result<Vec<StoredLogLine>, Error> {
        let after = q.after.map(|a| a.to_string());
        let limit = q.limit.map(|l| l.to_string());
        let query: Vec<(&str, &str)> = [
            ("service", q.service),
            ("after", after.as_deref()),
            ("limit", limit.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
        let path = ["api", "v1", "devices", uuid, "logs"];
        self.get(&path, &query).await
    }

    /// Follows the device's log from the line after id `after` (0 for its
    /// start; the last id [`Client::logs`] gave to go on from there).
    pub fn follow_logs(&self, uuid: &str, service: Option<&str>, after: i64) -> LogFollower {
        LogFollower {
            client: self.clone(),
            uuid: uuid.to_owned(),
            service: service.map(str::to_owned),
            after,
            interval: FOLLOW_INTERVAL,
        }
    }
}

/// A device's log as it grows: each [`LogFollower::next`] gives the lines
/// that came since the last, waiting for some to come.
#[derive(Debug)]
pub struct LogFollower {
    client: Client,
    uuid: String,
    service: Option<String>,
    after: i64,
    interval: Duration,
}

impl LogFollower {
    /// Asks for new lines every `interval` while there are none (default
    /// [`FOLLOW_INTERVAL`]).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The id of the last line given.
    pub fn last_id(&self) -> i64 {
        self.after
    }

    /// The next lines, oldest first: at least one, at most
    /// [`MAX_LOG_READ`]; waits until there are some.
    pub async fn next(&mut self) -> Result<Vec<StoredLogLine>, Error> {
        loop {
            let q = LogQuery {
                service: self.service.as_deref(),
                after: Some(self.after),
                limit: Some(MAX_LOG_READ),
            };
            let lines = self.client.logs(&self.uuid, &q).await?;
            if let Some(last) = lines.last() {
                self.after = last.id;
                return Ok(lines);
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}
