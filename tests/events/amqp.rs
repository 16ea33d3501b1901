//! `events.broker: amqp` (docs/events.md, "RabbitMQ") against the machine's RabbitMQ, a
//! fresh vhost per test: publish → deliver with the same headers and envelope, the
//! duplicate answer (dedupe through Redis), retries → dead letter → list → replay,
//! competing subscribers, a SIGKILLed subscriber's unacked messages taken by another, and
//! a broker restarted under a running meshlet.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshlet::sidecar::Sidecar;

use crate::support::events::{subscription, Deliveries, Delivery};
use crate::support::rabbitmq::{exclusive, shared, StoppedBroker, Vhost};
use crate::support::{
    eventually, metric, send, sidecar, MeshletSpec, RecordedRequest, RecordingApp, RedisServer,
    FREE_PORTS,
};
use crate::{api_get, api_post, batch, publish};

/// The config of a meshlet of `service` on the broker at `vhost` (and on `redis` when
/// given: dedupe), in front of `app` with the `subs` lines when there is one.
fn config(
    service: &str,
    vhost: &Vhost,
    redis: Option<&RedisServer>,
    app: Option<std::net::SocketAddr>,
    subs: &str,
) -> String {
    let mut spec = MeshletSpec::new(service);
    if let Some(redis) = redis {
        spec = spec.redis(redis);
    }
    if let Some(app) = app {
        spec = spec.app(app);
    }
    let mut events = format!(
        "events:\n  broker: amqp\n  amqp: {{url: \"{}\", prefetch: 8}}\n",
        vhost.url()
    );
    if !subs.is_empty() {
        events.push_str(&format!("  subscriptions:\n{subs}"));
    }
    spec.with(&events).yaml()
}

async fn subscriber(
    service: &str,
    vhost: &Vhost,
    redis: Option<&RedisServer>,
    app: &RecordingApp,
    event_type: &str,
    extra: &str,
) -> Sidecar {
    let subs = subscription(event_type, extra);
    sidecar(&config(service, vhost, redis, Some(app.addr), &subs)).await
}

async fn publisher(vhost: &Vhost, redis: Option<&RedisServer>) -> Sidecar {
    sidecar(&config("orders", vhost, redis, None, "")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_delivers_with_the_same_headers_and_envelope() {
    let _broker = shared().await;
    let Some(vhost) = Vhost::create() else { return };
    let app = RecordingApp::ok().await;
    let s = subscriber("risk", &vhost, None, &app, "trade.executed", "").await;
    // Declared before the meshlet is up: the queue is there, bound, before any publish.
    assert_eq!(vhost.messages("mesh.risk.trade.executed").await, Some(0));
    assert_eq!(
        vhost.messages("mesh.risk.trade.executed.dlq").await,
        Some(0)
    );
    let p = publisher(&vhost, None).await;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let answer = publish(
        p.addresses.api,
        "trade.executed",
        r#"{"symbol":"ABC","px":1.50}"#,
        &[
            ("x-event-id", "t-1"),
            ("x-event-version", "2"),
            ("traceparent", parent),
        ],
    )
    .await;
    assert_eq!(
        answer.status,
        202,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let body = answer.json();
    assert_eq!(body["event_id"], "t-1");
    assert_eq!(body["duplicate"], false);
    assert!(
        body.get("stream_id").is_none(),
        "no stream id on rabbitmq: {body}"
    );
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    let got = &app.recorded()[0];
    assert_eq!(got.path, "/events/trade.executed");
    assert_eq!(got.header("x-event-id"), "t-1");
    assert_eq!(got.header("x-event-type"), "trade.executed");
    assert_eq!(got.header("x-event-attempt"), "1");
    assert_eq!(got.header("content-type"), "application/json");
    assert!(got
        .header("traceparent")
        .starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    let envelope = got.json();
    assert_eq!(envelope["event_id"], "t-1");
    assert_eq!(envelope["event_type"], "trade.executed");
    assert_eq!(envelope["source"], "orders");
    assert_eq!(envelope["version"], 2);
    assert!(envelope["timestamp"].as_str().unwrap().ends_with('Z'));
    // The payload byte for byte (1.50 stays 1.50).
    assert!(
        String::from_utf8_lossy(&got.body).ends_with(r#""payload":{"symbol":"ABC","px":1.50}}"#)
    );
    // Without Redis there is no dedupe: the same id again is another event.
    let again = publish(
        p.addresses.api,
        "trade.executed",
        "{}",
        &[("x-event-id", "t-1")],
    )
    .await;
    assert_eq!(again.status, 202);
    // An ndjson batch: one line per event, confirmed, no stream ids.
    let req = batch("trade.executed", Some("b"), "{\"n\":1}\n{\"n\":2}\n");
    let answer = send(p.addresses.api, req).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-event-count"), "2");
    let lines = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(
        lines.starts_with(r#"{"event_id":"b:0","duplicate":false}"#),
        "{lines}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.of("b:0").len() == 1 && app.of("b:1").len() == 1
        })
        .await
    );
    let view = api_get(s.addresses.api, "/v1/events").await.json();
    assert_eq!(view["group"], "risk");
    p.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_answers_200_with_redis() {
    let _broker = shared().await;
    let Some(vhost) = Vhost::create() else { return };
    let redis = RedisServer::start();
    let app = RecordingApp::ok().await;
    let s = subscriber("risk", &vhost, Some(&redis), &app, "d", "").await;
    let p = publisher(&vhost, Some(&redis)).await;
    let first = publish(p.addresses.api, "d", "{}", &[("x-event-id", "d-1")]).await;
    assert_eq!(
        first.status,
        202,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let second = publish(p.addresses.api, "d", "{}", &[("x-event-id", "d-1")]).await;
    assert_eq!(
        second.status,
        200,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    assert_eq!(second.json()["duplicate"], true);
    // The dedupe key is the one of Redis Streams, written after the confirm.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("mesh:evid:*")
        .query(&mut redis.conn())
        .unwrap();
    assert!(
        keys.len() == 1 && keys[0].ends_with(":orders:d-1"),
        "{keys:?}"
    );
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.of("d-1").len(), 1, "stored once, delivered once");
    p.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_dead_letter_then_list_and_replay() {
    let _broker = shared().await;
    let Some(vhost) = Vhost::create() else { return };
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let app = RecordingApp::answering(move |r: &RecordedRequest| {
        match (flag.load(Ordering::SeqCst), r.header("x-event-id")) {
            (_, "bad-1") => 422,
            (true, _) => 200,
            (false, _) => 500,
        }
    })
    .await;
    let s = subscriber("ledger", &vhost, None, &app, "x", ", max_attempts: 3").await;
    let api = s.addresses.api;
    assert_eq!(
        publish(api, "x", r#"{"n":1}"#, &[("x-event-id", "x-1")])
            .await
            .status,
        202
    );
    let dead_letters = || async {
        api_get(api, "/v1/events/dlq/x").await.json()["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            dead_letters().await.len() == 1
        })
        .await
    );
    let attempts: Vec<u32> = app.of("x-1").iter().map(RecordedRequest::attempt).collect();
    assert_eq!(
        attempts,
        vec![1, 2, 3],
        "x-event-attempt from the delivery count"
    );
    let dead = &dead_letters().await[0];
    assert_eq!(dead["event_id"], "x-1");
    assert_eq!(dead["payload"], serde_json::json!({"n": 1}));
    assert_eq!(dead["source"], "ledger");
    assert_eq!(dead["group"], "ledger");
    assert_eq!(dead["reason"], "exhausted");
    assert_eq!(dead["attempts"], "3");
    assert_eq!(dead["last_status"], "500");
    assert!(dead["failed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        vhost.messages("mesh.ledger.x").await,
        Some(0),
        "nothing left in the queue"
    );
    // The metric families of Redis Streams, so dashboards work on either broker.
    let tel = s.addresses.telemetry;
    let exhausted = r#"meshlet_events_dead_letters_total{reason="exhausted",type="x"}"#;
    assert_eq!(metric(tel, exhausted).await, 1.0);
    let retried = r#"meshlet_events_delivered_total{outcome="retry",type="x"}"#;
    assert_eq!(metric(tel, retried).await, 2.0);

    // A 4xx is dead-lettered at once, as `rejected`.
    assert_eq!(
        publish(api, "x", "{}", &[("x-event-id", "bad-1")])
            .await
            .status,
        202
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            dead_letters().await.len() == 2
        })
        .await
    );
    assert_eq!(app.of("bad-1").len(), 1);
    let listed = dead_letters().await;
    assert_eq!(listed[1]["reason"], "rejected");
    // Paged: oldest first, `next` is the `after` of the next page.
    let page = api_get(api, "/v1/events/dlq/x?count=1").await.json();
    assert_eq!(page["entries"][0]["event_id"], "x-1");
    let next = page["next"].as_str().unwrap().to_owned();
    let page = api_get(api, &format!("/v1/events/dlq/x?count=1&after={next}"))
        .await
        .json();
    assert_eq!(page["entries"][0]["event_id"], "bad-1");
    assert!(page["next"].is_null());

    // Replay the exhausted one by id once the app is healthy: delivered, attempt 1 again.
    healthy.store(true, Ordering::SeqCst);
    let id = listed[0]["id"].as_str().unwrap();
    let replay = api_post(
        api,
        "/v1/events/dlq/x/replay",
        &format!(r#"{{"ids":["{id}","0190-0000-dead"]}}"#),
    )
    .await;
    assert_eq!(
        replay.status,
        200,
        "{}",
        String::from_utf8_lossy(&replay.body)
    );
    let report = replay.json();
    assert_eq!(report["replayed"], 1);
    assert_eq!(report["events"][0]["event_id"], "x-1");
    assert_eq!(report["missing"], serde_json::json!(["0190-0000-dead"]));
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.of("x-1").len() == 4
        })
        .await
    );
    assert_eq!(app.of("x-1")[3].attempt(), 1);
    let left = dead_letters().await;
    assert_eq!(left.len(), 1, "the rejected one stays: {left:?}");
    assert_eq!(left[0]["event_id"], "bad-1");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriber_meshlets_compete_each_event_delivered_once() {
    let _broker = shared().await;
    let Some(vhost) = Vhost::create() else { return };
    let (app_a, app_b) = (RecordingApp::ok().await, RecordingApp::ok().await);
    let a = subscriber("risk", &vhost, None, &app_a, "c", "").await;
    let b = subscriber("risk", &vhost, None, &app_b, "c", "").await;
    const N: usize = 40;
    for i in 0..N {
        let id = format!("c-{i}");
        assert_eq!(
            publish(a.addresses.api, "c", "{}", &[("x-event-id", &id)])
                .await
                .status,
            202
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            app_a.count() + app_b.count() >= N
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = app_a
        .recorded()
        .iter()
        .chain(app_b.recorded().iter())
        .map(RecordedRequest::event_id)
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), N, "each event delivered once");
    assert_eq!(distinct.len(), N);
    assert!(
        app_a.count() > 0 && app_b.count() > 0,
        "both compete: {} / {}",
        app_a.count(),
        app_b.count()
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A subscriber meshlet run as a child process, so it can be SIGKILLed.
fn child_meshlet(yaml: &str) -> (tempfile::TempDir, std::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshlet.yaml");
    std::fs::write(&path, format!("{yaml}{FREE_PORTS}")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_meshlet"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("meshlet starts");
    (dir, child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscribers_unacked_messages_go_to_another() {
    let _broker = shared().await;
    let Some(vhost) = Vhost::create() else { return };
    // The first meshlet's app never answers in time: it holds its messages unacked.
    let stuck = RecordingApp::ok().await;
    stuck.slow(60_000);
    let subs = subscription("k", ", timeout: 30s, concurrency: 4");
    let (_dir, mut first) = child_meshlet(&config("risk", &vhost, None, Some(stuck.addr), &subs));
    let p = publisher(&vhost, None).await;
    const N: usize = 4;
    // Until the first meshlet's queue exists, a publish reaches no queue: wait for it.
    assert!(
        eventually(Duration::from_secs(10), || async {
            vhost.messages("mesh.risk.k").await.is_some()
        })
        .await
    );
    for i in 0..N {
        let id = format!("k-{i}");
        assert_eq!(
            publish(p.addresses.api, "k", "{}", &[("x-event-id", &id)])
                .await
                .status,
            202
        );
    }
    assert!(eventually(Duration::from_secs(10), || async { stuck.count() == N }).await);
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let app = RecordingApp::ok().await;
    let second = subscriber("risk", &vhost, None, &app, "k", "").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.distinct_events() == N
        })
        .await,
        "every unacked event reached the other meshlet ({} of {N})",
        app.distinct_events()
    );
    // The broker counted the return: the attempt number goes on.
    assert!(
        app.recorded().iter().all(|r| r.attempt() == 2),
        "{:?}",
        app.recorded()
            .iter()
            .map(|r| r.attempt())
            .collect::<Vec<_>>()
    );
    second.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_answers_503_then_delivery_resumes_and_nothing_acknowledged_is_lost() {
    let _broker = exclusive().await;
    let Some(vhost) = Vhost::create() else { return };
    let app = RecordingApp::ok().await;
    let s = subscriber("risk", &vhost, None, &app, "r", "").await;
    let api = s.addresses.api;
    assert_eq!(
        publish(api, "r", "{}", &[("x-event-id", "before")])
            .await
            .status,
        202
    );
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    // Events acknowledged while the app is slow are still in the queue at the stop.
    app.slow(2_000);
    let mut acknowledged = vec!["before".to_owned()];
    for i in 0..5 {
        let id = format!("queued-{i}");
        assert_eq!(
            publish(api, "r", "{}", &[("x-event-id", &id)]).await.status,
            202
        );
        acknowledged.push(id);
    }
    let mut broker = StoppedBroker::stop();
    app.slow(0);
    let started = Instant::now();
    let down = publish(api, "r", "{}", &[("x-event-id", "during")]).await;
    assert_eq!(down.status, 503, "{}", String::from_utf8_lossy(&down.body));
    assert_eq!(
        down.headers.get("x-mesh-error").unwrap(),
        "events_unavailable"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        started.elapsed()
    );
    broker.start();
    // Publish resumes by itself (no meshlet restart).
    let mut stored = false;
    for i in 0..100 {
        let id = format!("after-{i}");
        if publish(api, "r", "{}", &[("x-event-id", &id)]).await.status == 202 {
            acknowledged.push(id);
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "publish resumes after the restart");
    let all = eventually(Duration::from_secs(30), || async {
        let got: HashSet<String> = app
            .recorded()
            .iter()
            .map(RecordedRequest::event_id)
            .collect();
        acknowledged.iter().all(|id| got.contains(id))
    })
    .await;
    let got: HashSet<String> = app
        .recorded()
        .iter()
        .map(RecordedRequest::event_id)
        .collect();
    assert!(
        all,
        "every acknowledged event delivered: {acknowledged:?} vs {got:?}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_does_not_block_readiness() {
    // Nothing listens on this port: the broker is down from the start.
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        crate::support::free_port()
    );
    let app = RecordingApp::ok().await;
    let yaml = MeshletSpec::new("risk")
        .app(app.addr)
        .with(&format!(
            "events:\n  broker: amqp\n  amqp: {{url: \"{url}\"}}\n  subscriptions:\n{}",
            subscription("z", "")
        ))
        .yaml();
    let started = Instant::now();
    let s = sidecar(&yaml).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    crate::support::until_ready(&s).await;
    let down = publish(s.addresses.api, "z", "{}", &[]).await;
    assert_eq!(down.status, 503, "{}", String::from_utf8_lossy(&down.body));
    assert_eq!(down.json()["error"], "events_unavailable");
    s.shutdown().await;
}

/// `meshlet events --config FILE ...` with `broker: amqp`: publish, dlq list and replay act
/// on the broker as the config's service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_lists_and_replays_on_rabbitmq() {
    let _broker = shared().await;
    let Some(vhost) = Vhost::create() else { return };
    let app = RecordingApp::answering(|_: &RecordedRequest| 422).await;
    let yaml = config(
        "ledger",
        &vhost,
        None,
        Some(app.addr),
        &subscription("v", ""),
    );
    let s = sidecar(&yaml).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.yaml");
    std::fs::write(&path, format!("{yaml}{FREE_PORTS}")).unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshlet"))
            .arg("events")
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .expect("meshlet runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = cli(&["publish", "v", r#"{"k":1}"#, "--id", "v-1"]);
    assert!(printed.contains(r#""event_id":"v-1""#), "{printed}");
    assert!(!printed.contains("stream_id"), "{printed}");
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    let mut listed = String::new();
    for _ in 0..50 {
        listed = cli(&["dlq", "list", "v"]);
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead: serde_json::Value = serde_json::from_str(listed.trim()).expect("one JSON line");
    assert_eq!(dead["event_id"], "v-1");
    assert_eq!(dead["reason"], "rejected");
    app.answer_with(|_| 200);
    let replayed = cli(&["dlq", "replay", "v"]);
    assert!(replayed.contains(r#""event_id":"v-1""#), "{replayed}");
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 2 }).await);
    assert_eq!(cli(&["dlq", "list", "v"]), "");
    s.shutdown().await;
}
