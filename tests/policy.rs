//! Resilience policy end to end against real faulty upstreams: retries, breakers, outlier
//! ejection, degrade modes, concurrency limits, budgets and live reload.

mod support;

#[path = "policy/faults_and_limits.rs"]
mod faults_and_limits;

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

fn yaml(body: &str) -> String {
    format!("service: {{name: orders}}\nworkers: 1\n{body}")
}

#[tokio::test]
async fn a_get_that_fails_twice_succeeds_on_the_third_attempt() {
    let up = Upstream::start("flaky").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{inventory: [\"{}\"]}}}}\ndefaults: {{retry: {{backoff: 10ms}}}}\n",
        up.addr
    )))
    .await;
    up.fail_next(2);
    let a = get_via(s.addresses.outbound, "http://inventory/flaky").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-mesh-attempts"), "3");
    assert_eq!(up.hits(), 3);
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_retries_total{destination="inventory",reason="503"}"#
        )
        .await,
        2.0
    );

    up.fail_next(5);
    let a = get_via(s.addresses.outbound, "http://inventory/flaky").await;
    assert_eq!(
        a.status, 503,
        "after the last attempt the upstream's answer is returned as is"
    );
    assert_eq!(a.json()["failed"], true);
    assert_eq!(a.header("x-mesh-attempts"), "3");
}

#[tokio::test]
async fn a_post_is_not_retried_unless_it_carries_an_idempotency_key() {
    let up = Upstream::start("flaky").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{payments: [\"{}\"]}}}}\ndefaults: {{retry: {{backoff: 10ms}}}}\n",
        up.addr
    )))
    .await;
    up.fail_next(1);
    let post = Request::post("http://payments/flaky")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let a = send(s.addresses.outbound, post).await.unwrap();
    assert_eq!((a.status.as_u16(), a.header("x-mesh-attempts")), (503, "1"));
    assert_eq!(up.hits(), 1);

    up.fail_next(1);
    let keyed = Request::post("http://payments/flaky")
        .header("idempotency-key", "order-42")
        .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))
        .unwrap();
    let a = send(s.addresses.outbound, keyed).await.unwrap();
    assert_eq!((a.status.as_u16(), a.header("x-mesh-attempts")), (200, "2"));
}

#[tokio::test]
async fn a_retried_request_sends_its_body_again_whole() {
    let up = Upstream::start("flaky").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{store: [\"{}\"]}}}}\ndefaults: {{retry: {{backoff: 5ms}}}}\n",
        up.addr
    )))
    .await;
    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    up.fail_next(2);
    let put = Request::put("http://store/flaky/echo")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let a = send(s.addresses.outbound, put).await.unwrap();
    assert_eq!((a.status.as_u16(), a.header("x-mesh-attempts")), (200, "3"));
    assert!(
        a.body == body,
        "the third attempt carried the same 40 KB body"
    );

    // Larger than limits.replay_buffer (64 KiB): once more than 64 KiB were read it cannot be
    // replayed, and the upstream's 503 comes back after one attempt. If the upstream refused
    // before meshlet read that much, the retry replays what was read and streams the rest:
    // either way the answer is honest and the body is never corrupted.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 249) as u8).collect();
    up.fail_next(1);
    let put = Request::put("http://store/flaky/echo")
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let a = send(s.addresses.outbound, put).await.unwrap();
    match a.status.as_u16() {
        503 => assert_eq!(a.header("x-mesh-attempts"), "1"),
        // The upstream answered and closed while the upload was still being written: the
        // send fails, and with more than 64 KiB already read there is nothing to replay.
        502 => {
            assert_eq!(a.header("x-mesh-error"), "upstream_unavailable");
            assert_eq!(a.header("x-mesh-attempts"), "1");
        }
        200 => assert!(a.body == big, "a replay plus the rest is the same body"),
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn a_dead_instance_beside_a_live_one_costs_the_caller_no_errors() {
    let live = Upstream::start("live").await;
    let dead = free_port();
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{inventory: [\"127.0.0.1:{dead}\", \"{}\"]}}}}\ndefaults: {{retry: {{backoff: 5ms}}, breaker: {{failures: 3, open_for: 30s}}}}\n",
        live.addr
    )))
    .await;
    let mut client = Client::connect(s.addresses.outbound).await;
    for i in 0..60 {
        let a = if i % 2 == 0 {
            client.get("http://inventory/").await
        } else {
            // A POST is retried too when the connection was refused: it never left.
            client
                .send(
                    Request::post("http://inventory/")
                        .body(Full::new(Bytes::from_static(b"x")))
                        .unwrap(),
                )
                .await
        };
        assert_eq!(a.status, 200, "request {i}");
    }
    assert_eq!(live.hits(), 60);
    assert!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_endpoint_ejections_total{destination="inventory"}"#
        )
        .await
            >= 1.0,
        "the dead endpoint was ejected"
    );
    let connect_errors = metric(
        s.addresses.telemetry,
        r#"meshlet_upstream_connect_errors_total{destination="inventory"}"#,
    )
    .await;
    assert!(
        connect_errors <= 6.0,
        "ejection stops the dialling: {connect_errors}"
    );
}

#[tokio::test]
async fn a_dead_service_trips_its_breaker_and_then_answers_in_under_a_millisecond() {
    let dead = free_port();
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{ledger: [\"127.0.0.1:{dead}\"]}}}}\ndefaults: {{retry: {{attempts: 1}}, breaker: {{failures: 3, open_for: 30s}}}}\n"
    )))
    .await;
    let mut client = Client::connect(s.addresses.outbound).await;
    for _ in 0..3 {
        assert_eq!(client.get("http://ledger/").await.status, 502);
    }
    let a = client.get("http://ledger/").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("x-mesh-error"), "circuit_open");
    assert_eq!(a.header("x-mesh-attempts"), "0");
    let retry_after: u64 = a.header("retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry_after));
    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let a = client.get("http://ledger/").await;
        times.push(started.elapsed());
        assert_eq!(a.header("x-mesh-error"), "circuit_open");
    }
    times.sort();
    assert!(
        times[25] < Duration::from_millis(1),
        "median {:?}",
        times[25]
    );
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_breaker_state{destination="ledger"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_breaker_transitions_total{destination="ledger",to="open"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn the_breaker_half_opens_and_closes_when_the_service_recovers() {
    let up = Upstream::start("recovering").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{ledger: [\"{}\"]}}}}\ndefaults: {{retry: {{attempts: 1}}, breaker: {{failures: 2, open_for: 300ms}}}}\n",
        up.addr
    )))
    .await;
    let out = s.addresses.outbound;
    up.fail_next(2);
    assert_eq!(get_via(out, "http://ledger/flaky").await.status, 503);
    assert_eq!(get_via(out, "http://ledger/flaky").await.status, 503);
    assert_eq!(
        get_via(out, "http://ledger/flaky")
            .await
            .header("x-mesh-error"),
        "circuit_open"
    );
    let hits = up.hits();
    assert!(
        eventually(Duration::from_secs(2), || async {
            get_via(out, "http://ledger/flaky").await.status == 200
        })
        .await
    );
    assert_eq!(up.hits(), hits + 1, "one probe went through and closed it");
    assert_eq!(get_via(out, "http://ledger/flaky").await.status, 200);
}

#[tokio::test]
async fn stale_answers_the_last_good_get_when_the_service_fails() {
    let up = Upstream::start("catalog").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{catalog: [\"{}\"]}}}}\nservices:\n  catalog: {{retry: {{attempts: 2, backoff: 5ms}}, degrade: {{stale: 60s}}}}\n",
        up.addr
    )))
    .await;
    let out = s.addresses.outbound;
    let fresh = get_via(out, "http://catalog/flaky?page=1").await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.header("x-mesh-degraded"), "");
    up.fail_next(100);
    let stale = get_via(out, "http://catalog/flaky?page=1").await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("x-mesh-degraded"), "stale");
    assert!(stale.header("age").parse::<u64>().is_ok());
    assert_eq!(
        stale.body, fresh.body,
        "the same body as the last good answer"
    );
    let other = get_via(out, "http://catalog/flaky?page=2").await;
    assert_eq!(
        other.status, 503,
        "nothing cached for another query: the upstream's answer"
    );
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_degraded_total{destination="catalog",mode="stale"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn static_and_read_only_degrade_modes_answer_as_documented() {
    let dead = free_port();
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{catalog: [\"127.0.0.1:{dead}\"], payments: [\"127.0.0.1:{dead}\"]}}}}\ndefaults: {{retry: {{attempts: 1}}, breaker: {{failures: 2, open_for: 30s}}}}\nservices:\n  catalog: {{degrade: {{static: {{status: 200, body: '{{\"items\":[]}}', headers: {{content-type: application/json}}}}}}}}\n  payments: {{degrade: read_only}}\n"
    )))
    .await;
    let out = s.addresses.outbound;
    let a = get_via(out, "http://catalog/items").await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-degraded")),
        (200, "static")
    );
    assert_eq!(a.json(), serde_json::json!({"items": []}));
    assert_eq!(a.header("content-type"), "application/json");

    for _ in 0..2 {
        assert_eq!(get_via(out, "http://payments/").await.status, 502);
    }
    let post = Request::post("http://payments/charge")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let a = send(out, post).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(
        (
            a.status.as_u16(),
            a.header("x-mesh-error"),
            a.header("x-mesh-degraded")
        ),
        (503, "read_only", "read_only")
    );
    let a = get_via(out, "http://payments/balance").await;
    assert_eq!(
        a.header("x-mesh-error"),
        "upstream_unavailable",
        "reads still try while open"
    );
}

#[tokio::test]
async fn max_in_flight_refuses_the_excess_with_overloaded() {
    let up = Upstream::start("slow").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{report: [\"{}\"]}}}}\nservices:\n  report: {{max_in_flight: 1}}\n",
        up.addr
    )))
    .await;
    let out = s.addresses.outbound;
    let first = tokio::spawn(async move { get_via(out, "http://report/slow/400").await });
    assert!(eventually(Duration::from_secs(2), || async { up.hits() == 1 }).await);
    let second = get_via(out, "http://report/slow/10").await;
    assert_eq!(
        (second.status.as_u16(), second.header("x-mesh-error")),
        (503, "overloaded")
    );
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(
        get_via(out, "http://report/slow/10").await.status,
        200,
        "the slot came back"
    );
}

#[tokio::test]
async fn per_try_timeout_and_total_timeout_bound_the_call() {
    let up = Upstream::start("slow").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{slow: [\"{}\"]}}}}\nservices:\n  slow: {{timeout: 2s, retry: {{attempts: 2, per_try_timeout: 100ms, backoff: 10ms}}}}\n",
        up.addr
    )))
    .await;
    let started = Instant::now();
    let a = get_via(s.addresses.outbound, "http://slow/slow/1500").await;
    let took = started.elapsed();
    assert_eq!(
        (
            a.status.as_u16(),
            a.header("x-mesh-error"),
            a.header("x-mesh-attempts")
        ),
        (504, "timeout", "2")
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1000),
        "{took:?}"
    );
}

#[tokio::test]
async fn the_retry_budget_stops_an_outage_from_multiplying_load() {
    let up = Upstream::start("down").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{search: [\"{}\"]}}}}\ndefaults: {{retry: {{attempts: 3, backoff: 1ms, budget: {{percent: 0, per_second: 1}}}}, breaker: {{failures: 1000}}}}\n",
        up.addr
    )))
    .await;
    up.fail_next(1000);
    for _ in 0..10 {
        assert_eq!(
            get_via(s.addresses.outbound, "http://search/flaky")
                .await
                .status,
            503
        );
    }
    assert!(
        up.hits() <= 12,
        "10 requests, at most a couple of retries: {}",
        up.hits()
    );
    assert!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_retry_budget_exhausted_total{destination="search"}"#
        )
        .await
            >= 8.0
    );
}

#[tokio::test]
async fn editing_the_yaml_applies_within_2s_and_a_broken_yaml_changes_nothing() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    let write = |f: &mut tempfile::NamedTempFile, text: &str| {
        let f = f.as_file_mut();
        f.set_len(0).unwrap();
        std::io::Seek::rewind(f).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
    };
    let config = |target: std::net::SocketAddr| {
        format!("service: {{name: orders}}\nworkers: 1\n{FREE_PORTS}registry: {{static: {{inventory: [\"{target}\"]}}}}\n")
    };
    write(&mut file, &config(a.addr));
    let s = sidecar_from_file(file.path()).await;
    let out = s.addresses.outbound;
    assert_eq!(
        get_via(out, "http://inventory/").await.json()["upstream"],
        "a"
    );
    let hash_before = get_host(s.addresses.api, "localhost", "/v1/config")
        .await
        .json()["hash"]
        .clone();

    write(&mut file, &config(b.addr));
    let edited = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || async {
            get_via(out, "http://inventory/").await.json()["upstream"] == "b"
        })
        .await
    );
    assert!(edited.elapsed() < Duration::from_secs(2));
    let hash_after = get_host(s.addresses.api, "localhost", "/v1/config")
        .await
        .json()["hash"]
        .clone();
    assert_ne!(
        hash_before, hash_after,
        "/v1/config shows the active config's hash"
    );

    write(&mut file, "service: {name: orders\nthis is: [not yaml\n");
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(s.addresses.telemetry, "meshlet_config_reload_errors_total").await == 1.0
        })
        .await
    );
    assert_eq!(
        get_via(out, "http://inventory/").await.json()["upstream"],
        "b",
        "old config keeps serving"
    );
    assert_eq!(
        get_host(s.addresses.api, "localhost", "/v1/config")
            .await
            .json()["hash"],
        hash_after
    );
}
