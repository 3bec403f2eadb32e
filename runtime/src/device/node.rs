//! One device as kelpd runs it: its supervisor, the images it may fetch,
//! what it refused and why, which release runs and how its update went,
//! and where each service's output goes.
//!
//! Both ways of running kelpd share it: a local target file and a cloud's
//! target state are applied to it the same way (by the `target` module),
//! and the local device API and `status.json` read it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use kelp_core::api::{LogLine as CloudLine, LogStream, UpdateState};
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;

use kelp_hostcalls::HardwareMap;

use super::images::ImageStore;
use crate::{LogEvent, ServiceHandle, Stream, Supervisor};

/// Status is written at most this often, so a crash-looping service does not
/// wear out a device's flash.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(200);

/// Recent lines kept per service for the local device API.
pub const RECENT_LINES: usize = 1000;

/// The release a device runs and how its last update went, as status shows
/// them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Release {
    /// Version and id of the release running, if the cloud gave one.
    pub version: Option<String>,
    pub id: Option<String>,
    pub update: Option<Update>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Update {
    pub state: UpdateState,
    /// Version of the release the outcome is about.
    pub release: Option<String>,
    pub reason: Option<String>,
}

/// One line of a service's recent output.
#[derive(Clone, Debug, Serialize)]
pub struct RecentLine {
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    pub stream: Stream,
    pub line: String,
}

/// Where lines go to reach the cloud (the agent's outbox).
pub trait CloudLines: Send + Sync {
    /// Keeps `lines` to send.
    fn push_all(&self, lines: &mut dyn Iterator<Item = CloudLine>) -> std::io::Result<()>;
}

/// Where services' output goes: kelpd's stdout, a short history per service
/// for the local API, and the cloud's outbox once the device follows one.
pub struct LogSinks {
    recent: Mutex<BTreeMap<String, VecDeque<RecentLine>>>,
    outbox: OnceLock<Arc<dyn CloudLines>>,
}

impl LogSinks {
    pub fn new() -> Arc<LogSinks> {
        Arc::new(LogSinks {
            recent: Mutex::default(),
            outbox: OnceLock::new(),
        })
    }

    /// From now on lines also go to the cloud through `outbox`.
    pub fn send_to(&self, outbox: Arc<dyn CloudLines>) {
        let _ = self.outbox.set(outbox);
    }

    fn recent_lock(&self) -> MutexGuard<'_, BTreeMap<String, VecDeque<RecentLine>>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest `n` lines of `service`, oldest first; `None` for a service
    /// that never wrote or ran.
    pub fn recent(&self, service: &str, n: usize) -> Option<Vec<RecentLine>> {
        let recent = self.recent_lock();
        let lines = recent.get(service)?;
        Some(
            lines
                .iter()
                .skip(lines.len().saturating_sub(n))
                .cloned()
                .collect(),
        )
    }

    /// Keeps a batch of `service`'s lines: one write to the outbox and one
    /// lock for the history, however many lines.
    fn keep(&self, service: &str, lines: Vec<RecentLine>) {
        if let Some(outbox) = self.outbox.get() {
            let mut sent = lines.iter().map(|line| CloudLine {
                time: line.time,
                service: service.to_owned(),
                stream: match line.stream {
                    Stream::Stdout => LogStream::Stdout,
                    Stream::Stderr => LogStream::Stderr,
                },
                line: line.line.clone(),
            });
            if let Err(error) = outbox.push_all(&mut sent) {
                tracing::warn!(%error, "cannot keep log lines for the cloud");
            }
        }
        let mut recent = self.recent_lock();
        let kept = recent.entry(service.to_owned()).or_default();
        for line in lines {
            if kept.len() == RECENT_LINES {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    }

    /// The supervisor's start hook: each service's output is printed on
    /// kelpd's stdout as `<time> <service> | <text>` (`!` for stderr) and
    /// kept as above.
    pub fn forwarder(self: &Arc<Self>) -> impl Fn(&ServiceHandle) + Send + Sync + 'static {
        let sinks = self.clone();
        move |service: &ServiceHandle| {
            let name = service.name().to_owned();
            let logs = service.logs();
            let sinks = sinks.clone();
            tokio::spawn(async move {
                let mut out = tokio::io::stdout();
                let mut stdout_open = true;
                while let Some(events) = logs.next().await {
                    let mut text = String::new();
                    let mut lines = Vec::with_capacity(events.len());
                    for event in events {
                        let line = match event {
                            LogEvent::Line(line) => {
                                let stamp = humantime::format_rfc3339_millis(line.at);
                                let mark = if line.stream == Stream::Stderr {
                                    '!'
                                } else {
                                    '|'
                                };
                                text.push_str(&format!("{stamp} {name} {mark} {}\n", line.text));
                                RecentLine {
                                    time: millis(line.at),
                                    stream: line.stream,
                                    line: line.text,
                                }
                            }
                            LogEvent::Dropped(n) => {
                                let note = format!(
                                    "kelp: {n} lines dropped (output faster than delivery)"
                                );
                                text.push_str(&format!("{name} ! {note}\n"));
                                RecentLine {
                                    time: millis(std::time::SystemTime::now()),
                                    stream: Stream::Stderr,
                                    line: note,
                                }
                            }
                        };
                        lines.push(line);
                    }
                    sinks.keep(&name, lines);
                    if stdout_open
                        && (out.write_all(text.as_bytes()).await.is_err()
                            || out.flush().await.is_err())
                    {
                        // Lines still go to the cloud and the local API.
                        stdout_open = false;
                    }
                }
            });
        }
    }
}

fn millis(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Services of the target that do not run as it says, with why.
pub type Refused = BTreeMap<String, String>;

pub struct Node {
    pub supervisor: Arc<Supervisor>,
    /// `None` without a trusted key: such a device runs no images.
    images: Option<ImageStore>,
    refused: Mutex<Refused>,
    release: Mutex<Release>,
    pub logs: Arc<LogSinks>,
    status_path: PathBuf,
    /// The hardware map the device started with (its config's).
    base_map: Arc<HardwareMap>,
    /// The cloud's map in use, as given; `None` while the base one is.
    cloud_map: Mutex<Option<String>>,
    /// Why the cloud's last map is not in use, if it is not.
    map_error: Mutex<Option<String>>,
    /// The highest restart count seen per service (`TargetState::restarts`);
    /// `None` until the first target, whose counts are taken as done.
    restart_counts: Mutex<Option<BTreeMap<String, u64>>>,
}

impl Node {
    pub fn new(
        supervisor: Arc<Supervisor>,
        images: Option<ImageStore>,
        logs: Arc<LogSinks>,
        status_path: PathBuf,
    ) -> Arc<Node> {
        let base_map = supervisor.runtime().hardware().map();
        Arc::new(Node {
            base_map,
            cloud_map: Mutex::default(),
            map_error: Mutex::default(),
            restart_counts: Mutex::default(),
            supervisor,
            images,
            refused: Mutex::default(),
            release: Mutex::default(),
            logs,
            status_path,
        })
    }

    /// Lets the device pull from its cloud's registry (`http(s)://host[:port]`) with
    /// its device key.
    /// Pulls images only from these registries (`host[:port]`).
    pub fn allow_registries(&self, registries: Vec<String>) {
        if let Some(images) = &self.images {
            images.allow_only(registries);
        }
    }

    pub fn set_home_registry(&self, registry: &str, key: &str) {
        if let Some(images) = &self.images {
            images.set_home_registry(registry, key);
        }
    }

    fn refused_lock(&self) -> MutexGuard<'_, Refused> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release_lock(&self) -> MutexGuard<'_, Release> {
        self.release.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Services of the last target applied that do not run as it says.
    pub fn refused(&self) -> Refused {
        self.refused_lock().clone()
    }

    pub fn release(&self) -> Release {
        self.release_lock().clone()
    }

    pub fn set_release(&self, release: Release) {
        *self.release_lock() = release;
        self.save_status();
    }

    /// The store images are fetched into; `None` on a device that trusts
    /// no publisher key.
    pub(crate) fn images(&self) -> Option<&ImageStore> {
        self.images.as_ref()
    }

    /// Notes the services of the target just applied that do not run as it
    /// says, with why.
    pub(crate) fn set_refused(&self, refused: Refused) {
        *self.refused_lock() = refused;
        self.save_status();
    }

    /// Why the hardware map the cloud gave is not in use, if it is not.
    pub fn map_error(&self) -> Option<String> {
        self.map_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Grants hardware by `map` (the cloud's, as TOML) from now on, or by
    /// the device's own map with `None`. Returns whether the map changed.
    pub(crate) fn use_map(&self, map: Option<&str>) -> bool {
        let mut current = self.cloud_map.lock().unwrap_or_else(|p| p.into_inner());
        let mut error = self.map_error.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_deref() == map {
            return false;
        }
        let parsed = match map {
            None => Ok((*self.base_map).clone()),
            Some(text) => HardwareMap::parse(text),
        };
        match parsed {
            Ok(parsed) => {
                tracing::info!(
                    gpio = parsed.gpio.len(),
                    i2c = parsed.i2c.len(),
                    from = if map.is_some() { "cloud" } else { "config" },
                    "hardware map in use"
                );
                self.supervisor.runtime().hardware().set_map(parsed);
                *current = map.map(str::to_owned);
                *error = None;
                true
            }
            Err(e) => {
                let why = format!("the hardware map from the cloud is not valid: {e}");
                tracing::error!(%why, "keeping the hardware map in use");
                *error = Some(why);
                false
            }
        }
    }

    /// The services whose restart count went up since the last target.
    /// Counts only grow here: a rollback to an older target must not make
    /// a later one ask again.
    pub(crate) fn restarts_asked(&self, counts: &BTreeMap<String, u64>) -> Vec<String> {
        let mut seen = self
            .restart_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(seen) = seen.as_mut() else {
            *seen = Some(counts.clone());
            return Vec::new();
        };
        let mut asked = Vec::new();
        for (name, &count) in counts {
            let before = seen.entry(name.clone()).or_insert(0);
            if count > *before {
                *before = count;
                asked.push(name.clone());
            }
        }
        asked
    }

    /// What `status.json` and the local API's status say.
    pub fn status(&self) -> serde_json::Value {
        let refused: Vec<serde_json::Value> = self
            .refused_lock()
            .iter()
            .map(|(name, reason)| serde_json::json!({ "name": name, "reason": reason }))
            .collect();
        serde_json::json!({
            "allocator": self.supervisor.runtime().allocator(),
            "release": self.release(),
            "services": self.supervisor.status(),
            "refused": refused,
        })
    }

    pub fn save_status(&self) {
        let result = serde_json::to_vec_pretty(&self.status())
            .map_err(std::io::Error::other)
            .and_then(|bytes| kelp_core::fsutil::write_atomic(&self.status_path, &bytes));
        if let Err(error) = result {
            tracing::warn!(%error, path = %self.status_path.display(), "cannot write status");
        }
    }

    /// Keeps `status.json` current as services change, until dropped.
    pub async fn write_status(self: Arc<Self>) {
        let mut changes = self.supervisor.changes();
        loop {
            if changes.changed().await.is_err() {
                return;
            }
            tokio::time::sleep(STATUS_DEBOUNCE).await;
            self.save_status();
        }
    }
}
