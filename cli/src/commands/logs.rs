//! `kelp logs`: a device's log lines, and with `--follow` the new ones as
//! they arrive.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use kelp_core::api::{LogStream, StoredLogLine};

use kelp_client::LogQuery;

use crate::cloud::ForUser as _;
use crate::output::{self, OutputArg};

/// Most lines the cloud answers with at once (its own limit).
const MAX_LINES: u32 = kelp_client::MAX_LOG_READ;

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
        let cloud = crate::cloud::from_session()?;
        let service = self.service.as_deref();
        let mut last = 0;
        if self.lines > 0 {
            let q = LogQuery {
                service,
                after: None,
                limit: Some(self.lines),
            };
            let lines = cloud.logs(&self.device, &q).await.for_user()?;
            if self.output.json() && !self.follow {
                output::print_value(&lines)?;
                return Ok(ExitCode::SUCCESS);
            }
            last = self.print(&lines)?.unwrap_or(0);
        } else if self.follow {
            // Nothing to print first: only where the log ends now.
            let q = LogQuery {
                service,
                after: None,
                limit: Some(1),
            };
            let newest = cloud.logs(&self.device, &q).await.for_user()?;
            last = newest.last().map_or(0, |l| l.id);
        }
        if !self.follow {
            return Ok(ExitCode::SUCCESS);
        }
        // Asks again at once while lines are waiting, every
        // FOLLOW_INTERVAL while none are.
        let mut follower = cloud
            .follow_logs(&self.device, service, last)
            .interval(FOLLOW_INTERVAL);
        loop {
            let lines = follower.next().await.for_user()?;
            self.print(&lines)?;
        }
    }

    /// Prints `lines` (one JSON object a line with `--output json`); the
    /// id of the last.
    fn print(&self, lines: &[StoredLogLine]) -> anyhow::Result<Option<i64>> {
        for l in lines {
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
        Ok(lines.last().map(|l| l.id))
    }
}
