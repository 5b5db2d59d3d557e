//! The serving log's buffer: log lines (the access log above all, one per request) go into a
//! bounded buffer in memory, and a thread of their own writes them to stderr, every
//! [`FLUSH_EVERY`] or as soon as [`FLUSH_AT`] bytes wait, and at exit.
//!
//! A request never waits for stderr: writing one line costs a lock and a copy. If stderr stops
//! taking lines (a stuck pipe, a paused terminal) and the buffer fills up, new lines are dropped
//! and counted in `tenantgate_log_lines_dropped_total` rather than slowing the proxy down.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A write is started early once this much waits.
pub const FLUSH_AT: usize = 64 * 1024;
/// What the buffer holds at most (about 8,000 access-log lines): beyond it, lines are dropped.
pub const CAPACITY: usize = 2 * 1024 * 1024;

/// Lines dropped because the buffer was full, since the process started.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The buffer [`init`] installed, for [`flush`] at exit.
static INSTALLED: OnceLock<Arc<Buffer>> = OnceLock::new();

/// Lines waiting for stderr.
pub struct Buffer {
    waiting: Mutex<Vec<u8>>,
    /// Wakes the writer thread early.
    wake: Condvar,
    /// Held while writing to stderr, so that the thread and [`flush`] keep lines in order.
    writing: Mutex<()>,
    capacity: usize,
}

impl Buffer {
    fn new(capacity: usize) -> Arc<Buffer> {
        Arc::new(Buffer {
            waiting: Mutex::new(Vec::with_capacity(FLUSH_AT)),
            wake: Condvar::new(),
            writing: Mutex::new(()),
            capacity,
        })
    }

    /// Adds one formatted event (one line, or a few for a multi-line message).
    pub(super) fn push(&self, line: &[u8]) {
        let mut waiting = lock(&self.waiting);
        if waiting.len() + line.len() > self.capacity {
            let lines = line.iter().filter(|&&b| b == b'\n').count().max(1);
            DROPPED.fetch_add(lines as u64, Ordering::Relaxed);
            return;
        }
        waiting.extend_from_slice(line);
        if waiting.len() >= FLUSH_AT {
            self.wake.notify_one();
        }
    }

    /// Writes out what waits; `spare` is the emptied buffer of the last round, swapped in so
    /// that no round allocates.
    fn write_out(&self, out: &mut impl Write, spare: &mut Vec<u8>) {
        let _order = lock(&self.writing);
        std::mem::swap(&mut *lock(&self.waiting), spare);
        if !spare.is_empty() {
            // A failing stderr has nowhere to report to; the lines are lost either way.
            let _ = out.write_all(spare);
            let _ = out.flush();
        }
        spare.clear();
    }

    /// The writer thread's loop: sleeps until a tick or a wake-up, then writes out.
    fn run(self: Arc<Self>, mut out: impl Write) {
        let mut spare = Vec::with_capacity(FLUSH_AT);
        loop {
            {
                let waiting = lock(&self.waiting);
                if waiting.len() < FLUSH_AT {
                    let _ = self.wake.wait_timeout(waiting, FLUSH_EVERY);
                }
            }
            self.write_out(&mut out, &mut spare);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; a poisoned buffer is still a buffer.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `MakeWriter` tracing's formatter writes each event through.
#[derive(Clone)]
pub struct BufferedStderr(Arc<Buffer>);

impl BufferedStderr {
    /// The buffer this writes to.
    pub(super) fn buffer(&self) -> Arc<Buffer> {
        self.0.clone()
    }
}

/// One event's writer: tracing formats an event completely, then writes it in one call.
pub struct EventWriter<'a>(&'a Buffer);

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter(&self.0)
    }
}

/// Starts the writer thread and returns the writer for the log subscriber; `None` if the thread
/// cannot start (the caller then logs straight to stderr).
pub fn init() -> Option<BufferedStderr> {
    let buffer = Buffer::new(CAPACITY);
    let thread_buffer = buffer.clone();
    std::thread::Builder::new()
        .name("tenantgate-log".into())
        .spawn(move || thread_buffer.run(io::stderr()))
        .ok()?;
    let _ = INSTALLED.set(buffer.clone());
    // A panic's message goes straight to stderr: write what came before it first.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flush();
        previous(info);
    }));
    Some(BufferedStderr(buffer))
}

/// Writes out every buffered line now (at exit: lines still waiting would be lost).
pub fn flush() {
    if let Some(b) = INSTALLED.get() {
        b.write_out(&mut io::stderr(), &mut Vec::new());
    }
}

/// `tenantgate_log_lines_dropped_total`.
#[derive(Debug)]
pub(super) struct DroppedCollector;

impl Collector for DroppedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = ConstCounter::new(DROPPED.load(Ordering::Relaxed));
        let m = encoder.encode_descriptor(
            "tenantgate_log_lines_dropped",
            "Log lines dropped because stderr did not keep up and the log buffer was full",
            None,
            c.metric_type(),
        )?;
        c.encode(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_in_order_and_the_buffer_is_reused() {
        let b = Buffer::new(1024);
        let mut w = EventWriter(&b);
        w.write_all(b"one\n").unwrap();
        w.write_all(b"two\n").unwrap();
        let mut out = Vec::new();
        let mut spare = Vec::new();
        b.write_out(&mut out, &mut spare);
        w.write_all(b"three\n").unwrap();
        b.write_out(&mut out, &mut spare);
        assert_eq!(out, b"one\ntwo\nthree\n");
        assert!(lock(&b.waiting).is_empty());
    }

    #[test]
    fn a_full_buffer_drops_and_counts_whole_lines() {
        let b = Buffer::new(10);
        let before = DROPPED.load(Ordering::Relaxed);
        b.push(b"12345678\n");
        b.push(b"abc\n");
        b.push(b"x\ny\n");
        assert!(DROPPED.load(Ordering::Relaxed) >= before + 3);
        let mut out = Vec::new();
        b.write_out(&mut out, &mut Vec::new());
        assert_eq!(
            out, b"12345678\n",
            "only lines that fit, never a partial one"
        );
    }

    #[test]
    fn the_thread_writes_without_being_asked() {
        let b = Buffer::new(1024);
        let out = SharedOut::default();
        let thread_b = b.clone();
        let thread_out = out.clone();
        std::thread::spawn(move || thread_b.run(thread_out));
        b.push(b"tick\n");
        let mut waited = Duration::ZERO;
        while lock(&out.0).is_empty() && waited < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
            waited += Duration::from_millis(10);
        }
        assert_eq!(*lock(&out.0), b"tick\n");
    }

    #[derive(Clone, Default)]
    struct SharedOut(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedOut {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
