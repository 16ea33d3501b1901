//! What every answered request records, on both listeners: its id (kept or made), its
//! trace context (continued with a new span), and, once answered, the metrics, the access
//! line and the OTLP span.

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::ProxyError;
use super::response_body::ResponseBody;
use crate::identity::request_id::{self, X_REQUEST_ID};
use crate::identity::trace::{continue_trace, TraceContext};
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
}

impl<'a> Exchange<'a> {
    /// Stamps the request id and the trace context on `req` and starts the clock.
    pub fn begin(req: &mut Request<Incoming>, spans: Option<&'a SpanExport>, side: Side) -> Self {
        let started = Instant::now();
        let request_id = request_id::ensure(req.headers_mut());
        let sample = spans.map_or(1.0, |s| s.sample);
        let trace = continue_trace(req.headers_mut(), sample);
        Exchange {
            method: req.method().clone(),
            grpc: grpc::is_grpc(req.headers()),
            request_id,
            trace,
            started,
            spans: spans.map(|s| (s, side)),
        }
    }

    /// meshlet's own answer for `error` (JSON, or a gRPC status toward a gRPC client).
    pub fn error_response(&self, service: &str, error: &ProxyError) -> Response<ResponseBody> {
        error.to_response(service, &self.request_id, self.grpc)
    }

    /// Counts, logs and traces the answer, and returns it with the request id.
    pub fn finish(
        &self,
        metrics: &DestinationMetrics,
        mut resp: Response<ResponseBody>,
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
        tracing::info!(
            target: "meshlet::access",
            destination = metrics.name(),
            method = %self.method,
            status,
            duration_us = elapsed.as_micros() as u64,
            request_id,
            trace_id = self.trace.trace_id(),
        );
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
        resp
    }
}
