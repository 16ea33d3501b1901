//! OTLP trace export (`telemetry.otlp`): one span per request per hop, with the W3C ids
//! meshlet already stamps — a CLIENT span on the outbound side (child of the app's
//! `traceparent`, its id the one sent upstream) and a SERVER span on the inbound side
//! (child of the calling meshlet's span). Spans go to the OpenTelemetry SDK's batch
//! processor: a bounded queue drained by its own thread, so a request never waits on export
//! (a full queue drops spans). Nothing is built or exported when the section is unset.
//!
//! Two transports: OTLP/HTTP with protobuf bodies (the default; the SDK's export thread
//! posts with a blocking client) and OTLP/gRPC ([`grpc`]: tonic, on a runtime of its own).

mod grpc;

use std::cell::Cell;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use crate::config::{OtlpConfig, OtlpProtocol};
use crate::identity::trace::TraceContext;

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp: {0}")]
pub struct OtlpError(String);

thread_local! {
    // The ids of the span being built on this thread: the SDK asks its id generator for
    // them while building synchronously, and meshlet's ids are already decided (they are
    // on the wire in `traceparent`).
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Hands the SDK the ids meshlet chose (random ones if asked outside a span build).
#[derive(Debug)]
struct WireIds;

impl IdGenerator for WireIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS
            .with(|c| c.get().map(|(t, _)| t))
            .unwrap_or_else(|| TraceId::from(fastrand::u128(1..)))
    }
    fn new_span_id(&self) -> SpanId {
        NEXT_IDS
            .with(|c| c.get().map(|(_, s)| s))
            .unwrap_or_else(|| SpanId::from(fastrand::u64(1..)))
    }
}

/// Which side of the hop a span describes.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    /// Outbound: this meshlet calling a destination.
    Client,
    /// Inbound: this meshlet receiving a call for its app.
    Server,
}

/// What a span records about one request.
pub struct Finished<'a> {
    /// Destination (outbound) or this service (inbound).
    pub destination: &'a str,
    /// Request method.
    pub method: &'a http::Method,
    /// Response status.
    pub status: u16,
    /// The request id.
    pub request_id: &'a str,
    /// When the request arrived.
    pub start: SystemTime,
    /// When its response headers were ready.
    pub end: SystemTime,
}

/// The span exporter of one sidecar.
pub struct SpanExport {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Share of traces started here that are sampled.
    pub sample: f64,
}

impl std::fmt::Debug for SpanExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanExport")
            .field("sample", &self.sample)
            .finish()
    }
}

impl SpanExport {
    /// An exporter for `config.protocol`: OTLP/HTTP posting to `{endpoint}/v1/traces`, or
    /// OTLP/gRPC calling `TraceService/Export` at `{endpoint}`.
    pub fn new(service: &str, config: &OtlpConfig) -> Result<SpanExport, OtlpError> {
        let endpoint = config.endpoint.0.to_string();
        let endpoint = endpoint.trim_end_matches('/');
        let resource = Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        // The same bounded queue and schedule for both transports.
        let batch = || {
            BatchConfigBuilder::default()
                .with_max_queue_size(4096)
                .with_scheduled_delay(Duration::from_millis(500))
                .build()
        };
        let processor = match config.protocol {
            OtlpProtocol::HttpProtobuf => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{endpoint}/v1/traces"))
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| OtlpError(e.to_string()))?;
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch())
                    .build()
            }
            OtlpProtocol::Grpc => {
                let exporter = grpc::GrpcExporter::new(endpoint.to_owned(), &resource)?;
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch())
                    .build()
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_id_generator(WireIds)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("meshlet");
        Ok(SpanExport {
            provider,
            tracer,
            sample: config.sample,
        })
    }

    /// Records one span for a sampled request; does nothing for an unsampled one.
    pub fn record(&self, side: Side, trace: &TraceContext, done: &Finished<'_>) {
        if !trace.sampled() {
            return;
        }
        let (Ok(trace_id), Ok(span_id)) = (
            TraceId::from_hex(trace.trace_id()),
            SpanId::from_hex(trace.span_id()),
        ) else {
            return;
        };
        let parent = match trace
            .parent_span_id()
            .and_then(|p| SpanId::from_hex(p).ok())
        {
            Some(parent_id) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                parent_id,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let (kind, name) = match side {
            Side::Client => (SpanKind::Client, "meshlet outbound"),
            Side::Server => (SpanKind::Server, "meshlet inbound"),
        };
        let builder = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(done.start)
            .with_attributes([
                KeyValue::new("http.request.method", done.method.as_str().to_owned()),
                KeyValue::new("http.response.status_code", i64::from(done.status)),
                KeyValue::new("meshlet.destination", done.destination.to_owned()),
                KeyValue::new("meshlet.request_id", done.request_id.to_owned()),
            ]);
        NEXT_IDS.with(|c| c.set(Some((trace_id, span_id))));
        let mut span = self.tracer.build_with_context(builder, &parent);
        NEXT_IDS.with(|c| c.set(None));
        if done.status >= 500 {
            span.set_status(Status::error(format!("HTTP {}", done.status)));
        }
        span.end_with_timestamp(done.end);
    }

    /// Exports what is queued and stops (at shutdown). The processor's shutdown exports its
    /// queue itself, so this one call bounds the wait to the SDK's 5 s; a `force_flush`
    /// first would add a second 5 s wait when the collector does not answer.
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}
