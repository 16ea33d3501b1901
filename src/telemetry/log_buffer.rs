//! Where log lines go before stderr (docs/metrics.md, "Logs"): each thread appends its
//! formatted lines to its own buffer (a shard, registered once per thread in one list) and
//! returns; a `meshlet-log` thread swaps every shard's buffer out and writes it to stderr at
//! least once a second, sooner once a shard holds [`HIGH_WATER`] bytes, and [`flush`] writes
//! what is left on exit. So a log line costs the request path an uncontended lock and a copy
//! (the access line is even encoded in place, [`append_with`]) instead of a `write(2)` on a
//! possibly slow stderr, and the workers share no lock on that path (docs/performance.md,
//! "Round two").
//!
//! Lines never interleave or split: each is appended whole to its thread's shard (tracing's
//! fmt layer writes an event with one `write_all`), and flushes run one at a time, each
//! taking a shard's lines out whole, so one thread's lines reach stderr in the order it
//! wrote them. Lines of different threads are ordered by flush, not by time. Nothing blocks
//! on stderr but the `meshlet-log` thread: when [`MAX_PENDING`] bytes already wait in a
//! thread's shard (stderr stalled or a flood), that thread's further lines are dropped and
//! counted in `meshlet_log_lines_dropped_total` instead of holding up requests.

use std::io::Write;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use prometheus::IntCounter;

/// The longest a line waits in the buffer (while stderr takes writes).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Pending bytes in one shard that wake the writer thread before its second is up.
const HIGH_WATER: usize = 64 * 1024;
/// Pending bytes in one thread's shard beyond which that thread's lines are dropped (and
/// counted) rather than queued: each thread has this share, so the process holds at most
/// this much per logging thread.
pub const MAX_PENDING: usize = 1024 * 1024;

/// Every thread's shard, and the flush that empties them.
static LOG: Shards = Shards::new();
/// Set (with [`WAKE`]) when a shard crosses [`HIGH_WATER`]: the writer flushes at once.
static WOKEN: Mutex<bool> = Mutex::new(false);
/// Wakes the writer thread before its second is up.
static WAKE: Condvar = Condvar::new();
/// Set once the writer thread runs; until then (or if it could not start) lines are
/// written directly.
static STARTED: OnceLock<bool> = OnceLock::new();

thread_local! {
    /// This thread's shard, registered in [`LOG`] on the thread's first line.
    static SHARD: Arc<Shard> = LOG.register();
}

/// `meshlet_log_lines_dropped_total`: one counter for the process, registered in every
/// metrics registry made (`telemetry::metrics`).
static DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    // A fixed name and help of valid characters: `new` cannot fail. (Not through
    // `metrics::define`: `metrics` registers this counter, so that would be an import cycle.)
    IntCounter::new(
        "meshlet_log_lines_dropped_total",
        "Log lines dropped because stderr did not take them fast enough (the buffer was full).",
    )
    .expect("constant metric definition is valid")
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

/// Writes every line appended so far, by any thread, to stderr before returning. Called on
/// exit.
pub fn flush() {
    LOG.drain_into(&mut std::io::stderr());
}

/// Appends one whole line, written by `encode` straight into this thread's shard (no copy);
/// `encode` must append exactly one line, `\n` included. A line that would take the shard
/// past [`MAX_PENDING`] is taken back out and counted as dropped. Before the writer thread
/// runs, the line goes straight to stderr.
pub(crate) fn append_with(encode: impl Fn(&mut Vec<u8>)) {
    if STARTED.get() != Some(&true) {
        return write_through(&encode);
    }
    match SHARD.try_with(|shard| shard.append(&encode)) {
        Ok(Appended::Taken) => {}
        Ok(Appended::Woke) => wake(),
        Ok(Appended::Dropped) => DROPPED.inc(),
        // The thread's shard is gone (a line from another thread-local's destructor).
        Err(_) => write_through(&encode),
    }
}

/// Writes one line to stderr at once, as an unbuffered stderr would.
fn write_through(encode: &dyn Fn(&mut Vec<u8>)) {
    let mut line = Vec::new();
    encode(&mut line);
    // An unwritable stderr loses the line; there is nowhere else to report that.
    let _ = std::io::stderr().lock().write_all(&line);
}

fn write_loop() {
    loop {
        let woken = lock(&WOKEN);
        let (mut woken, _) = WAKE
            .wait_timeout_while(woken, FLUSH_EVERY, |woken| !*woken)
            .unwrap_or_else(PoisonError::into_inner);
        *woken = false;
        drop(woken);
        flush();
    }
}

/// Makes the writer thread flush now. Takes a process-wide lock, but only when a shard
/// crosses [`HIGH_WATER`] (once per 64 KiB of one thread's lines), never per line.
fn wake() {
    *lock(&WOKEN) = true;
    WAKE.notify_one();
}

/// One thread's lines waiting to be written; its lock is taken by that thread per line and
/// by the flush once per round, so it is practically uncontended.
#[derive(Debug, Default)]
struct Shard {
    pending: Mutex<Vec<u8>>,
}

/// What became of an appended line.
#[derive(Debug, PartialEq, Eq)]
enum Appended {
    /// Queued.
    Taken,
    /// Queued, and the shard just crossed [`HIGH_WATER`]: wake the writer.
    Woke,
    /// Refused: the shard already holds [`MAX_PENDING`] bytes.
    Dropped,
}

impl Shard {
    fn append(&self, encode: &dyn Fn(&mut Vec<u8>)) -> Appended {
        let mut pending = lock(&self.pending);
        let before = pending.len();
        encode(&mut pending);
        if pending.len() > MAX_PENDING {
            pending.truncate(before);
            Appended::Dropped
        } else if before < HIGH_WATER && pending.len() >= HIGH_WATER {
            Appended::Woke
        } else {
            Appended::Taken
        }
    }
}

/// The list of shards and the spare buffer each flush rotates through them.
struct Shards {
    /// Every shard whose thread lives or whose lines still wait. Locked once per thread
    /// (registration) and once per flush, never per line.
    list: Mutex<Vec<Arc<Shard>>>,
    /// An empty buffer swapped with each shard's in turn; held for the whole flush, so
    /// flushes run one at a time and each shard's batches go out in order.
    spare: Mutex<Vec<u8>>,
}

impl Shards {
    const fn new() -> Self {
        Shards {
            list: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
        }
    }

    fn register(&self) -> Arc<Shard> {
        let shard = Arc::new(Shard::default());
        lock(&self.list).push(shard.clone());
        shard
    }

    /// Takes every shard's lines out (a swap under its lock, no copy) and writes them to
    /// `out`, one shard's batch after another.
    fn drain_into(&self, out: &mut impl Write) {
        let mut spare = lock(&self.spare);
        for shard in self.snapshot() {
            std::mem::swap(&mut *lock(&shard.pending), &mut *spare);
            write_out(&mut spare, out);
        }
    }

    /// The shards to flush, dropping those whose thread has ended (only the list holds
    /// them) once they are empty. Copied out so that no thread waits on stderr to register.
    fn snapshot(&self) -> Vec<Arc<Shard>> {
        let mut list = lock(&self.list);
        list.retain(|shard| Arc::strong_count(shard) > 1 || !lock(&shard.pending).is_empty());
        list.clone()
    }
}

/// Writes a batch and empties it, keeping a modest allocation for the next one.
fn write_out(batch: &mut Vec<u8>, out: &mut impl Write) {
    if !batch.is_empty() {
        // An unwritable stderr loses these lines; there is nowhere else to report that.
        let _ = out.write_all(batch);
        batch.clear();
    }
    if batch.capacity() > 4 * HIGH_WATER {
        batch.shrink_to(HIGH_WATER);
    }
}

/// A poisoned lock only means a panic while a line was appended or written: the bytes are
/// still consistent enough for logs.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
        append_with(|pending| pending.extend_from_slice(line));
        // Reported whole even when dropped: a dropped line must not make the caller retry it.
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_takes_whole_lines_wakes_at_high_water_and_drops_past_the_limit() {
        let shard = Shard::default();
        let line = |n: usize| move |out: &mut Vec<u8>| out.extend(std::iter::repeat_n(b'x', n));
        assert_eq!(shard.append(&line(8)), Appended::Taken);
        assert_eq!(shard.append(&line(HIGH_WATER)), Appended::Woke);
        assert_eq!(shard.append(&line(8)), Appended::Taken, "woken once");
        let held = lock(&shard.pending).len();
        assert_eq!(shard.append(&line(MAX_PENDING)), Appended::Dropped);
        assert_eq!(
            lock(&shard.pending).len(),
            held,
            "a refused line leaves nothing"
        );
    }

    #[test]
    fn a_refused_line_is_counted_and_reported_written() {
        start();
        if STARTED.get() == Some(&true) {
            let dropped = DROPPED.get();
            let big = vec![b'x'; MAX_PENDING + 1];
            assert_eq!(Buffered.write(&big).unwrap(), big.len(), "reported written");
            assert!(DROPPED.get() > dropped);
        }
    }

    /// Threads append numbered lines to their own shards while another thread drains them
    /// again and again: every line comes out whole, once, and in its thread's order.
    #[test]
    fn lines_of_many_threads_come_out_whole_and_each_thread_in_order() {
        static TEST_LOG: Shards = Shards::new();
        const THREADS: usize = 4;
        const LINES: usize = 2_000;
        let done = std::sync::atomic::AtomicBool::new(false);
        let mut out = Vec::new();
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..THREADS)
                .map(|t| {
                    s.spawn(move || {
                        let shard = TEST_LOG.register();
                        for i in 0..LINES {
                            let line = format!(
                                "{{\"thread\":{t},\"line\":{i},\"pad\":\"{}\"}}\n",
                                "p".repeat(i % 97)
                            );
                            let appended = shard.append(&|out: &mut Vec<u8>| {
                                out.extend_from_slice(line.as_bytes())
                            });
                            assert_ne!(appended, Appended::Dropped, "far below the limit");
                        }
                    })
                })
                .collect();
            let done = &done;
            let out = &mut out;
            let drainer = s.spawn(move || {
                for _ in 0..100_000 {
                    TEST_LOG.drain_into(out);
                    if done.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    std::thread::yield_now();
                }
            });
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Release);
            drainer.join().unwrap();
        });
        TEST_LOG.drain_into(&mut out); // what the drainer's last round missed
        let mut next = [0usize; THREADS];
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let json: serde_json::Value = serde_json::from_slice(line).expect("a whole line");
            let (t, i) = (
                json["thread"].as_u64().unwrap() as usize,
                json["line"].as_u64().unwrap() as usize,
            );
            assert_eq!(
                i, next[t],
                "thread {t}'s lines in order, none lost or repeated"
            );
            next[t] += 1;
        }
        assert_eq!(next, [LINES; THREADS]);
        assert!(
            TEST_LOG.snapshot().is_empty(),
            "the ended threads' empty shards are gone"
        );
    }
}
