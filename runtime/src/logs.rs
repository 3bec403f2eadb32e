//! Service output: captured line by line, stamped, and held in a bounded
//! buffer until delivered.
//!
//! A guest can write far faster than any terminal, disk or uplink takes it.
//! The buffer holds at most [`MAX_BUFFERED_BYTES`] per service; past that the
//! oldest lines give way, and the reader is told how many it missed, in
//! order, so nothing is lost without a trace.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// Output a service may have waiting for delivery. Enough for a burst of a
/// few hundred ordinary lines; small enough that ten thousand services could
/// all be chattering without the supervisor growing past a few hundred MiB.
pub const MAX_BUFFERED_BYTES: usize = 64 << 10;

/// Longest line kept whole; longer ones are split. Stops one endless line
/// without a newline from holding memory.
pub const MAX_LINE_BYTES: usize = 4 << 10;

/// How much a guest may write in one call before it is asked to check again.
const WRITE_BUDGET: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub at: SystemTime,
    pub stream: Stream,
    pub text: String,
}

/// What a reader gets, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEvent {
    Line(LogLine),
    /// This many lines were dropped here because they were not read in time.
    Dropped(u64),
}

#[derive(Default)]
struct Inner {
    lines: VecDeque<LogLine>,
    bytes: usize,
    dropped_pending: u64,
    dropped_total: u64,
    partial: [Vec<u8>; 2],
    closed: bool,
}

/// One service's output buffer. Writers are the guest's stdout and stderr;
/// there is one reader.
#[derive(Default)]
pub struct LogBuffer {
    inner: Mutex<Inner>,
    ready: Notify,
}

impl LogBuffer {
    pub fn new() -> Arc<Self> {
        Arc::new(LogBuffer::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the buffer in a state
        // worse than a lost line, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes bytes the guest wrote, and queues each complete line.
    pub fn write(&self, stream: Stream, bytes: &[u8]) {
        {
            let mut inner = self.lock();
            let slot = stream as usize;
            for piece in bytes.split_inclusive(|b| *b == b'\n') {
                let (mut content, ends_line) = match piece.split_last() {
                    Some((b'\n', content)) => (content, true),
                    _ => (piece, false),
                };
                loop {
                    let room = MAX_LINE_BYTES - inner.partial[slot].len();
                    if content.len() <= room {
                        inner.partial[slot].extend_from_slice(content);
                        break;
                    }
                    let (head, tail) = content.split_at(room);
                    inner.partial[slot].extend_from_slice(head);
                    let line = std::mem::take(&mut inner.partial[slot]);
                    push_line(&mut inner, stream, line);
                    content = tail;
                }
                if ends_line {
                    let line = std::mem::take(&mut inner.partial[slot]);
                    push_line(&mut inner, stream, line);
                }
            }
        }
        self.ready.notify_one();
    }

    /// Queues whatever was written after the last newline: called when an
    /// instance ends, so its last words are not lost.
    ///
    /// Wakes the reader only if that completed a line: a service that answers
    /// HTTP flushes after every request, and most requests write nothing.
    pub fn flush(&self) {
        let mut inner = self.lock();
        let mut pushed = false;
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut inner.partial[stream as usize]);
            if !line.is_empty() {
                push_line(&mut inner, stream, line);
                pushed = true;
            }
        }
        drop(inner);
        if pushed {
            self.ready.notify_one();
        }
    }

    /// Marks the end of output: once drained, [`LogBuffer::next`] returns
    /// `None`.
    pub fn close(&self) {
        self.flush();
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Waits for output, and takes everything queued.
    pub async fn next(&self) -> Option<Vec<LogEvent>> {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = self.lock();
                if !inner.lines.is_empty() || inner.dropped_pending > 0 {
                    return Some(take_events(&mut inner));
                }
                if inner.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Takes everything queued now, without waiting.
    pub fn drain(&self) -> Vec<LogEvent> {
        take_events(&mut self.lock())
    }

    /// Bytes of output waiting to be read.
    pub fn buffered_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Lines dropped since the service was created.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped_total
    }

    /// The guest's stdout (or stderr), to hand to a WASI context.
    pub(crate) fn stream(self: &Arc<Self>, stream: Stream) -> GuestOutput {
        GuestOutput {
            buffer: self.clone(),
            stream,
        }
    }
}

fn line_cost(line: &LogLine) -> usize {
    // What a queued line really holds: its text and its bookkeeping.
    line.text.len() + std::mem::size_of::<LogLine>()
}

fn push_line(inner: &mut Inner, stream: Stream, line: Vec<u8>) {
    let line = LogLine {
        at: SystemTime::now(),
        stream,
        text: match String::from_utf8(line) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        },
    };
    let cost = line_cost(&line);
    // Oldest lines give way. Every line dropped is older than every line
    // kept, so the gap is always at the front of what the reader gets next.
    while inner.bytes + cost > MAX_BUFFERED_BYTES {
        let Some(old) = inner.lines.pop_front() else {
            break;
        };
        inner.bytes -= line_cost(&old);
        inner.dropped_pending += 1;
        inner.dropped_total += 1;
    }
    inner.bytes += cost;
    inner.lines.push_back(line);
}

fn take_events(inner: &mut Inner) -> Vec<LogEvent> {
    let mut events = Vec::with_capacity(inner.lines.len() + 1);
    if inner.dropped_pending > 0 {
        events.push(LogEvent::Dropped(std::mem::take(
            &mut inner.dropped_pending,
        )));
    }
    events.extend(inner.lines.drain(..).map(LogEvent::Line));
    inner.bytes = 0;
    events
}

/// A guest's stdout or stderr, writing into its service's [`LogBuffer`].
/// Writes never block: a slow reader costs the guest old lines, not time.
pub(crate) struct GuestOutput {
    buffer: Arc<LogBuffer>,
    stream: Stream,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(GuestOutput {
            buffer: self.buffer.clone(),
            stream: self.stream,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestOutput {
            buffer: self.buffer.clone(),
            stream: self.stream,
        })
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.buffer.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.buffer.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A guest's stdin: no input, and end-of-file once the service is asked to
/// stop. A service that wants to shut down cleanly reads stdin and treats EOF
/// as its cue, as it would a closed pipe from a parent process.
#[derive(Clone)]
pub(crate) struct StopSignal {
    rx: tokio::sync::watch::Receiver<bool>,
}

impl StopSignal {
    pub(crate) fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, StopSignal { rx })
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.rx.borrow()
    }
}

impl IsTerminal for StopSignal {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for StopSignal {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        // Only asked for by WASI 0.3 guests, which Kelp does not run yet: a
        // pipe whose writer goes away when the stop comes.
        let (reader, writer) = tokio::io::simplex(1);
        let mut rx = self.rx.clone();
        tokio::spawn(async move {
            let _ = rx.wait_for(|stop| *stop).await;
            drop(writer);
        });
        Box::new(reader)
    }
}

#[async_trait::async_trait]
impl Pollable for StopSignal {
    async fn ready(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

impl InputStream for StopSignal {
    fn read(&mut self, _size: usize) -> StreamResult<Bytes> {
        if self.stopping() {
            Err(StreamError::Closed)
        } else {
            Ok(Bytes::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(events: &[LogEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                LogEvent::Line(l) => l.text.clone(),
                LogEvent::Dropped(n) => format!("<{n} dropped>"),
            })
            .collect()
    }

    #[test]
    fn splits_lines_across_writes_and_streams() {
        let buf = LogBuffer::new();
        buf.write(Stream::Stdout, b"hel");
        buf.write(Stream::Stderr, b"oops\n");
        buf.write(Stream::Stdout, b"lo\nwor");
        buf.write(Stream::Stdout, b"ld\n\nlast");
        buf.flush();
        let events = buf.drain();
        assert_eq!(texts(&events), ["oops", "hello", "world", "", "last"]);
        assert!(matches!(&events[0], LogEvent::Line(l) if l.stream == Stream::Stderr));
    }

    #[test]
    fn splits_overlong_lines() {
        let buf = LogBuffer::new();
        buf.write(Stream::Stdout, &vec![b'x'; MAX_LINE_BYTES * 2 + 10]);
        buf.flush();
        let lens: Vec<usize> = texts(&buf.drain()).iter().map(String::len).collect();
        assert_eq!(lens, [MAX_LINE_BYTES, MAX_LINE_BYTES, 10]);
    }

    #[test]
    fn stays_bounded_and_counts_what_it_drops() {
        let buf = LogBuffer::new();
        let n = 100_000;
        for i in 0..n {
            buf.write(Stream::Stdout, format!("line {i}\n").as_bytes());
            assert!(buf.buffered_bytes() <= MAX_BUFFERED_BYTES);
        }
        let events = buf.drain();
        let LogEvent::Dropped(dropped) = events[0] else {
            panic!("first event should report the gap: {:?}", events[0]);
        };
        let kept = events.len() as u64 - 1;
        assert_eq!(dropped + kept, n);
        assert_eq!(buf.dropped(), dropped);
        // What is kept is the newest, in order.
        assert_eq!(texts(&events).last().unwrap(), &format!("line {}", n - 1));
        assert_eq!(buf.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn a_reader_wakes_for_new_lines_and_ends_on_close() {
        let buf = LogBuffer::new();
        let reader = {
            let buf = buf.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                while let Some(events) = buf.next().await {
                    all.extend(texts(&events));
                }
                all
            })
        };
        buf.write(Stream::Stdout, b"one\n");
        tokio::task::yield_now().await;
        buf.write(Stream::Stdout, b"two");
        buf.close();
        assert_eq!(reader.await.unwrap(), ["one", "two"]);
    }
}
