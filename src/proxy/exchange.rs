//! What every answered request records, on both listeners: its id (kept or made), its
//! trace context (continued with a new span), and, once answered, the metrics, the OTLP
//! span and, when the body is done, the access line and the taps' line
//! ([`crate::telemetry::access`]).

use std::sync::Arc;

use http::uri::Authority;
use http::{HeaderValue, Method, Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::ProxyError;
use super::response_body::ResponseBody;
use crate::identity::request_id::{self, X_REQUEST_ID};
use crate::identity::trace::{continue_trace, TraceContext};
use crate::telemetry::access::tap::Taps;
use crate::telemetry::access::{Answered, Watchers};
use crate::telemetry::metrics::DestinationMetrics;
use crate::telemetry::otlp::{Finished, Side, SpanExport};
use crate::wire::grpc;

/// One request from arrival to answer.
pub(crate) struct Exchange<'a> {
    /// The request's method.
    pub method: Method,
    /// Whether it is gRPC (its errors are gRPC statuses).
    pub grpc: bool,
    request_id: HeaderValue,
    trace: TraceContext,
    started: Instant,
    spans: Option<(&'a SpanExport, Side)>,
    /// The access line (and the taps' line), begun when the request arrived; `None` when
    /// nobody watches. Boxed: one pointer when off, one allocation for the line when on.
    answered: Option<Box<Answered>>,
}

/// What was tried upstream for an answer.
#[derive(Clone, Copy, Default)]
pub(crate) struct Tried<'e> {
    /// Attempts made (0: meshlet answered itself).
    pub attempts: u32,
    /// The endpoint of the last attempt.
    pub upstream: Option<&'e Authority>,
}

impl<'a> Exchange<'a> {
    /// Stamps the request id and the trace context on `req` and starts the clock.
    /// `taps` (with the access target's level) decides whether the request is watched.
    pub fn begin(
        req: &mut Request<Incoming>,
        spans: Option<&'a SpanExport>,
        side: Side,
        taps: &Taps,
    ) -> Self {
        let started = Instant::now();
        let request_id = request_id::ensure(req.headers_mut());
        let sample = spans.map_or(1.0, |s| s.sample);
        let trace = continue_trace(req.headers_mut(), sample);
        let answered = Watchers::now(taps).map(|watchers| {
            Box::new(Answered {
                watchers,
                destination: None,
                method: Method::default(),
                target: req.uri().path_and_query().cloned(),
                status: 0,
                latency: std::time::Duration::ZERO,
                attempts: 0,
                upstream: None,
                request_id: request_id.clone(),
                trace,
                // The declared length (hyper holds the client to it); else counted.
                bytes_in: req.body().size_hint().exact().unwrap_or(0),
                bytes_out: 0,
                complete: true,
            })
        });
        Exchange {
            method: req.method().clone(),
            grpc: grpc::is_grpc(req.headers()),
            request_id,
            trace,
            started,
            spans: spans.map(|s| (s, side)),
            answered,
        }
    }

    /// meshlet's own answer for `error` (JSON, or a gRPC status toward a gRPC client).
    pub fn error_response(&self, service: &str, error: &ProxyError) -> Response<ResponseBody> {
        error.to_response(service, &self.request_id, self.grpc)
    }

    /// Counts an error meshlet answers itself and keeps it among the recent errors of
    /// `/v1/stats` (error branches only: a success never gets here).
    pub fn count_error(&self, metrics: &DestinationMetrics, error: &ProxyError) {
        metrics.count_error(error.code());
        let request_id = self.request_id.to_str().unwrap_or("");
        let status = error.status().as_u16();
        metrics.recent_error(error.code(), status, error, request_id);
    }

    /// Counts, logs and traces an answer meshlet made before any upstream was tried.
    pub fn finish(
        &mut self,
        metrics: &Arc<DestinationMetrics>,
        resp: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        self.finish_tried(metrics, resp, Tried::default())
    }

    /// Counts and traces the answer, returns it with the request id, and hands the access
    /// line to its body (written when the body is done; at once for meshlet's own answer).
    pub fn finish_tried(
        &mut self,
        metrics: &Arc<DestinationMetrics>,
        mut resp: Response<ResponseBody>,
        tried: Tried<'_>,
    ) -> Response<ResponseBody> {
        let elapsed = self.started.elapsed();
        // The caller gets the id it can quote (the upstream's own, if it set one).
        resp.headers_mut()
            .entry(&X_REQUEST_ID)
            .or_insert_with(|| self.request_id.clone());
        let status = resp.status().as_u16();
        let request_id = self.request_id.to_str().unwrap_or("");
        metrics.count_request(&self.method, resp.status());
        metrics.duration.observe(elapsed.as_secs_f64());
        if let Some((export, side)) = self.spans {
            let end = std::time::SystemTime::now();
            let done = Finished {
                destination: metrics.name(),
                method: &self.method,
                status,
                request_id,
                start: end.checked_sub(elapsed).unwrap_or(end),
                end,
            };
            export.record(side, &self.trace, &done);
        }
        if let Some(mut answered) = self.answered.take() {
            answered.destination = Some(metrics.clone());
            answered.method = self.method.clone();
            answered.status = status;
            answered.latency = elapsed;
            answered.attempts = tried.attempts;
            answered.upstream = tried.upstream.cloned();
            resp.body_mut().written_when_done(answered);
        }
        resp
    }
}
