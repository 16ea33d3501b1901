//! The operator's views on the local API (docs/metrics.md, "Local API"; docs/operations.md,
//! "Admin page and stats"): `GET /v1/stats` against real traffic through a real sidecar,
//! and the admin page at `GET /` with its content-security-policy. The page in a browser is
//! `.ci/admin-page`.

mod support;

use std::time::Duration;

use support::*;

fn yaml(body: &str) -> String {
    format!("service: {{name: orders}}\nworkers: 1\n{body}")
}

/// `GET /v1/stats` on the local API, as JSON.
async fn stats(api: std::net::SocketAddr) -> serde_json::Value {
    let answer = get_host(api, "127.0.0.1", "/v1/stats").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), "application/json");
    answer.json()
}

fn destination<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["destinations"]
        .as_array()
        .expect("destinations is a list")
        .iter()
        .find(|d| d["name"] == name && d["direction"] == "outbound")
        .unwrap_or_else(|| panic!("no outbound {name} in {stats}"))
}

#[tokio::test]
async fn a_first_look_shows_the_traffic_since_start() {
    let up = Upstream::start("inventory").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{inventory: [\"{}\"]}}}}\n",
        up.addr
    )))
    .await;
    let mut client = Client::connect(s.addresses.outbound).await;
    for _ in 0..7 {
        assert_eq!(client.get("http://inventory/items").await.status, 200);
    }
    // Nobody looked while the requests went: the first answer still shows them.
    let first = stats(s.addresses.api).await;
    let inventory = destination(&first, "inventory");
    assert_eq!(inventory["requests_total"], 7);
    assert_eq!(inventory["success_rate"], 1.0, "{inventory}");
    assert!(inventory["rps"].as_f64().unwrap() > 0.0, "{inventory}");
    assert!(inventory["p99_ms"].as_f64().is_some(), "{inventory}");
    assert!(first["window_seconds"].as_f64().unwrap() > 0.0, "{first}");
}

#[tokio::test]
async fn stats_count_the_requests_sent_and_show_a_breaker_opening() {
    let up = Upstream::start("inventory").await;
    let dead = free_port();
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{inventory: [\"{}\"], ledger: [\"127.0.0.1:{dead}\"]}}}}\n\
         defaults: {{retry: {{attempts: 1}}, breaker: {{failures: 2, open_for: 30s}}}}\n",
        up.addr
    )))
    .await;
    let api = s.addresses.api;

    // The first look starts the sampler; its window reaches back to the start, and
    // nothing answered yet, so no window figures.
    let first = stats(api).await;
    assert_eq!(first["service"], "orders");
    let window = first["window_seconds"].as_f64().expect("a window");
    assert!((0.0..10.0).contains(&window), "{first}");
    assert!(
        first["events"].is_null() && first["hub"].is_null(),
        "{first}"
    );
    let inventory = destination(&first, "inventory");
    assert_eq!(inventory["requests_total"], 0);
    assert!(inventory["success_rate"].is_null() && inventory["p99_ms"].is_null());
    assert_eq!(inventory["breaker"], "closed");
    assert_eq!(
        inventory["endpoints"],
        serde_json::json!({"up": 1, "ejected": 0, "draining": 0})
    );

    const SENT: u64 = 25;
    let mut client = Client::connect(s.addresses.outbound).await;
    for _ in 0..SENT {
        assert_eq!(client.get("http://inventory/items").await.status, 200);
    }
    let after = stats(api).await;
    let inventory = destination(&after, "inventory");
    assert_eq!(inventory["requests_total"], SENT);
    assert_eq!(inventory["success_rate"], 1.0);
    assert!(inventory["rps"].as_f64().unwrap() > 0.0, "{inventory}");
    let p50 = inventory["p50_ms"].as_f64().expect("p50 after requests");
    let p99 = inventory["p99_ms"].as_f64().expect("p99 after requests");
    assert!(0.0 < p50 && p50 <= p99 && p99 < 10_000.0, "{inventory}");
    assert!(after["recent_errors"].as_array().unwrap().is_empty());

    // Two failed calls open the ledger's breaker (failures: 2); the third is refused.
    for expected in [502, 502, 503] {
        assert_eq!(client.get("http://ledger/pay").await.status, expected);
    }
    let broken = stats(api).await;
    let ledger = destination(&broken, "ledger");
    assert_eq!(ledger["breaker"], "open", "{ledger}");
    assert_eq!(ledger["requests_total"], 3);
    assert_eq!(ledger["success_rate"], 0.0);
    assert_eq!(ledger["endpoints"]["ejected"], 1, "{ledger}");
    assert_eq!(destination(&broken, "inventory")["breaker"], "closed");

    // Newest first: the refusal, then the two failed connects.
    let errors = broken["recent_errors"].as_array().unwrap();
    let codes: Vec<&str> = errors.iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        [
            "circuit_open",
            "upstream_unavailable",
            "upstream_unavailable"
        ]
    );
    assert_eq!(errors[0]["destination"], "ledger");
    assert_eq!(errors[0]["status"], 503);
    assert_eq!(errors[0]["request_id"].as_str().unwrap().len(), 32);
    assert!(errors[0]["time"].as_str().unwrap().ends_with('Z'));

    // The families the stats read are on /metrics too.
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_endpoint_states{destination="ledger",direction="outbound",state="ejected"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn the_window_figures_follow_the_sampler_while_someone_watches() {
    let up = Upstream::start("inventory").await;
    let s = sidecar(&yaml(&format!(
        "registry: {{static: {{inventory: [\"{}\"]}}}}\n",
        up.addr
    )))
    .await;
    let api = s.addresses.api;
    let _ = stats(api).await;
    for _ in 0..5 {
        let _ = get_via(s.addresses.outbound, "http://inventory/").await;
    }
    // The sampler's samples keep the window: asked again seconds later, the five are
    // still in it (the baseline is a sample from before them).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let inventory = loop {
        let now = stats(api).await;
        if now["uptime_seconds"].as_u64().unwrap() >= 2 {
            break destination(&now, "inventory").clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "uptime never reached 2 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(inventory["requests_total"], 5);
    assert!(inventory["rps"].as_f64().unwrap() > 0.0, "{inventory}");
    assert_eq!(inventory["success_rate"], 1.0);
}

#[tokio::test]
async fn the_admin_page_is_one_html_file_under_a_strict_policy() {
    let s = sidecar(&yaml("")).await;
    let page = get_host(s.addresses.api, "127.0.0.1:15000", "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    let policy = page.header("content-security-policy").to_owned();
    let body = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(body.starts_with("<!doctype html>"));
    assert!(
        body.contains("fetch(\"/v1/stats\""),
        "the page polls the stats"
    );

    // The inline script and style carry the policy's nonce; nothing else may run or load.
    let nonce = policy
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("a nonce in the policy");
    assert_eq!(nonce.len(), 32);
    assert!(body.contains(&format!("<script nonce=\"{nonce}\">")));
    assert!(body.contains(&format!("<style nonce=\"{nonce}\">")));
    assert!(!body.contains("{{NONCE}}"));
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} missing: {policy}");
    }
    assert!(
        !policy.contains("unsafe-inline") && !policy.contains("http"),
        "{policy}"
    );
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "no outside asset"
    );

    // A fresh nonce per answer.
    let again = get_host(s.addresses.api, "localhost", "/").await;
    assert_ne!(again.header("content-security-policy"), policy);

    // Like every local API path, not for a page on another origin.
    let foreign = get_host(s.addresses.api, "evil.example", "/").await;
    assert_eq!(foreign.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_event_subscriptions_and_the_hub_when_they_run() {
    let redis = RedisServer::start();
    let app = RecordingApp::answering(|_: &RecordedRequest| 422).await;
    let subs = events::subscription("payment.failed", "");
    let config = events::config("notifier", &redis, Some(app.addr), &subs);
    let s = sidecar(&format!(
        "{config}realtime: {{path: /ws, auth: {{secret: \"admin-test-secret-0123456789abcdef\"}}}}\n"
    ))
    .await;
    assert!(events::group_exists(&redis, "mesh:events:{payment.failed}", "notifier").await);
    let before = stats(s.addresses.api).await;
    assert_eq!(
        before["events"]["subscriptions"],
        serde_json::json!([{"type": "payment.failed", "pending": 0, "lag": 0, "dead_letters": 0}])
    );
    assert_eq!(
        before["hub"],
        serde_json::json!({"connections": 0, "rooms": 0})
    );
    // With service.app, this service's own inbound row: the app is its one endpoint.
    let inbound = before["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["direction"] == "inbound")
        .expect("an inbound row");
    assert_eq!(inbound["name"], "notifier");
    assert_eq!(inbound["breaker"], "closed");
    assert_eq!(inbound["endpoints"]["up"], 1, "{inbound}");

    // The app refuses it (422): dead-lettered at once, and the stats say so.
    let publish = http::Request::post("/v1/events/payment.failed")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(send(s.addresses.api, publish).await.unwrap().status, 202);
    let dead_lettered = eventually(Duration::from_secs(5), || async {
        stats(s.addresses.api).await["events"]["subscriptions"][0]["dead_letters"] == 1
    })
    .await;
    assert!(dead_lettered, "{}", stats(s.addresses.api).await);
}
