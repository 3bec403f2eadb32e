//! What every bench shares: percentiles and the table the figures print in.

#![allow(
    dead_code,
    reason = "each bench compiles this module and uses part of it"
)]

use std::time::Duration;

/// The `p`-th percentile (0.0 to 1.0) of times sorted in ascending order.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Prints a Markdown table, each column as wide as its widest cell.
pub fn print_table<const N: usize>(headers: [&str; N], rows: &[[String; N]]) {
    let mut widths = headers.map(|h| h.chars().count());
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let padded: Vec<String> = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    println!();
    line(&headers.map(String::from));
    println!("|{}|", widths.map(|w| "-".repeat(w + 2)).join("|"));
    for row in rows {
        line(row);
    }
}

/// One row of a bench that checks a target: Kelp's figure beside the
/// baseline measured in the same run.
pub struct Row {
    pub what: String,
    pub kelp: String,
    pub baseline: String,
    pub target: String,
    /// Whether the target was met; `None` where a row has no target.
    pub met: Option<bool>,
}

/// Prints rows with targets as a table.
pub fn print_rows(rows: &[Row]) {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.what.clone(),
                r.kelp.clone(),
                r.baseline.clone(),
                r.target.clone(),
                match r.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "—".into(),
                },
            ]
        })
        .collect();
    print_table(
        [
            "measurement",
            "kelp",
            "baseline (same run)",
            "target",
            "met",
        ],
        &cells,
    );
}

/// What one run of requests against a server measured.
pub struct Load {
    pub requests: usize,
    pub elapsed: Duration,
    /// Every measured request's latency, in ascending order.
    pub latencies: Vec<Duration>,
    /// Cores the server and the client kept busy while measured.
    pub server_cores: f64,
    pub client_cores: f64,
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    pub fn cpu(&self) -> String {
        format!(
            "CPU server {:.2} + client {:.2} cores",
            self.server_cores, self.client_cores
        )
    }
}

/// CPU time (user and system) process `pid` has used so far, from
/// `/proc/PID/stat`.
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant of the system and touches no memory.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// The cores process `pid` (the server) and this process (the client) keep
/// busy from `from` to `until`, measured in the background.
pub fn server_and_client_cores(
    pid: u32,
    from: std::time::Instant,
    until: std::time::Instant,
) -> tokio::task::JoinHandle<(f64, f64)> {
    let pid = pid.to_string();
    tokio::spawn(async move {
        tokio::time::sleep_until(from.into()).await;
        let (server, client) = (cpu_time(&pid), cpu_time("self"));
        tokio::time::sleep_until(until.into()).await;
        let wall = until.duration_since(from) + until.elapsed();
        (
            (cpu_time(&pid) - server).as_secs_f64() / wall.as_secs_f64(),
            (cpu_time("self") - client).as_secs_f64() / wall.as_secs_f64(),
        )
    })
}

/// The clock of a load run: connections open, then wait for `start`; they
/// send from then on, and what ends between `from` (after the warm-up) and
/// `until` is measured.
#[derive(Clone, Copy)]
pub struct Window {
    pub start: std::time::Instant,
    pub from: std::time::Instant,
    pub until: std::time::Instant,
}

impl Window {
    /// A window opening shortly (connections get a moment to open).
    pub fn new(warmup: Duration, measure: Duration) -> Window {
        let start = std::time::Instant::now() + Duration::from_millis(200);
        Window {
            start,
            from: start + warmup,
            until: start + warmup + measure,
        }
    }

    /// Whether a request sent at `sent` and answered at `done` counts.
    pub fn measures(&self, sent: std::time::Instant, done: std::time::Instant) -> bool {
        sent >= self.from && done <= self.until
    }
}

impl Load {
    /// The load each connection's task measured (its latencies) in
    /// `window`, with the cores the server (`pid`) and this process used.
    pub async fn run(
        pid: u32,
        window: Window,
        connections: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
    ) -> Load {
        let cpu = server_and_client_cores(pid, window.from, window.until);
        let mut latencies = Vec::new();
        for c in connections {
            latencies.extend(c.await.unwrap());
        }
        latencies.sort();
        let (server_cores, client_cores) = cpu.await.unwrap();
        Load {
            requests: latencies.len(),
            elapsed: window.until.duration_since(window.from),
            latencies,
            server_cores,
            client_cores,
        }
    }
}

/// Stops a server this bench started: SIGTERM (a clean stop, closing its
/// database connections), up to ten seconds to exit, then SIGKILL.
pub fn stop(child: &mut std::process::Child) {
    // SAFETY: kill(2) on a child the caller owns and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
