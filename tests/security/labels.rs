//! Bounded metric labels: an upstream (or whoever writes the registry) must not be able to
//! grow the label sets Prometheus scrapes. docs/metrics.md, "Labels".

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::support::*;

#[tokio::test]
async fn a_grpc_status_outside_0_to_16_is_counted_as_other() {
    // A hostile upstream answers each call with another made-up grpc-status, as
    // trailers-only headers, hoping for one new series per call.
    let up = serve(Http::Auto, |req: Request<Incoming>| async move {
        let status = req.uri().path().trim_start_matches("/status/").to_owned();
        let mut resp = Response::new(Full::new(Bytes::new()));
        let h = resp.headers_mut();
        h.insert("content-type", "application/grpc".parse().unwrap());
        h.insert("grpc-status", status.parse().unwrap());
        resp
    })
    .await;
    let s = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{greeter: [\"{}\"]}}}}\nservices:\n  greeter: {{retry: {{attempts: 1}}}}\n",
        up.addr
    ))
    .await;
    let statuses = [999u32, 17, 100, 4_294_967_295];
    for status in statuses.iter().chain(&[14]) {
        let req = Request::post(format!("http://greeter/status/{status}"))
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = send(s.addresses.outbound, req).await.expect("answered");
        assert_eq!(a.header("grpc-status"), status.to_string());
    }
    let series = |code: &str| {
        format!(
            r#"meshlet_grpc_responses_total{{destination="greeter",direction="outbound",grpc_status="{code}"}}"#
        )
    };
    let telemetry = s.addresses.telemetry;
    assert_eq!(metric(telemetry, &series("other")).await, 4.0);
    assert_eq!(metric(telemetry, &series("14")).await, 1.0);
    let text = get_host(telemetry, "x", "/metrics").await;
    let text = String::from_utf8_lossy(&text.body);
    for status in statuses {
        assert!(
            !text.contains(&format!("grpc_status=\"{status}\"")),
            "a series per made-up status: {text}"
        );
    }
}
