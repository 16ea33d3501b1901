//! Delivery to the app: the envelope and its headers, order, retries with backoff, an app that
//! is down, the lag and pending gauges, and a shutdown mid-delivery.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::events::{
    config, group_exists, publisher, subscriber, subscription, Deliveries, Delivery,
};
use crate::support::{
    eventually, free_port, metric, sidecar, RecordedRequest, RecordingApp, RedisServer,
};
use crate::{dlq_entries, pending, publish};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_the_envelope_with_headers_and_acks() {
    let redis = RedisServer::start();
    let app = RecordingApp::ok().await;
    let s = subscriber("risk", &redis, &app, "trade.executed", "").await;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let payload = r#"{"px": 1.50,  "qty":[1, 2], "note":"é"}"#;
    let a = publish(
        s.addresses.api,
        "trade.executed",
        payload,
        &[
            ("x-event-id", "e-1"),
            ("x-event-version", "2"),
            ("traceparent", parent),
        ],
    )
    .await;
    assert_eq!(a.status, 202);
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    let got = &app.recorded()[0];
    assert_eq!(got.path, "/events/trade.executed");
    assert_eq!(got.header("x-event-id"), "e-1");
    assert_eq!(got.header("x-event-type"), "trade.executed");
    assert_eq!(got.header("x-event-attempt"), "1");
    assert_eq!(got.header("content-type"), "application/json");
    let tp = got.header("traceparent");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && tp.ends_with("-01"),
        "{tp}"
    );
    assert_ne!(tp, parent, "a new span id");
    // The payload is embedded byte for byte.
    let raw = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(raw.contains(&format!("\"payload\":{payload}")), "{raw}");
    let env = got.json();
    let keys: Vec<&String> = env.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6, "{env}");
    assert_eq!(env["event_id"], "e-1");
    assert_eq!(env["event_type"], "trade.executed");
    assert_eq!(env["source"], "risk");
    assert_eq!(env["version"], 2);
    assert!(env["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(env["payload"]["qty"][1], 2);
    assert!(
        eventually(Duration::from_secs(3), || async {
            pending(&redis, "mesh:events:{trade.executed}", "risk") == 0
        })
        .await,
        "acked"
    );
    let tel = s.addresses.telemetry;
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_delivered_total{outcome="ok",type="trade.executed"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            tel,
            r#"meshlet_event_delivery_duration_seconds_count{type="trade.executed"}"#
        )
        .await,
        1.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_delivers_in_stream_order() {
    let redis = RedisServer::start();
    let app = RecordingApp::ok().await;
    let s = subscriber("ledger", &redis, &app, "o", "").await;
    for i in 0..60 {
        let a = publish(
            s.addresses.api,
            "o",
            &format!("{{\"n\":{i}}}"),
            &[("x-event-id", &format!("o-{i}"))],
        )
        .await;
        assert_eq!(a.status, 202);
    }
    assert!(eventually(Duration::from_secs(10), || async { app.count() == 60 }).await);
    let order: Vec<String> = app
        .recorded()
        .iter()
        .map(RecordedRequest::event_id)
        .collect();
    let expected: Vec<String> = (0..60).map(|i| format!("o-{i}")).collect();
    assert_eq!(order, expected);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_408_429_with_the_attempt_counter_then_acks() {
    let redis = RedisServer::start();
    // 503, 429, 408, then 200.
    let app = RecordingApp::answering(|r: &RecordedRequest| match r.attempt() {
        1 => 503,
        2 => 429,
        3 => 408,
        _ => 200,
    })
    .await;
    let s = subscriber("risk", &redis, &app, "r", ", max_attempts: 5").await;
    assert_eq!(
        publish(s.addresses.api, "r", "{}", &[("x-event-id", "r-1")])
            .await
            .status,
        202
    );
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 4 }).await);
    let got = app.of("r-1");
    let attempts: Vec<u32> = got.iter().map(RecordedRequest::attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4]);
    // Backoff between tries (20 ms doubling, jittered into its upper half).
    for w in got.windows(2) {
        assert!(w[1].at - w[0].at >= Duration::from_millis(10), "backed off");
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            pending(&redis, "mesh:events:{r}", "risk") == 0
        })
        .await
    );
    assert!(dlq_entries(&redis, "r").is_empty());
    let tel = s.addresses.telemetry;
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_delivered_total{outcome="retry",type="r"}"#
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_delivered_total{outcome="ok",type="r"}"#
        )
        .await,
        1.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_is_down_gets_the_event_when_it_is_back() {
    let redis = RedisServer::start();
    // Nothing listens on the app port yet: connect errors, retried with backoff.
    let port = free_port();
    let app_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let subs = subscription("d", ", max_attempts: 20, backoff: 50ms, max_backoff: 200ms");
    let s = sidecar(&config("risk", &redis, Some(app_addr), &subs)).await;
    assert!(group_exists(&redis, "mesh:events:{d}", "risk").await);
    assert_eq!(
        publish(s.addresses.api, "d", "{}", &[("x-event-id", "d-1")])
            .await
            .status,
        202
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let retries = metric(
        s.addresses.telemetry,
        r#"meshlet_events_delivered_total{outcome="retry",type="d"}"#,
    )
    .await;
    assert!(
        (1.0..=8.0).contains(&retries),
        "backing off, not a storm: {retries}"
    );
    // The app comes up on that port.
    let listener = std::net::TcpListener::bind(app_addr).expect("app port still free");
    drop(listener);
    let app = RecordingApp::ok_on(app_addr).await;
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    assert!(app.recorded()[0].attempt() >= 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_report_lag_and_pending() {
    let redis = RedisServer::start();
    // The app holds each delivery a while: pending stays up, the rest waits (lag).
    let app = RecordingApp::ok().await;
    app.slow(300);
    let s = subscriber("risk", &redis, &app, "g", ", timeout: 2s").await;
    for i in 0..5 {
        assert_eq!(
            publish(
                s.addresses.api,
                "g",
                "{}",
                &[("x-event-id", &format!("g-{i}"))],
            )
            .await
            .status,
            202
        );
    }
    let tel = s.addresses.telemetry;
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(tel, r#"meshlet_events_consumer_lag{type="g"}"#).await >= 1.0
                && metric(tel, r#"meshlet_events_pending{type="g"}"#).await == 1.0
        })
        .await,
        "lag and pending reported"
    );
    assert!(eventually(Duration::from_secs(10), || async { app.count() == 5 }).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(tel, r#"meshlet_events_consumer_lag{type="g"}"#).await == 0.0
                && metric(tel, r#"meshlet_events_pending{type="g"}"#).await == 0.0
        })
        .await
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_deliveries_and_reads_no_more() {
    let redis = RedisServer::start();
    let app = RecordingApp::ok().await;
    app.slow(300);
    let s = subscriber("risk", &redis, &app, "h", ", timeout: 2s").await;
    let publisher = publisher(&redis).await;
    assert_eq!(
        publish(publisher.addresses.api, "h", "{}", &[("x-event-id", "h-1")])
            .await
            .status,
        202
    );
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    s.shutdown().await;
    // The delivery in flight is answered and acked; nothing new is read.
    assert!(
        eventually(Duration::from_secs(3), || async {
            pending(&redis, "mesh:events:{h}", "risk") == 0
        })
        .await,
        "in-flight delivery finished and acked"
    );
    assert_eq!(
        publish(publisher.addresses.api, "h", "{}", &[("x-event-id", "h-2")])
            .await
            .status,
        202
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count(), 1);
    publisher.shutdown().await;
}
