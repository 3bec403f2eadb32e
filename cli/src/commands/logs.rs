//! `kelp logs`: a device's log lines, and with `--follow` the new ones as
//! they arrive.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use kelp_core::api::{LogStream, StoredLogLine};

use crate::cloud::{Cloud, decode};
use crate::output::{self, OutputArg};

/// Most lines the cloud answers with at once (its own limit).
const MAX_LINES: u32 = 1000;

/// How often `--follow` asks for new lines: often enough to feel live,
/// seldom enough that a terminal left open costs the cloud little.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Print a device's log lines, and with `--follow` the new ones.
///
/// Lines are printed oldest first as `TIME SERVICE LINE`, stderr lines
/// marked `[stderr]`. With `--output json` they are the API's JSON: one
/// array, or with `--follow` one object a line, so it can go on printing.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The device's uuid.
    device: String,

    /// Only this service's lines.
    #[arg(long)]
    service: Option<String>,

    /// Keep printing new lines as they arrive, until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,

    /// How many of the newest lines to print first (0 to 1000).
    #[arg(long, short = 'n', default_value_t = 100)]
    lines: u32,

    #[command(flatten)]
    output: OutputArg,
}

impl LogsArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if self.lines > MAX_LINES {
            bail!("--lines is at most {MAX_LINES}, the most the cloud sends at once");
        }
        let cloud = Cloud::from_session()?;
        let path = ["api", "v1", "devices", self.device.as_str(), "logs"];
        let mut base: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = &self.service {
            base.push(("service", s));
        }
        let mut last = 0;
        if self.lines > 0 {
            let limit = self.lines.to_string();
            let mut query = base.clone();
            query.push(("limit", &limit));
            let page = cloud.get(&path, &query).await?;
            last = self.print(&page)?.1.unwrap_or(0);
        } else if self.follow {
            // Nothing to print first: only where the log ends now.
            let page = cloud.get(&path, &[("limit", "1")]).await?;
            let newest: Vec<StoredLogLine> = decode(&page)?;
            last = newest.last().map_or(0, |l| l.id);
        }
        if !self.follow {
            return Ok(ExitCode::SUCCESS);
        }
        let limit = MAX_LINES.to_string();
        loop {
            let after = last.to_string();
            let mut query = base.clone();
            query.extend([("after", after.as_str()), ("limit", &limit)]);
            let page = cloud.get(&path, &query).await?;
            let (printed, last_id) = self.print(&page)?;
            if let Some(id) = last_id {
                last = id;
            }
            let full = printed >= MAX_LINES as usize;
            // A full page means more are waiting: ask again at once.
            if !full {
                tokio::time::sleep(FOLLOW_INTERVAL).await;
            }
        }
    }

    /// Prints a page of lines; how many, and the id of the last.
    fn print(&self, page: &[u8]) -> anyhow::Result<(usize, Option<i64>)> {
        let lines: Vec<StoredLogLine> = decode(page)?;
        let last = lines.last().map(|l| l.id);
        if self.output.json() && !self.follow {
            output::print_json(page)?;
            return Ok((lines.len(), last));
        }
        for l in &lines {
            if self.output.json() {
                // One object a line, so a follower can go on printing.
                println!("{}", serde_json::to_string(l)?);
                continue;
            }
            let mark = if l.stream == LogStream::Stderr {
                " [stderr]"
            } else {
                ""
            };
            println!("{} {}{mark} {}", output::time_ms(l.time), l.service, l.line);
        }
        Ok((lines.len(), last))
    }
}
