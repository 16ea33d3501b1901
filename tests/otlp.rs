//! OTLP trace export against a real OTLP/HTTP receiver on 127.0.0.1 (decoded with the
//! opentelemetry-proto types): a call through two meshlets gives a CLIENT span that is the
//! child of the app's `traceparent` and a SERVER span that is the child of that one.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use support::*;

/// (service.name, span) pairs the receiver got.
type Received = Arc<Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>;

async fn otlp_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Received = Arc::default();
    let sink = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let sink = sink.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let export =
                            ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
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
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, got)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_call_through_two_meshlets_exports_parent_and_child_spans() {
    let (receiver, got) = otlp_receiver().await;
    let redis = RedisServer::start();
    let app = Upstream::start("inventory-app").await;
    let otlp = format!("telemetry: {{otlp: {{endpoint: \"http://{receiver}\", sample: 1.0}}}}\n");
    let callee = sidecar(&format!(
        "service: {{name: inventory, app: \"http://{}\"}}\nworkers: 1\nregistry: {{redis: \"{}\"}}\n{otlp}",
        app.addr,
        redis.url()
    ))
    .await;
    let caller = sidecar(&format!(
        "service: {{name: orders}}\nworkers: 1\nregistry: {{redis: \"{}\"}}\n{otlp}",
        redis.url()
    ))
    .await;
    let out = caller.addresses.outbound;
    assert!(
        eventually(Duration::from_secs(3), || async {
            get_via(out, "http://inventory/").await.status == 200
        })
        .await
    );
    got.lock().unwrap().clear();

    let app_trace = "0af7651916cd43dd8448eb211c80319c";
    let app_span = "b7ad6b7169203331";
    let req = Request::get("http://inventory/items")
        .header("traceparent", format!("00-{app_trace}-{app_span}-01"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(out, req).await.unwrap().status, 200);
    assert!(
        eventually(Duration::from_secs(5), || {
            let n = got
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| hex(&s.trace_id) == app_trace)
                .count();
            async move { n >= 2 }
        })
        .await,
        "both hops exported within the batch delay"
    );
    let spans: Vec<_> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == app_trace)
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
        app_span,
        "the caller meshlet's span is the child of the app's"
    );
    assert_eq!(
        hex(&server.1.parent_span_id),
        hex(&client.1.span_id),
        "the far meshlet's span is the child of the caller's"
    );
    assert!(client.1.end_time_unix_nano >= client.1.start_time_unix_nano);

    // Unsampled traces are not exported.
    got.lock().unwrap().clear();
    let req = Request::get("http://inventory/quiet")
        .header(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-00",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(out, req).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(got
        .lock()
        .unwrap()
        .iter()
        .all(|(_, s)| hex(&s.trace_id) != "11111111111111111111111111111111"));
    callee.shutdown().await;
}
