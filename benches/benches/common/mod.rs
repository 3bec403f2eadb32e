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
