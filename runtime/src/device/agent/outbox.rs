//! Log lines on their way to the cloud, kept on disk until it has them.
//!
//! A device may be out of reach of its cloud for days, and may lose power
//! or be killed meanwhile: lines wait in segment files under
//! `<data-dir>/device/logs/`, appended one whole line per write. The
//! outbox holds at most its bound in bytes; past it the oldest segment
//! goes, and the lines lost are counted and sent, as a line of their own,
//! with the next batch.
//!
//! ```text
//! logs/0000000000000007.jsonl   one JSON log line per line, oldest segment first
//! logs/cursor                   "<segment> <offset> <dropped>": where sending resumes
//! ```
//!
//! Lines are written without `fsync`: a killed kelpd loses none (they are
//! in the kernel), a power cut may lose the last few seconds.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use kelp_core::api::{LogLine, LogStream};
use kelp_core::fsutil;
use tokio::sync::Notify;

use crate::device::node::CloudLines;

/// Most lines in one batch (the cloud's limit).
pub const MAX_BATCH_LINES: usize = 1000;
/// Most bytes of lines in one batch, well under the cloud's 1 MiB body.
const MAX_BATCH_BYTES: usize = 512 << 10;
/// Longest line sent (the cloud's limit); longer ones are cut.
const MAX_LINE: usize = 4096;
/// The service name lines about the device itself go under.
pub const DEVICE_SERVICE: &str = "kelpd";

/// Where sending resumes: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    segment: u64,
    offset: u64,
}

/// A batch read from the outbox, acknowledged once the cloud took it.
#[derive(Debug)]
pub struct Batch {
    pub lines: Vec<LogLine>,
    /// Where sending resumes once these are delivered.
    next: Cursor,
    /// How many dropped lines the batch's first line reports.
    dropped: u64,
}

struct Segment {
    id: u64,
    bytes: u64,
    lines: u64,
}

struct Inner {
    /// Oldest first; the last is appended to.
    segments: VecDeque<Segment>,
    active: File,
    cursor: Cursor,
    /// Lines lost to the bound and not yet reported.
    dropped: u64,
    /// Lines read past the cursor in the oldest segment (to count what a
    /// dropped segment held that was not sent).
    sent_in_first: u64,
}

pub struct Outbox {
    dir: PathBuf,
    bound: u64,
    inner: Mutex<Inner>,
    ready: Notify,
}

impl Outbox {
    /// Opens (or makes) the outbox in `dir`, holding at most about `bound`
    /// bytes.
    pub fn open(dir: &Path, bound: u64) -> std::io::Result<Outbox> {
        std::fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".jsonl")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut segments = VecDeque::new();
        for id in ids {
            let path = segment_path(dir, id);
            let (bytes, lines) = count_lines(&path)?;
            segments.push_back(Segment { id, bytes, lines });
        }
        let (mut cursor, dropped) = read_cursor(dir);
        // A cursor into a segment that is gone starts at the oldest left.
        let first = segments.front().map_or(0, |s| s.id);
        if cursor.segment < first || segments.iter().all(|s| s.id != cursor.segment) {
            cursor = Cursor {
                segment: first,
                offset: 0,
            };
        }
        // Segments sent before a restart, not yet removed.
        while segments.len() > 1 && segments.front().is_some_and(|s| s.id < cursor.segment) {
            if let Some(old) = segments.pop_front() {
                let _ = std::fs::remove_file(segment_path(dir, old.id));
            }
        }
        if segments.is_empty() {
            segments.push_back(Segment {
                id: cursor.segment.max(1),
                bytes: 0,
                lines: 0,
            });
            cursor.segment = cursor.segment.max(1);
        }
        let last = segments.back().map_or(1, |s| s.id);
        let mut active = append(&segment_path(dir, last))?;
        // A line cut short by a kill mid-write is ended here, so it is
        // skipped as damaged rather than swallowing the next one.
        if let Some(s) = segments.back_mut()
            && s.bytes > 0
            && last_byte(&segment_path(dir, last))? != Some(b'\n')
        {
            active.write_all(b"\n")?;
            s.bytes += 1;
            s.lines += 1;
        }
        let sent_in_first = if segments.front().is_some_and(|s| s.id == cursor.segment) {
            lines_before(&segment_path(dir, cursor.segment), cursor.offset)?
        } else {
            0
        };
        let outbox = Outbox {
            dir: dir.to_owned(),
            bound: bound.max(4 * MAX_LINE as u64),
            inner: Mutex::new(Inner {
                segments,
                active,
                cursor,
                dropped,
                sent_in_first,
            }),
            ready: Notify::new(),
        };
        if outbox.pending() {
            outbox.ready.notify_one();
        }
        Ok(outbox)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A segment's size: a sixteenth of the bound, so dropping the oldest
    /// loses a small part of what is kept.
    fn segment_bytes(&self) -> u64 {
        self.bound / 16
    }

    /// Adds a line. Never blocks on the network; a full outbox drops its
    /// oldest segment.
    pub fn push(&self, line: LogLine) -> std::io::Result<()> {
        self.push_all(std::iter::once(line))
    }

    /// Adds lines, in one write: a service's output arrives in batches,
    /// and a write per line would cost a system call each.
    pub fn push_all(&self, lines: impl IntoIterator<Item = LogLine>) -> std::io::Result<()> {
        let mut text = Vec::new();
        let mut count = 0u64;
        for mut line in lines {
            if line.line.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                while !line.line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.line.truncate(cut);
            }
            serde_json::to_writer(&mut text, &line).map_err(std::io::Error::other)?;
            text.push(b'\n');
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        let mut inner = self.lock();
        let full = inner
            .segments
            .back()
            .is_some_and(|s| s.bytes >= self.segment_bytes());
        if full {
            let id = inner.segments.back().map_or(1, |s| s.id + 1);
            inner.active = append(&segment_path(&self.dir, id))?;
            inner.segments.push_back(Segment {
                id,
                bytes: 0,
                lines: 0,
            });
        }
        inner.active.write_all(&text)?;
        if let Some(s) = inner.segments.back_mut() {
            s.bytes += text.len() as u64;
            s.lines += count;
        }
        // Over the bound: the oldest segment goes, and what of it was not
        // sent is counted.
        while inner.segments.iter().map(|s| s.bytes).sum::<u64>() > self.bound
            && inner.segments.len() > 1
        {
            let Some(old) = inner.segments.pop_front() else {
                break;
            };
            if old.id >= inner.cursor.segment {
                let unsent = if old.id == inner.cursor.segment {
                    old.lines.saturating_sub(inner.sent_in_first)
                } else {
                    old.lines
                };
                inner.dropped += unsent;
            }
            if old.id >= inner.cursor.segment {
                let next = inner.segments.front().map_or(old.id + 1, |s| s.id);
                inner.cursor = Cursor {
                    segment: next,
                    offset: 0,
                };
                inner.sent_in_first = 0;
            }
            let _ = std::fs::remove_file(segment_path(&self.dir, old.id));
        }
        drop(inner);
        self.ready.notify_one();
        Ok(())
    }

    /// Whether lines (or a count of dropped ones) wait to be sent.
    pub fn pending(&self) -> bool {
        let inner = self.lock();
        inner.dropped > 0
            || inner.segments.iter().any(|s| {
                s.id > inner.cursor.segment
                    || (s.id == inner.cursor.segment && s.bytes > inner.cursor.offset)
            })
    }

    /// Waits until something may be pending.
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// The oldest unsent lines, up to a batch; empty when nothing waits.
    pub fn batch(&self) -> std::io::Result<Batch> {
        let inner = self.lock();
        let mut lines = Vec::new();
        let dropped = inner.dropped;
        if dropped > 0 {
            lines.push(LogLine {
                time: now_ms(),
                service: DEVICE_SERVICE.to_owned(),
                stream: LogStream::Stderr,
                line: format!(
                    "kelp: {dropped} log lines dropped: the cloud was out of reach longer than the device's log buffer lasts"
                ),
            });
        }
        let mut cursor = inner.cursor;
        let mut bytes = 0usize;
        let from = cursor.segment;
        for segment in inner.segments.iter().filter(|s| s.id >= from) {
            if segment.id > cursor.segment {
                cursor = Cursor {
                    segment: segment.id,
                    offset: 0,
                };
            }
            if cursor.offset >= segment.bytes {
                continue;
            }
            let mut file = File::open(segment_path(&self.dir, segment.id))?;
            file.seek(SeekFrom::Start(cursor.offset))?;
            let mut reader = BufReader::new(file.take(segment.bytes - cursor.offset));
            let mut raw = Vec::new();
            loop {
                if lines.len() >= MAX_BATCH_LINES || bytes >= MAX_BATCH_BYTES {
                    return Ok(Batch {
                        lines,
                        next: cursor,
                        dropped,
                    });
                }
                raw.clear();
                let n = reader.read_until(b'\n', &mut raw)?;
                if n == 0 || raw.last() != Some(&b'\n') {
                    // The end, or a line cut short by a kill mid-write: the
                    // next line starts after what is there.
                    cursor.offset += n as u64;
                    break;
                }
                cursor.offset += n as u64;
                bytes += n;
                // A damaged line is skipped rather than holding up the rest.
                if let Ok(line) = serde_json::from_slice::<LogLine>(&raw) {
                    lines.push(line);
                }
            }
        }
        Ok(Batch {
            lines,
            next: cursor,
            dropped,
        })
    }

    /// The cloud has `batch`: sending resumes after it.
    pub fn delivered(&self, batch: &Batch) -> std::io::Result<()> {
        let mut inner = self.lock();
        inner.dropped = inner.dropped.saturating_sub(batch.dropped);
        // A segment dropped while the batch was on its way moved the cursor
        // past it already.
        if batch.next.segment < inner.cursor.segment {
            return self.save_cursor(&inner);
        }
        if batch.next.segment == inner.cursor.segment {
            let newly = lines_between(
                &segment_path(&self.dir, batch.next.segment),
                inner.cursor.offset,
                batch.next.offset,
            )?;
            inner.sent_in_first += newly;
        } else {
            inner.sent_in_first = lines_before(
                &segment_path(&self.dir, batch.next.segment),
                batch.next.offset,
            )?;
        }
        inner.cursor = batch.next;
        // Segments wholly sent, other than the one appended to, go.
        while inner.segments.len() > 1
            && inner
                .segments
                .front()
                .is_some_and(|s| s.id < inner.cursor.segment)
        {
            if let Some(old) = inner.segments.pop_front() {
                let _ = std::fs::remove_file(segment_path(&self.dir, old.id));
            }
        }
        self.save_cursor(&inner)
    }

    fn save_cursor(&self, inner: &Inner) -> std::io::Result<()> {
        let text = format!(
            "{} {} {}\n",
            inner.cursor.segment, inner.cursor.offset, inner.dropped
        );
        fsutil::write_atomic(&self.dir.join("cursor"), text.as_bytes())
    }

    /// Bytes waiting on disk (sent lines of the current segment included).
    pub fn bytes(&self) -> u64 {
        self.lock().segments.iter().map(|s| s.bytes).sum()
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.jsonl"))
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A segment's size and whole lines.
fn count_lines(path: &Path) -> std::io::Result<(u64, u64)> {
    let bytes = std::fs::metadata(path)?.len();
    Ok((bytes, lines_before(path, bytes)?))
}

fn lines_before(path: &Path, offset: u64) -> std::io::Result<u64> {
    lines_between(path, 0, offset)
}

/// Newlines in `path` from `from` to `to`.
fn lines_between(path: &Path, from: u64, to: u64) -> std::io::Result<u64> {
    if to <= from {
        return Ok(0);
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::new(file.take(to - from));
    let mut count = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(count);
        }
        count += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let n = buf.len();
        reader.consume(n);
    }
}

fn last_byte(path: &Path) -> std::io::Result<Option<u8>> {
    let mut file = File::open(path)?;
    if file.seek(SeekFrom::End(0))? == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut byte = [0u8];
    file.read_exact(&mut byte)?;
    Ok(Some(byte[0]))
}

fn read_cursor(dir: &Path) -> (Cursor, u64) {
    let text = std::fs::read_to_string(dir.join("cursor")).unwrap_or_default();
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(segment)), Some(Some(offset)), Some(Some(dropped))) => {
            (Cursor { segment, offset }, dropped)
        }
        _ => (
            Cursor {
                segment: 0,
                offset: 0,
            },
            0,
        ),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl CloudLines for Outbox {
    fn push_all(&self, lines: &mut dyn Iterator<Item = LogLine>) -> std::io::Result<()> {
        Outbox::push_all(self, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize) -> LogLine {
        LogLine {
            time: i as i64,
            service: "web".to_owned(),
            stream: LogStream::Stdout,
            line: format!("line {i:05}"),
        }
    }

    fn texts(batch: &Batch) -> Vec<String> {
        batch.lines.iter().map(|l| l.line.clone()).collect()
    }

    #[test]
    fn lines_come_out_in_order_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert!(!outbox.pending());
        for i in 0..1500 {
            outbox.push(line(i)).unwrap();
        }
        let first = outbox.batch().unwrap();
        assert_eq!(first.lines.len(), MAX_BATCH_LINES);
        assert_eq!(first.lines[0].line, "line 00000");
        // Not acknowledged: the same lines again.
        assert_eq!(texts(&outbox.batch().unwrap()), texts(&first));
        outbox.delivered(&first).unwrap();
        let second = outbox.batch().unwrap();
        assert_eq!(second.lines.len(), 500);
        assert_eq!(second.lines[0].line, "line 01000");
        outbox.delivered(&second).unwrap();
        assert!(!outbox.pending());
        assert!(outbox.batch().unwrap().lines.is_empty());
    }

    #[test]
    fn unsent_lines_survive_a_restart_and_sent_ones_do_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
            for i in 0..10 {
                outbox.push(line(i)).unwrap();
            }
            let mut batch = outbox.batch().unwrap();
            batch.lines.truncate(4);
            // Every line here serialises to the same length.
            let each = serde_json::to_vec(&line(0)).unwrap().len() as u64 + 1;
            let partial = Batch {
                next: Cursor {
                    segment: batch.next.segment,
                    offset: each * 4,
                },
                lines: batch.lines,
                dropped: 0,
            };
            outbox.delivered(&partial).unwrap();
        }
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert!(outbox.pending());
        let rest = outbox.batch().unwrap();
        assert_eq!(
            texts(&rest),
            (4..10).map(|i| format!("line {i:05}")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_full_outbox_drops_its_oldest_lines_and_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 64 << 10;
        let outbox = Outbox::open(dir.path(), bound).unwrap();
        let n = 10_000;
        for i in 0..n {
            outbox.push(line(i)).unwrap();
        }
        assert!(
            outbox.bytes() <= bound + 8192,
            "{} bytes kept",
            outbox.bytes()
        );
        let mut got = Vec::new();
        let mut reported = 0;
        loop {
            let batch = outbox.batch().unwrap();
            if batch.lines.is_empty() {
                break;
            }
            for l in &batch.lines {
                if l.service == DEVICE_SERVICE {
                    let count: u64 = l.line.split_whitespace().nth(1).unwrap().parse().unwrap();
                    reported += count;
                } else {
                    got.push(l.time as usize);
                }
            }
            outbox.delivered(&batch).unwrap();
        }
        // The newest survive, in order, with no gap among them; every line
        // is either delivered or counted.
        assert_eq!(*got.last().unwrap(), n - 1);
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(got.len() as u64 + reported, n as u64);
        // Files on disk stay near the bound.
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= bound + 8192, "{on_disk}");
    }

    #[test]
    fn a_line_cut_short_by_a_kill_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
            outbox.push(line(1)).unwrap();
        }
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"time\":2,\"serv").unwrap();
        drop(f);
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        outbox.push(line(3)).unwrap();
        let batch = outbox.batch().unwrap();
        assert_eq!(texts(&batch), ["line 00001", "line 00003"]);
    }
}
