//! Where log lines go before stderr (docs/metrics.md, "Logs"): a request's thread appends
//! its formatted line to one shared buffer and returns; a `meshlet-log` thread writes the
//! buffer to stderr at least once a second, sooner once [`HIGH_WATER`] bytes wait, and
//! [`flush`] writes what is left on exit. So an access line costs the request path a
//! short lock and a copy instead of a `write(2)` on a possibly slow stderr.
//!
//! Lines never interleave: each is appended whole under the lock (tracing's fmt layer
//! writes an event with one `write_all`), and batches go out in order (one flush at a
//! time). Nothing blocks on stderr but the `meshlet-log` thread: when [`MAX_PENDING`]
//! bytes already wait (stderr stalled or a flood), further lines are dropped and counted
//! in `meshlet_log_lines_dropped_total` instead of holding up requests.

use std::io::Write;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use prometheus::IntCounter;

/// The longest a line waits in the buffer (while stderr takes writes).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Pending bytes that wake the writer thread before its second is up.
const HIGH_WATER: usize = 64 * 1024;
/// Pending bytes beyond which lines are dropped (and counted) rather than queued.
pub const MAX_PENDING: usize = 1024 * 1024;

/// Lines waiting to be written.
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Signalled (with [`PENDING`]) when [`HIGH_WATER`] is crossed.
static WAKE: Condvar = Condvar::new();
/// The batch being written; held for the whole write, so flushes keep the lines' order.
static WRITING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Set once the writer thread runs; until then (or if it could not start) lines are
/// written directly.
static STARTED: OnceLock<bool> = OnceLock::new();

/// `meshlet_log_lines_dropped_total`: one counter for the process, registered in every
/// metrics registry made (`telemetry::metrics`).
static DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    super::metrics::define(IntCounter::new(
        "meshlet_log_lines_dropped_total",
        "Log lines dropped because stderr did not take them fast enough (the buffer was full).",
    ))
});

/// The dropped-lines counter, to register in a metrics registry.
pub(crate) fn dropped_counter() -> IntCounter {
    DROPPED.clone()
}

/// Starts the writer thread (once); later calls do nothing.
pub(crate) fn start() {
    STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("meshlet-log".into())
            .spawn(write_loop)
            .is_ok()
    });
}

/// Writes every line appended so far to stderr, before returning. Called on exit.
pub fn flush() {
    let mut batch = lock(&WRITING);
    std::mem::swap(&mut *lock(&PENDING), &mut *batch);
    write_out(&mut batch);
}

fn write_loop() {
    loop {
        let pending = lock(&PENDING);
        let waited = WAKE.wait_timeout_while(pending, FLUSH_EVERY, |p| p.len() < HIGH_WATER);
        drop(waited.unwrap_or_else(PoisonError::into_inner));
        flush();
    }
}

/// Writes a batch and empties it, keeping a modest allocation for the next one.
fn write_out(batch: &mut Vec<u8>) {
    if !batch.is_empty() {
        // An unwritable stderr loses these lines; there is nowhere else to report that.
        let _ = std::io::stderr().lock().write_all(batch);
        batch.clear();
    }
    if batch.capacity() > 4 * HIGH_WATER {
        batch.shrink_to(HIGH_WATER);
    }
}

/// Appends one whole line; `false` when it was dropped because the buffer is full.
fn append(line: &[u8]) -> bool {
    let mut pending = lock(&PENDING);
    let before = pending.len();
    if before + line.len() > MAX_PENDING {
        return false;
    }
    pending.extend_from_slice(line);
    if before < HIGH_WATER && pending.len() >= HIGH_WATER {
        WAKE.notify_one();
    }
    true
}

/// A poisoned lock only means a panic while a line was appended or written: the bytes are
/// still consistent enough for logs.
fn lock(m: &'static Mutex<Vec<u8>>) -> MutexGuard<'static, Vec<u8>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `MakeWriter` of the log subscriber: hands each event's line to the buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Buffered;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffered {
    type Writer = Buffered;

    fn make_writer(&'a self) -> Self::Writer {
        Buffered
    }
}

impl Write for Buffered {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if STARTED.get() != Some(&true) {
            // No writer thread: write through, as an unbuffered stderr would.
            return std::io::stderr().lock().write(line);
        }
        if !append(line) {
            DROPPED.inc();
        }
        // Reported whole either way: a dropped line must not make the caller retry it.
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test for the shared statics: the buffer is process-wide.
    #[test]
    fn lines_are_appended_whole_and_dropped_past_the_limit() {
        let dropped = DROPPED.get();
        let writing = lock(&WRITING); // no flush runs meanwhile
        let len_before = lock(&PENDING).len();
        assert!(append(b"{\"a\":1}\n"));
        assert_eq!(lock(&PENDING).len(), len_before + 8);
        let big = vec![b'x'; MAX_PENDING];
        assert!(!append(&big), "a line past the limit is refused");
        assert_eq!(
            lock(&PENDING).len(),
            len_before + 8,
            "and leaves nothing behind"
        );
        // The refused line is counted by the writer.
        start();
        if STARTED.get() == Some(&true) {
            assert_eq!(Buffered.write(&big).unwrap(), big.len(), "reported written");
            assert!(DROPPED.get() > dropped);
        }
        // Leave the buffer as it was found.
        lock(&PENDING).truncate(len_before);
        drop(writing);
    }
}
