//! What operators see of one answered request, on both listeners: the access line (target
//! `meshlet::access`, docs/metrics.md "Access log") and the line offered to taps
//! (`GET /v1/tap`, docs/operations.md "Tap"). Nothing of it is made unless the access target
//! is enabled or someone taps ([`Watchers::now`], checked once when a request arrives); it is
//! written once the response body has ended or was dropped, so it carries the bytes sent.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method};

use self::tap::Taps;
use super::metrics::{DestinationMetrics, UNNAMED};
use crate::identity::trace::TraceContext;

mod line;
pub mod tap;

/// Who watches a request, decided once when it arrives.
#[derive(Clone)]
pub struct Watchers {
    /// The access target is enabled.
    log: bool,
    /// The taps, when someone taps.
    taps: Option<Taps>,
}

impl Watchers {
    /// `None` when nobody watches: the access target is off and no one taps. Costs a level
    /// check (a static and one atomic load when `RUST_LOG` leaves out `info`) and one relaxed
    /// load. Inlined: on every request's path.
    #[inline]
    pub fn now(taps: &Taps) -> Option<Watchers> {
        let log = tracing::enabled!(target: "meshlet::access", tracing::Level::INFO);
        let tapping = taps.tapping();
        (log || tapping).then(|| Watchers {
            log,
            taps: tapping.then(|| taps.clone()),
        })
    }
}

/// One answered request, written when its response body is done ([`Answered::write`]).
pub struct Answered {
    /// Who gets it.
    pub watchers: Watchers,
    /// The destination (its name and direction), once routed and answered.
    pub destination: Option<Arc<DestinationMetrics>>,
    /// The request's method.
    pub method: Method,
    /// The request target as the client sent it (before any prefix was stripped); only its
    /// path is shown, never the query.
    pub target: Option<PathAndQuery>,
    /// The answer's status.
    pub status: u16,
    /// Time from arrival to the response headers.
    pub latency: Duration,
    /// Attempts made upstream (0 when meshlet answered itself).
    pub attempts: u32,
    /// The endpoint of the last attempt, when one was tried.
    pub upstream: Option<Authority>,
    /// The request id.
    pub request_id: HeaderValue,
    /// The trace context continued by this hop.
    pub trace: TraceContext,
    /// Request body bytes (its `content-length`, else counted as it streamed).
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Whether the response body was sent whole (`false`: it failed or was cut).
    pub complete: bool,
}

impl std::fmt::Debug for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answered")
            .field("destination", &self.destination())
            .field("method", &self.method)
            .field("path", &self.path())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Answered {
    /// The destination's name (`-` before one was known).
    pub fn destination(&self) -> &str {
        self.destination
            .as_deref()
            .map_or(UNNAMED, DestinationMetrics::name)
    }

    /// `outbound` or `inbound`.
    pub fn direction(&self) -> &'static str {
        self.destination
            .as_deref()
            .map_or("", |d| d.direction().as_str())
    }

    /// The path of the request target, without the query.
    pub fn path(&self) -> &str {
        self.target.as_ref().map_or("", PathAndQuery::path)
    }

    /// `duration_us` of the access line: microseconds to the response headers.
    fn duration_us(&self) -> u64 {
        u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX)
    }

    /// `upstream` of the access line: empty when no endpoint was tried.
    fn upstream(&self) -> &str {
        self.upstream.as_ref().map_or("", Authority::as_str)
    }

    /// `request_id` of the access line: empty when it is not visible ASCII.
    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }

    /// Writes the access line and offers the request to the taps. In JSON (`meshlet run`'s
    /// default) the line is encoded straight into the log buffer ([`line`]); otherwise it
    /// is a `tracing` event, formatted by the subscriber.
    pub fn write(mut self) {
        if self.watchers.log {
            if super::logging::access_lines_direct() {
                let now = std::time::SystemTime::now();
                super::log_buffer::append_with(|out| line::encode(out, &self, now));
            } else {
                self.log_with_tracing();
            }
        }
        // Taken out first: the line must not hold the hub it is queued in.
        if let Some(taps) = self.watchers.taps.take() {
            taps.offer(self);
        }
    }

    /// The access line as a `tracing` event (target `meshlet::access`). [`line::encode`]
    /// writes the same JSON: a field added here must be added there too, in the same place.
    fn log_with_tracing(&self) {
        tracing::info!(
            target: "meshlet::access",
            direction = self.direction(),
            destination = self.destination(),
            method = %self.method,
            path = self.path(),
            status = self.status,
            duration_us = self.duration_us(),
            upstream = self.upstream(),
            attempts = self.attempts,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            complete = self.complete,
            request_id = self.request_id(),
            trace_id = self.trace.trace_id(),
        );
    }
}
