//! How fleet commands print: an aligned table for people, or with
//! `--output json` the fleet API's JSON as it came.

use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// The fleet API's JSON, as it answered.
    Json,
}

/// `--output`, for every command that lists or shows.
#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArg {
    /// How to print: an aligned table, or the API's JSON as it is.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

impl OutputArg {
    pub fn json(self) -> bool {
        self.output == Format::Json
    }
}

/// Prints an answer of the fleet API byte for byte, ending in a newline.
pub fn print_json(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Prints `value` as JSON, as the cloud sent it.
pub fn print_value(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(value)?;
    print_json(&bytes)
}

/// Prints `rows` under `headers`, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(headers, rows));
}

fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Prints `name: value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        let pad = width - k.len();
        println!("{k}:{:pad$} {v}", "");
    }
}

/// Unix seconds as a UTC time (`2026-11-26T08:11:15Z`).
pub fn time(secs: i64) -> String {
    match u64::try_from(secs) {
        Ok(s) => humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .to_string(),
        Err(_) => secs.to_string(),
    }
}

/// Unix milliseconds as a UTC time with milliseconds.
pub fn time_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
        Err(_) => ms.to_string(),
    }
}

/// A value or `-` for none.
pub fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_however_wide_their_characters() {
        let rows = vec![
            vec![
                "pump-1".to_owned(),
                "Pompe près du lac".to_owned(),
                "x".to_owned(),
            ],
            vec!["a".to_owned(), "-".to_owned(), "".to_owned()],
        ];
        assert_eq!(
            render_table(&["UUID", "NAME", "LAST"], &rows),
            "UUID    NAME               LAST\n\
             pump-1  Pompe près du lac  x\n\
             a       -\n"
        );
    }

    #[test]
    fn times_are_utc_and_a_negative_one_is_shown_as_it_is() {
        assert_eq!(time(1_764_130_000), "2025-11-26T04:06:40Z");
        assert_eq!(time_ms(1_764_130_000_123), "2025-11-26T04:06:40.123Z");
        assert_eq!(time(-5), "-5");
    }
}
