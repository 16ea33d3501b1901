//! Fault injection and rate limits end to end (docs/policy.md, "Fault injection" and "Rate
//! limits"): shares over many calls, where each acts in the stack, what the app and a gRPC
//! client get, per-caller buckets inbound, and buckets across live reloads.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde::Serialize;

use super::support::*;
use super::yaml;

const SECRET: &str = "rate-limit-test-token-secret-0123456789";

#[tokio::test]
async fn an_injected_abort_hits_its_share_at_once_and_is_never_retried() {
    let up = Upstream::start("inventory").await;
    // 503 is retryable by default and one failure would open the breaker: an abort that
    // reached either would show.
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{inventory: [\"{}\"], checkout: [\"{}\"]}}}}\ndefaults: {{retry: {{attempts: 3, backoff: 1ms}}, breaker: {{failures: 1, open_for: 30s}}}}\nservices:\n  inventory: {{fault: {{abort: {{percent: 10, status: 503}}}}}}\n  checkout: {{fault: {{abort: {{percent: 100}}}}}}\n",
        up.addr, up.addr
    )))
    .await;
    let mut client = Client::connect(s.addresses.outbound).await;
    let calls = 1000;
    let mut aborted = 0;
    for i in 0..calls {
        let a = client.get("http://inventory/items").await;
        if a.header("x-mesh-fault") == "abort" {
            aborted += 1;
            assert_eq!(a.status, 503, "call {i}");
            assert_eq!(a.header("x-mesh-error"), "fault_injected");
            assert_eq!(a.header("x-mesh-attempts"), "0");
            assert_eq!(a.json()["error"], "fault_injected");
            assert_eq!(a.json()["service"], "inventory");
        } else {
            assert_eq!(
                (a.status.as_u16(), a.header("x-mesh-attempts")),
                (200, "1"),
                "call {i}: {}",
                String::from_utf8_lossy(&a.body)
            );
            assert_eq!(a.header("x-mesh-fault"), "");
        }
    }
    assert!(
        (60..=140).contains(&aborted),
        "10 % of {calls} calls: {aborted}"
    );
    assert_eq!(
        up.hits(),
        calls - aborted,
        "the upstream saw exactly the rest"
    );
    let tel = s.addresses.telemetry;
    assert_eq!(
        metric(
            tel,
            r#"meshlet_faults_total{destination="inventory",kind="abort"}"#
        )
        .await,
        aborted as f64
    );
    assert_eq!(
        metric(
            tel,
            r#"meshlet_errors_total{code="fault_injected",destination="inventory",direction="outbound"}"#
        )
        .await,
        aborted as f64
    );
    let text = get_host(tel, "x", "/metrics").await;
    let retries: f64 = String::from_utf8_lossy(&text.body)
        .lines()
        .filter(|l| l.starts_with("meshlet_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(retries, 0.0, "no retry was sent");
    assert_eq!(
        metric(tel, r#"meshlet_breaker_state{destination="inventory"}"#).await,
        0.0,
        "the breaker never saw an abort"
    );

    // The status defaults to 503; a gRPC client gets UNAVAILABLE, trailers-only.
    let hits = up.hits();
    let grpc = Request::post("http://checkout/shop.Checkout/Pay")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send(s.addresses.outbound, grpc).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("grpc-status"), "14");
    assert_eq!(a.header("x-mesh-error"), "fault_injected");
    assert_eq!(a.header("x-mesh-fault"), "abort");
    assert!(a.body.is_empty());
    let a = get_via(s.addresses.outbound, "http://checkout/").await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-fault")),
        (503, "abort")
    );
    assert_eq!(up.hits(), hits, "checkout's upstream was never called");
}

#[tokio::test]
async fn an_injected_delay_waits_outside_the_timeout_and_marks_the_answer() {
    let up = Upstream::start("inventory").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{inventory: [\"{}\"]}}}}\nservices:\n  inventory: {{timeout: 100ms, retry: {{attempts: 1}}, fault: {{delay: {{percent: 100, duration: 200ms}}}}}}\n",
        up.addr
    )))
    .await;
    let started = Instant::now();
    let a = get_via(s.addresses.outbound, "http://inventory/items").await;
    let took = started.elapsed();
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-fault")),
        (200, "delay"),
        "a 200 ms delay does not spend a 100 ms timeout"
    );
    assert_eq!(a.header("x-mesh-attempts"), "1");
    assert!(took >= Duration::from_millis(200), "{took:?}");

    // The timeout still bounds the call after the delay, and its error is marked too.
    let started = Instant::now();
    let a = get_via(s.addresses.outbound, "http://inventory/slow/1000").await;
    let took = started.elapsed();
    assert_eq!(
        (
            a.status.as_u16(),
            a.header("x-mesh-error"),
            a.header("x-mesh-fault")
        ),
        (504, "timeout", "delay")
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(900),
        "{took:?}"
    );
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_faults_total{destination="inventory",kind="delay"}"#
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_rate_limit_lets_the_burst_through_at_once_then_the_rate() {
    let up = Upstream::start("inventory").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{inventory: [\"{}\"]}}}}\ndefaults: {{breaker: {{failures: 1}}}}\nservices:\n  inventory: {{rate_limit: {{per_second: 50, burst: 10}}}}\n",
        up.addr
    )))
    .await;
    let mut client = Client::connect(s.addresses.outbound).await;
    let started = Instant::now();
    for i in 0..10 {
        let a = client.get("http://inventory/").await;
        assert_eq!(a.status, 200, "call {i} of the burst");
    }
    let (mut passed, mut refused) = (10, 0);
    // One second of calls as fast as one connection sends them (bounded either way).
    for _ in 0..20_000 {
        if started.elapsed() >= Duration::from_secs(1) {
            break;
        }
        let a = client.get("http://inventory/").await;
        match a.status.as_u16() {
            200 => passed += 1,
            429 => {
                refused += 1;
                assert_eq!(a.header("x-mesh-error"), "rate_limited");
                assert_eq!(a.json()["error"], "rate_limited");
                assert_eq!(a.header("x-mesh-attempts"), "0");
                let retry_after: u64 = a.header("retry-after").parse().unwrap();
                assert!(retry_after >= 1);
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&a.body)),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(refused > 0, "one connection outruns 50/s");
    let expected = 10.0 + 50.0 * elapsed;
    assert!(
        (passed as f64) >= 10.0 + 25.0 * elapsed && (passed as f64) <= expected * 1.3 + 2.0,
        "{passed} passed in {elapsed:.2}s; about {expected:.0} expected"
    );
    assert_eq!(up.hits(), passed, "only calls with a token went out");
    let tel = s.addresses.telemetry;
    assert_eq!(
        metric(
            tel,
            r#"meshlet_rate_limited_total{destination="inventory",direction="outbound"}"#
        )
        .await,
        refused as f64
    );
    assert_eq!(
        metric(tel, r#"meshlet_breaker_state{destination="inventory"}"#).await,
        0.0,
        "a 429 of meshlet's own is no breaker failure"
    );

    // A gRPC client is told RESOURCE_EXHAUSTED.
    let mut exhausted = false;
    for _ in 0..100 {
        let grpc = Request::post("http://inventory/inv.Items/Get")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = client.send(grpc).await;
        if a.header("x-mesh-error") == "rate_limited" {
            assert_eq!((a.status.as_u16(), a.header("grpc-status")), (200, "8"));
            exhausted = true;
            break;
        }
    }
    assert!(exhausted, "the bucket ran dry within 100 calls");
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

fn token(iss: &str) -> String {
    let now = now_ms() / 1000;
    let claims = Claims {
        iss,
        aud: "inventory",
        iat: now,
        exp: now + 60,
    };
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

#[tokio::test]
async fn inbound_each_verified_caller_has_its_own_bucket_and_the_unauthenticated_share_one() {
    let app = Upstream::start("inventory-app").await;
    // 0.05/s: no token comes back while the test runs.
    let s = MeshletSpec::new("inventory")
        .workers(1)
        .app(app.addr)
        .with(&format!(
            "auth:\n  token: {{secret: [\"{SECRET}\"]}}\n  inbound: {{rate_limit: {{per_second: 0.05, burst: 2, per_caller: true}}}}\n"
        ))
        .start()
        .await;
    let inbound = s.addresses.inbound.unwrap();
    let call = |credential: Option<String>| async move {
        let mut req = Request::get("/items").header("host", "inventory");
        if let Some(t) = credential {
            req = req.header("x-mesh-token", t);
        }
        send(inbound, req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap()
    };
    for (who, credential) in [
        ("orders", Some(token("orders"))),
        ("game", Some(token("game"))),
        ("unauthenticated", None),
    ] {
        for n in 0..2 {
            let a = call(credential.clone()).await;
            assert_eq!(a.status, 200, "{who}, call {n}");
            let caller = &a.json()["headers"]["x-mesh-caller"];
            match &credential {
                Some(_) => assert_eq!(caller, who),
                None => assert!(caller.is_null()),
            }
        }
        let a = call(credential.clone()).await;
        assert_eq!(
            (a.status.as_u16(), a.header("x-mesh-error")),
            (429, "rate_limited"),
            "{who}'s third call"
        );
        assert_eq!(a.json()["service"], "inventory");
        let retry_after: u64 = a.header("retry-after").parse().unwrap();
        assert!(retry_after >= 1, "{retry_after}");
    }
    // A token that does not verify (require is off) passes as unauthenticated: same bucket.
    let a = call(Some("not.a.jwt".to_owned())).await;
    assert_eq!(a.status, 429);
    assert_eq!(app.hits(), 6, "two calls per bucket reached the app");
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_rate_limited_total{destination="inventory",direction="inbound"}"#
        )
        .await,
        4.0
    );
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_bucket_and_a_changed_rate_starts_a_fresh_one() {
    let up = Upstream::start("inventory").await;
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    let write = |f: &mut tempfile::NamedTempFile, text: &str| {
        let f = f.as_file_mut();
        f.set_len(0).unwrap();
        std::io::Seek::rewind(f).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
    };
    // 0.05/s: a token comes back every 20 s, longer than the test waits for reloads.
    let config = |timeout: &str, per_second: &str| {
        format!("service: {{name: orders}}\nworkers: 1\n{FREE_PORTS}registry: {{static: {{inventory: [\"{}\"]}}}}\nservices:\n  inventory: {{timeout: {timeout}, rate_limit: {{per_second: {per_second}, burst: 2}}}}\n", up.addr)
    };
    write(&mut file, &config("5s", "0.05"));
    let s = sidecar_from_file(file.path()).await;
    let (out, tel) = (s.addresses.outbound, s.addresses.telemetry);
    let reloads = |n: f64| async move {
        eventually(Duration::from_secs(5), || async {
            metric(tel, "meshlet_config_reloads_total").await == n
        })
        .await
    };
    for _ in 0..2 {
        assert_eq!(get_via(out, "http://inventory/").await.status, 200);
    }
    assert_eq!(get_via(out, "http://inventory/").await.status, 429);

    write(&mut file, &config("4s", "0.05"));
    assert!(reloads(1.0).await, "the timeout change was applied");
    let a = get_via(out, "http://inventory/").await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-error")),
        (429, "rate_limited"),
        "a reload that left the limit alone did not refill the bucket"
    );

    // A broken value is refused with its field named, and the limit stays.
    let broken = config("4s", "0.05").replace("timeout: 4s", "fault: {abort: {percent: 150}}");
    let refused = meshlet::config::LoadedConfig::from_text(&broken, "edited.yaml").unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("services.inventory.fault.abort.percent: must be between 0 and 100"),
        "{refused}"
    );
    write(&mut file, &broken);
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(tel, "meshlet_config_reload_errors_total").await == 1.0
        })
        .await
    );
    assert_eq!(get_via(out, "http://inventory/").await.status, 429);

    write(&mut file, &config("4s", "0.06"));
    assert!(reloads(2.0).await, "the rate change was applied");
    for n in 0..2 {
        let a = get_via(out, "http://inventory/").await;
        assert_eq!(a.status, 200, "call {n} on the fresh bucket");
    }
    assert_eq!(get_via(out, "http://inventory/").await.status, 429);
    assert_eq!(up.hits(), 4);
}
