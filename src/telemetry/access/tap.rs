//! The tap behind `GET /v1/tap` (docs/operations.md, "Tap"): a live NDJSON line per answered
//! request, on both listeners. The request path pays one relaxed atomic load when nobody
//! taps ([`Taps::tapping`]). While someone does, each answered request is offered to every
//! tap without waiting: a tap whose `service` filter it fails skips it, one over its `rate`
//! or whose queue ([`QUEUE`] lines) is full counts it as dropped, and its stream reports
//! `{"dropped":N}` before its next line (or within a second). At most [`MAX_TAPS`] taps are
//! open at once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

use super::Answered;

/// Taps open at once; one more is refused (`503 overloaded`).
pub const MAX_TAPS: usize = 16;
/// Lines queued for one tap before more are dropped (a slow reader never slows requests).
pub const QUEUE: usize = 1024;
/// Lines per second per tap unless `rate` says otherwise.
pub const DEFAULT_RATE: u32 = 100;
/// The highest `rate` a tap may ask for.
pub const MAX_RATE: u32 = 1000;
/// How often a quiet stream reports what it dropped.
const DROPPED_EVERY: Duration = Duration::from_secs(1);
/// A frame of the stream holds at most about this much (what was queued, in one write).
const FRAME_BYTES: usize = 64 * 1024;

/// The taps of one sidecar: cloned into every handler, one per sidecar (tests run many).
#[derive(Clone, Default)]
pub struct Taps(Arc<Hub>);

#[derive(Default)]
struct Hub {
    /// Taps open, read by every request.
    open: AtomicUsize,
    /// The taps, read without a lock; changed only when a tap opens or closes.
    taps: ArcSwap<Vec<Arc<Tap>>>,
}

/// One open tap: what it wants, and its queue.
struct Tap {
    /// Only requests to this destination.
    service: Option<String>,
    /// Lines per second.
    rate: u32,
    started: Instant,
    /// The second (since `started`) lines are counted in, and how many were sent in it:
    /// `second << 32 | sent`.
    window: AtomicU64,
    /// Lines skipped since the stream last said so.
    dropped: AtomicU64,
    /// Lines already encoded: a queued line owns its few bytes, never the request's
    /// buffers (a URI or header value held here would pin its connection's read buffer).
    lines: mpsc::Sender<Bytes>,
}

/// Why a tap cannot open.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// [`MAX_TAPS`] are open.
    #[error("{MAX_TAPS} taps are open, the most at once; try again when one closes")]
    Overloaded,
}

impl Taps {
    /// Whether anyone taps: one relaxed load, the whole cost when nobody does.
    #[inline]
    pub fn tapping(&self) -> bool {
        self.0.open.load(Ordering::Relaxed) != 0
    }

    /// Opens a tap on requests to `service` (any when `None`), at most `rate` lines a second
    /// (capped at [`MAX_RATE`]), whose stream ends when `stop` resolves.
    pub fn open(
        &self,
        service: Option<String>,
        rate: u32,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<TapStream, TapError> {
        self.0
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_TAPS).then_some(n + 1)
            })
            .map_err(|_| TapError::Overloaded)?;
        let (lines, queue) = mpsc::channel(QUEUE);
        let tap = Arc::new(Tap {
            service,
            rate: rate.clamp(1, MAX_RATE),
            started: Instant::now(),
            window: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lines,
        });
        self.0.taps.rcu(|taps| {
            let mut taps = Vec::clone(taps);
            taps.push(tap.clone());
            taps
        });
        let mut tick = tokio::time::interval(DROPPED_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(TapStream {
            queue,
            tap,
            hub: self.clone(),
            stop: Box::pin(stop),
            tick,
            stopped: false,
        })
    }

    /// Offers an answered request to every tap; never waits.
    pub fn offer(&self, answered: Answered) {
        // Encoded once, when the first tap takes it, and stamped now (the body's end).
        let mut line: Option<Bytes> = None;
        for tap in self.0.taps.load().iter() {
            if tap
                .service
                .as_deref()
                .is_some_and(|s| s != answered.destination())
            {
                continue;
            }
            let queued = tap.admit()
                && tap
                    .lines
                    .try_send(line.get_or_insert_with(|| encode_line(&answered)).clone())
                    .is_ok();
            if !queued {
                tap.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Closes `tap` (its stream was dropped).
    fn close(&self, tap: &Arc<Tap>) {
        self.0.taps.rcu(|taps| {
            taps.iter()
                .filter(|t| !Arc::ptr_eq(t, tap))
                .cloned()
                .collect::<Vec<_>>()
        });
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tap {
    /// Whether one more line fits this second's `rate`.
    fn admit(&self) -> bool {
        let second = self.started.elapsed().as_secs();
        let mut seen = self.window.load(Ordering::Relaxed);
        loop {
            let (window, sent) = (seen >> 32, seen & u64::from(u32::MAX));
            let next = if second > window {
                (second << 32) | 1
            } else if sent < u64::from(self.rate) {
                seen + 1
            } else {
                return false;
            };
            match self.window.compare_exchange_weak(
                seen,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
    }
}

/// The NDJSON body of one tap; the tap closes when it is dropped (the client went away,
/// or the stream ended at shutdown).
pub struct TapStream {
    queue: mpsc::Receiver<Bytes>,
    tap: Arc<Tap>,
    hub: Taps,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    tick: tokio::time::Interval,
    stopped: bool,
}

impl Drop for TapStream {
    fn drop(&mut self) {
        self.hub.close(&self.tap);
    }
}

impl TapStream {
    /// Appends `{"dropped":N}` when lines were skipped since the last report.
    fn report_dropped(&self, out: &mut Vec<u8>) {
        let dropped = self.tap.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            out.extend_from_slice(b"{\"dropped\":");
            out.extend_from_slice(itoa::Buffer::new().format(dropped).as_bytes());
            out.extend_from_slice(b"}\n");
        }
    }
}

impl Body for TapStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.stopped || this.stop.as_mut().poll(cx).is_ready() {
            this.stopped = true;
            return Poll::Ready(None);
        }
        let mut out = Vec::new();
        while out.len() < FRAME_BYTES {
            match this.queue.poll_recv(cx) {
                Poll::Ready(Some(line)) => {
                    this.report_dropped(&mut out);
                    out.extend_from_slice(&line);
                }
                // The hub holds the sender while the tap is open: not before this drops.
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        let mut ticked = false;
        while this.tick.poll_tick(cx).is_ready() {
            ticked = true;
        }
        if ticked && out.is_empty() {
            this.report_dropped(&mut out);
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stopped
    }
}

/// One line of a tap (docs/operations.md, "Tap").
#[derive(serde::Serialize)]
struct Line<'a> {
    time: String,
    direction: &'static str,
    destination: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    latency_ms: f64,
    attempts: u32,
    upstream: Option<&'a str>,
    request_id: &'a str,
}

/// `answered` as one JSON line, stamped with the time it is made (the body's end).
fn encode_line(answered: &Answered) -> Bytes {
    let mut out = Vec::with_capacity(256);
    let line = Line {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        direction: answered.direction(),
        destination: answered.destination(),
        method: answered.method.as_str(),
        path: answered.path(),
        status: answered.status,
        // Microseconds as milliseconds with three decimals.
        latency_ms: answered.latency.as_micros() as f64 / 1000.0,
        attempts: answered.attempts,
        upstream: answered.upstream.as_ref().map(http::uri::Authority::as_str),
        request_id: answered.request_id.to_str().unwrap_or(""),
    };
    // Serializing plain strings and numbers into a Vec cannot fail.
    if serde_json::to_writer(&mut out, &line).is_ok() {
        out.push(b'\n');
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(rate: u32) -> Tap {
        let (lines, _queue) = mpsc::channel(1);
        Tap {
            service: None,
            rate,
            started: Instant::now(),
            window: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lines,
        }
    }

    #[test]
    fn a_tap_admits_rate_lines_a_second() {
        let tap = tap(5);
        let admitted = (0..50).filter(|_| tap.admit()).count();
        // Within one second five pass; a second boundary crossed mid-loop lets through five more.
        assert!((5..=10).contains(&admitted), "{admitted}");
    }

    #[tokio::test]
    async fn the_seventeenth_tap_is_refused_and_a_closed_one_frees_its_place() {
        let taps = Taps::default();
        assert!(!taps.tapping());
        let mut open: Vec<TapStream> = (0..MAX_TAPS)
            .map(|_| taps.open(None, 10, std::future::pending()).unwrap())
            .collect();
        assert!(taps.tapping());
        assert!(matches!(
            taps.open(None, 10, std::future::pending()),
            Err(TapError::Overloaded)
        ));
        open.pop();
        assert!(taps.open(None, 10, std::future::pending()).is_ok());
        open.clear();
        assert!(!taps.tapping());
        assert!(taps.0.taps.load().is_empty());
    }
}
