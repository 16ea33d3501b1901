//! OTLP trace export against real OTLP receivers on 127.0.0.1, one per transport: OTLP/HTTP
//! (decoded with the opentelemetry-proto types) and OTLP/gRPC (tonic serving the
//! opentelemetry-proto `TraceService`). Through either, a call through two meshlets gives a
//! CLIENT span that is the child of the app's `traceparent` and a SERVER span that is the
//! child of that one.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use support::*;

/// (service.name, span) pairs the receiver got.
type Received = Arc<Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>;

async fn otlp_receiver() -> (Server, Received) {
    let got: Received = Arc::default();
    let sink = got.clone();
    let server = serve(Http::H1, move |req: Request<Incoming>| {
        let sink = sink.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let export = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
            keep(export, &sink);
            Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    (server, got)
}

/// Files every span of `export` under its resource's `service.name`.
fn keep(export: ExportTraceServiceRequest, sink: &Received) {
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                sink.lock().unwrap().push((service.clone(), span));
            }
        }
    }
}

/// An OTLP/gRPC collector: `TraceService/Export` served by tonic.
struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(request.into_inner(), &self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts the gRPC collector on 127.0.0.1; the port is bound before this returns.
async fn otlp_grpc_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Received = Arc::default();
    let service = TraceServiceServer::new(Collector(got.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, got)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The app's own trace and span ids, sent in `traceparent` with the sampled flag.
const APP_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const APP_SPAN: &str = "b7ad6b7169203331";
/// A trace the app marked unsampled: nothing of it may be exported.
const QUIET_TRACE: &str = "11111111111111111111111111111111";

/// orders' meshlet (the caller) → inventory's meshlet (the callee) → inventory's app, both
/// meshlets exporting to the same receiver with `telemetry` (a YAML line).
struct TwoHops {
    meshlets: Pair,
    _redis: RedisServer,
    _app: Upstream,
}

/// Starts the two hops and waits until the caller reaches inventory; the receiver's spans
/// of that warm-up are cleared.
async fn two_hops(telemetry: &str, got: &Received) -> TwoHops {
    let redis = RedisServer::start();
    let app = Upstream::start("inventory-app").await;
    let on_redis = |spec: MeshletSpec| spec.workers(1).redis(&redis).with(telemetry);
    let meshlets = callee_and_caller(
        &on_redis(MeshletSpec::new("inventory").app(app.addr)),
        &on_redis(MeshletSpec::new("orders")),
    )
    .await;
    let out = meshlets.caller.addresses.outbound;
    assert!(until_status(out, "http://inventory/", 200, Duration::from_secs(3)).await);
    got.lock().unwrap().clear();
    TwoHops {
        meshlets,
        _redis: redis,
        _app: app,
    }
}

/// One call carrying an unsampled `traceparent`, then one carrying the app's sampled one.
/// In that order: a span of the first, had it been queued, would leave before the second's.
async fn call_unsampled_then_sampled(hops: &TwoHops) {
    let out = hops.meshlets.caller.addresses.outbound;
    let req = Request::get("http://inventory/quiet")
        .header(
            "traceparent",
            format!("00-{QUIET_TRACE}-2222222222222222-00"),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(out, req).await.unwrap().status, 200);
    let req = Request::get("http://inventory/items")
        .header("traceparent", format!("00-{APP_TRACE}-{APP_SPAN}-01"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(out, req).await.unwrap().status, 200);
}

/// Spans of the app's trace received so far.
fn app_spans(got: &Received) -> usize {
    got.lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == APP_TRACE)
        .count()
}

/// The caller's CLIENT span is the child of the app's span, the callee's SERVER span the
/// child of the caller's, each under its own `service.name`; the unsampled trace is absent.
fn assert_parent_and_child(got: &Received) {
    let spans: Vec<_> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == APP_TRACE)
        .cloned()
        .collect();
    let client = spans
        .iter()
        .find(|(svc, s)| svc.contains("orders") && s.kind == 3)
        .expect("a CLIENT span from orders");
    let server = spans
        .iter()
        .find(|(svc, s)| svc.contains("inventory") && s.kind == 2)
        .expect("a SERVER span from inventory");
    assert_eq!(
        hex(&client.1.parent_span_id),
        APP_SPAN,
        "the caller meshlet's span is the child of the app's"
    );
    assert_eq!(
        hex(&server.1.parent_span_id),
        hex(&client.1.span_id),
        "the far meshlet's span is the child of the caller's"
    );
    assert!(client.1.end_time_unix_nano >= client.1.start_time_unix_nano);
    assert!(
        got.lock()
            .unwrap()
            .iter()
            .all(|(_, s)| hex(&s.trace_id) != QUIET_TRACE),
        "unsampled traces are not exported"
    );
}

#[tokio::test]
async fn a_call_through_two_meshlets_exports_parent_and_child_spans() {
    let (receiver, got) = otlp_receiver().await;
    let otlp = format!(
        "telemetry: {{otlp: {{endpoint: \"http://{}\", sample: 1.0}}}}\n",
        receiver.addr
    );
    let hops = two_hops(&otlp, &got).await;
    call_unsampled_then_sampled(&hops).await;
    assert!(
        eventually(Duration::from_secs(5), || {
            let n = app_spans(&got);
            async move { n >= 2 }
        })
        .await,
        "both hops exported within the batch delay"
    );
    // The unsampled call went first into the same queues: a batch that carried the app's
    // spans would have carried it too.
    assert_parent_and_child(&got);
    hops.meshlets.callee.shutdown().await;
}

#[tokio::test]
async fn grpc_export_reaches_a_trace_service_and_is_flushed_at_shutdown() {
    let (receiver, got) = otlp_grpc_receiver().await;
    let otlp = format!(
        "telemetry: {{otlp: {{endpoint: \"http://{receiver}\", protocol: grpc, sample: 1.0}}}}\n"
    );
    let hops = two_hops(&otlp, &got).await;
    call_unsampled_then_sampled(&hops).await;
    // No waiting for the batch delay: both spans were queued before the answer reached the
    // client, and a graceful shutdown exports what is queued before it returns.
    hops.meshlets.caller.shutdown().await;
    hops.meshlets.callee.shutdown().await;
    assert_eq!(app_spans(&got), 2, "one span per hop, flushed at shutdown");
    assert_parent_and_child(&got);
}
