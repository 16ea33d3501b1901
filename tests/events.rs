//! Events over Redis Streams (docs/events.md) against a real redis-server and real app servers:
//! publish and dedupe, bad input, Redis down, delivery envelope and headers, order, retries,
//! dead letters and replay, Redis restarts, competing consumers, takeover from a dead
//! consumer, batch publish, the CLI, and a subscriber SIGKILLed mid-stream.

mod support;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{eventually, metric, send, sidecar, Answer, RedisServer};
use tokio::net::TcpListener;

/// One delivery the app received.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    raw: Bytes,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn event_id(&self) -> String {
        self.header("x-event-id").to_owned()
    }
    fn attempt(&self) -> u32 {
        self.header("x-event-attempt").parse().unwrap_or(0)
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.raw).expect("envelope is JSON")
    }
}

type Script = dyn Fn(&Received) -> u16 + Send + Sync;

/// A real app on 127.0.0.1 that records every delivery and answers per `script`.
struct App {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Arc<Script>>>,
    delay: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start(script: impl Fn(&Received) -> u16 + Send + Sync + 'static) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        App::serve(listener, Arc::new(script))
    }

    /// An app on a chosen port (one that was refusing connections until now).
    async fn start_on(addr: SocketAddr) -> App {
        let listener = TcpListener::bind(addr).await.expect("bind app");
        App::serve(listener, Arc::new(|_: &Received| 200))
    }

    fn serve(listener: TcpListener, script: Arc<Script>) -> App {
        let addr = listener.local_addr().expect("app address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Arc<Script>>> = Arc::new(Mutex::new(script));
        let delay = Arc::new(AtomicU64::new(0));
        let (rec, scr, del) = (received.clone(), script.clone(), delay.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (rec, scr, del) = (rec.clone(), scr.clone(), del.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (rec, scr, del) = (rec.clone(), scr.clone(), del.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let raw = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let r = Received {
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                raw,
                                at: Instant::now(),
                            };
                            let f = scr.lock().unwrap().clone();
                            let status = f(&r);
                            rec.lock().unwrap().push(r);
                            let pause = del.load(Ordering::SeqCst);
                            if pause > 0 {
                                tokio::time::sleep(Duration::from_millis(pause)).await;
                            }
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App {
            addr,
            received,
            script,
            delay,
            task,
        }
    }

    /// Every answer waits this long (the app is slow).
    fn slow(&self, ms: u64) {
        self.delay.store(ms, Ordering::SeqCst);
    }

    fn ok() -> impl Fn(&Received) -> u16 + Send + Sync + 'static {
        |_| 200
    }

    fn answer_with(&self, script: impl Fn(&Received) -> u16 + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// How many different event ids arrived (without copying what was received).
    fn distinct(&self) -> usize {
        distinct(&self.received)
    }

    fn of(&self, event_id: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.event_id() == event_id)
            .collect()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn distinct(received: &Mutex<Vec<Received>>) -> usize {
    let received = received.lock().unwrap();
    received
        .iter()
        .map(|r| r.header("x-event-id"))
        .collect::<HashSet<&str>>()
        .len()
}

/// A subscription line with the short durations every test uses; `extra` (`", k: v, ..."`)
/// overrides or adds keys.
fn subscription(event_type: &str, extra: &str) -> String {
    let mut keys: Vec<(String, String)> = [
        ("backoff", "20ms"),
        ("max_backoff", "100ms"),
        ("timeout", "500ms"),
        ("start", "earliest"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for pair in extra.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once(':').expect("key: value");
        let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
        match keys.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => keys.push((k, v)),
        }
    }
    let rest: String = keys.iter().map(|(k, v)| format!(", {k}: {v}")).collect();
    format!("    - {{type: {event_type}, path: /events/{event_type}{rest}}}\n")
}

fn config(service: &str, redis: &RedisServer, app: Option<SocketAddr>, subs: &str) -> String {
    let app = app.map_or(String::new(), |a| format!(", app: http://{a}"));
    let events = if subs.is_empty() {
        String::new()
    } else {
        format!("events:\n  subscriptions:\n{subs}")
    };
    format!(
        "service: {{name: {service}{app}}}\nregistry: {{redis: \"{}\"}}\n{events}",
        redis.url()
    )
}

async fn publish(
    api: SocketAddr,
    event_type: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::post(format!("/v1/events/{event_type}")).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    send(api, req).await.expect("publish answered")
}

async fn api_get(api: SocketAddr, path: &str) -> Answer {
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(api, req).await.expect("answered")
}

async fn api_post(api: SocketAddr, path: &str, body: &str) -> Answer {
    let req = Request::post(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    send(api, req).await.expect("answered")
}

fn xlen(redis: &RedisServer, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut redis.conn())
        .unwrap()
}

fn pending(redis: &RedisServer, key: &str, group: &str) -> usize {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .query(&mut redis.conn())
        .unwrap();
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as usize,
            _ => 0,
        },
        _ => 0,
    }
}

/// Waits until the group exists: only then is a subscriber sure to see what is published.
async fn group_exists(redis: &RedisServer, key: &str, group: &str) -> bool {
    eventually(Duration::from_secs(5), || async {
        let groups: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query(&mut redis.conn());
        format!("{groups:?}").contains(group)
    })
    .await
}

fn dlq_entries(redis: &RedisServer, event_type: &str) -> Vec<HashMap<String, String>> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("mesh:dlq:{event_type}"))
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .unwrap();
    entries.into_iter().map(|(_, f)| f).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stores_once_per_event_id() {
    let redis = RedisServer::start();
    let s = sidecar(&config("orders", &redis, None, "")).await;
    let api = s.addresses.api;

    let first = publish(
        api,
        "trade.executed",
        r#"{"px": 1.50}"#,
        &[("x-event-id", "t-1")],
    )
    .await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let first = first.json();
    assert_eq!(first["event_id"], "t-1");
    assert_eq!(first["duplicate"], false);
    let again = publish(
        api,
        "trade.executed",
        r#"{"px": 9}"#,
        &[("x-event-id", "t-1")],
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(again.json()["stream_id"], first["stream_id"]);
    assert_eq!(xlen(&redis, "mesh:events:trade.executed"), 1);

    // Idempotency-Key names the event too; without either, a UUIDv7.
    let keyed = publish(api, "trade.executed", "{}", &[("idempotency-key", "k-1")]).await;
    assert_eq!(keyed.json()["event_id"], "k-1");
    let anon = publish(api, "trade.executed", "[1,2]", &[("x-event-version", "3")]).await;
    assert_eq!(anon.status, 202);
    let id = anon.json()["event_id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&id).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 7);

    // The stored entry: every field of docs/events.md.
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("mesh:events:trade.executed")
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(entries.len(), 3);
    let stored = &entries[0].1;
    assert_eq!(stored["event_id"], "t-1");
    assert_eq!(stored["event_type"], "trade.executed");
    assert_eq!(stored["source"], "orders");
    assert_eq!(stored["version"], "1");
    assert_eq!(stored["payload"], r#"{"px": 1.50}"#);
    assert_eq!(stored["traceparent"], "");
    let ts = &stored["timestamp"];
    assert!(ts.ends_with('Z') && ts.len() == 24, "RFC 3339 ms UTC: {ts}");
    assert_eq!(entries[2].1["version"], "3");
    // The dedupe key holds the first stream id, expiring with the window.
    let ttl: i64 = redis::cmd("PTTL")
        .arg("mesh:evid:t-1")
        .query(&mut redis.conn())
        .unwrap();
    assert!(ttl > 23 * 3600 * 1000, "ttl {ttl}");

    let tel = s.addresses.telemetry;
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_published_total{duplicate="false",type="trade.executed"}"#
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_published_total{duplicate="true",type="trade.executed"}"#
        )
        .await,
        1.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_bad_input() {
    let redis = RedisServer::start();
    let s = sidecar(&config("orders", &redis, None, "")).await;
    let api = s.addresses.api;
    for bad_type in ["bad%20type", &"a".repeat(129), "a/b"] {
        let a = publish(api, bad_type, "{}", &[]).await;
        assert_eq!(a.status, 400, "type {bad_type}");
        assert_eq!(a.header("x-mesh-error"), "bad_request");
    }
    let a = publish(api, "t", "not json", &[]).await;
    assert_eq!(a.status, 400);
    let err = a.json();
    assert_eq!(err["error"], "bad_request");
    assert_eq!(err["service"], "orders");
    assert!(err["request_id"].is_string());
    assert_eq!(publish(api, "t", "", &[]).await.status, 400);
    assert_eq!(
        publish(api, "t", "{}", &[("x-event-version", "two")])
            .await
            .status,
        400
    );
    assert_eq!(
        publish(api, "t", "{}", &[("x-event-id", "has space")])
            .await
            .status,
        400
    );

    let big = format!("\"{}\"", "x".repeat(1024 * 1024));
    let a = publish(api, "t", &big, &[]).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.header("x-mesh-error"), "body_too_large");
    // Exactly at the limit is fine.
    let fits = format!("\"{}\"", "x".repeat(1024 * 1024 - 2));
    assert_eq!(publish(api, "t", &fits, &[]).await.status, 202);
    assert_eq!(xlen(&redis, "mesh:events:t"), 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_503_fast_when_redis_is_down_or_stuck() {
    let mut redis = RedisServer::start();
    let s = sidecar(&config("orders", &redis, None, "")).await;
    let api = s.addresses.api;
    assert_eq!(publish(api, "t", "{}", &[]).await.status, 202);

    // Stuck: Redis holds every command for 4 s.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4000)
        .arg("ALL")
        .query(&mut redis.conn())
        .unwrap();
    let started = Instant::now();
    let a = publish(api, "t", "{}", &[("x-event-id", "stuck-1")]).await;
    let took = started.elapsed();
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert_eq!(a.header("x-mesh-error"), "events_unavailable");
    assert!(
        took < Duration::from_millis(2600),
        "bounded wait, took {took:?}"
    );

    // Down: refused at once.
    redis.kill();
    let started = Instant::now();
    let a = publish(api, "t", "{}", &[("x-event-id", "down-1")]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"], "events_unavailable");
    assert!(started.elapsed() < Duration::from_millis(2600));

    // Back (empty): the same id publishes, nothing was silently kept.
    redis.restart();
    let a = publish(api, "t", "{}", &[("x-event-id", "down-1")]).await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_the_envelope_with_headers_and_acks() {
    let redis = RedisServer::start();
    let app = App::start(App::ok()).await;
    let subs = subscription("trade.executed", "");
    let s = sidecar(&config("risk", &redis, Some(app.addr), &subs)).await;
    assert!(group_exists(&redis, "mesh:events:trade.executed", "risk").await);
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
    let got = &app.received()[0];
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
    let raw = String::from_utf8(got.raw.to_vec()).unwrap();
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
            pending(&redis, "mesh:events:trade.executed", "risk") == 0
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
    let app = App::start(App::ok()).await;
    let s = sidecar(&config(
        "ledger",
        &redis,
        Some(app.addr),
        &subscription("o", ""),
    ))
    .await;
    assert!(group_exists(&redis, "mesh:events:o", "ledger").await);
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
    let order: Vec<String> = app.received().iter().map(Received::event_id).collect();
    let expected: Vec<String> = (0..60).map(|i| format!("o-{i}")).collect();
    assert_eq!(order, expected);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_408_429_with_the_attempt_counter_then_acks() {
    let redis = RedisServer::start();
    // 503, 429, 408, then 200.
    let app = App::start(|r: &Received| match r.attempt() {
        1 => 503,
        2 => 429,
        3 => 408,
        _ => 200,
    })
    .await;
    let s = sidecar(&config(
        "risk",
        &redis,
        Some(app.addr),
        &subscription("r", ", max_attempts: 5"),
    ))
    .await;
    assert!(group_exists(&redis, "mesh:events:r", "risk").await);
    publish(s.addresses.api, "r", "{}", &[("x-event-id", "r-1")]).await;
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 4 }).await);
    let got = app.of("r-1");
    let attempts: Vec<u32> = got.iter().map(Received::attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4]);
    // Backoff between tries (20 ms doubling, jittered into its upper half).
    for w in got.windows(2) {
        assert!(w[1].at - w[0].at >= Duration::from_millis(10), "backed off");
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            pending(&redis, "mesh:events:r", "risk") == 0
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
async fn a_4xx_dead_letters_at_once_as_rejected() {
    let redis = RedisServer::start();
    let app = App::start(|_: &Received| 422).await;
    let s = sidecar(&config(
        "notifier",
        &redis,
        Some(app.addr),
        &subscription("p", ""),
    ))
    .await;
    assert!(group_exists(&redis, "mesh:events:p", "notifier").await);
    publish(
        s.addresses.api,
        "p",
        r#"{"poison":true}"#,
        &[("x-event-id", "p-1")],
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            dlq_entries(&redis, "p").len() == 1
        })
        .await
    );
    let dead = &dlq_entries(&redis, "p")[0];
    assert_eq!(dead["event_id"], "p-1");
    assert_eq!(dead["payload"], r#"{"poison":true}"#);
    assert_eq!(dead["source"], "notifier");
    assert_eq!(dead["group"], "notifier");
    assert_eq!(dead["reason"], "rejected");
    assert_eq!(dead["attempts"], "1");
    assert_eq!(dead["last_status"], "422");
    assert!(dead["failed_at"].ends_with('Z'));
    assert_eq!(pending(&redis, "mesh:events:p", "notifier"), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count(), 1, "delivered once, not retried");
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_events_dead_letters_total{reason="rejected",type="p"}"#
        )
        .await,
        1.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausts_after_max_attempts_then_dead_letters() {
    let redis = RedisServer::start();
    let app = App::start(|_: &Received| 500).await;
    let s = sidecar(&config(
        "ledger",
        &redis,
        Some(app.addr),
        &subscription("x", ", max_attempts: 3"),
    ))
    .await;
    assert!(group_exists(&redis, "mesh:events:x", "ledger").await);
    publish(s.addresses.api, "x", "{}", &[("x-event-id", "x-1")]).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            dlq_entries(&redis, "x").len() == 1
        })
        .await
    );
    let dead = &dlq_entries(&redis, "x")[0];
    assert_eq!(dead["reason"], "exhausted");
    assert_eq!(dead["attempts"], "3");
    assert_eq!(dead["last_status"], "500");
    let attempts: Vec<u32> = app.of("x-1").iter().map(Received::attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert_eq!(pending(&redis, "mesh:events:x", "ledger"), 0);
    let tel = s.addresses.telemetry;
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_dead_letters_total{reason="exhausted",type="x"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_delivered_total{outcome="dead_letter",type="x"}"#
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
    let port = support::free_port();
    let app_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let subs = subscription("d", ", max_attempts: 20, backoff: 50ms, max_backoff: 200ms");
    let s = sidecar(&config("risk", &redis, Some(app_addr), &subs)).await;
    assert!(group_exists(&redis, "mesh:events:d", "risk").await);
    publish(s.addresses.api, "d", "{}", &[("x-event-id", "d-1")]).await;
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
    let app = App::start_on(app_addr).await;
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    assert!(app.received()[0].attempt() >= 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_page_and_replay() {
    let redis = RedisServer::start();
    let app = App::start(|_: &Received| 400).await;
    let s = sidecar(&config(
        "notifier",
        &redis,
        Some(app.addr),
        &subscription("q", ""),
    ))
    .await;
    let api = s.addresses.api;
    assert!(group_exists(&redis, "mesh:events:q", "notifier").await);
    for i in 0..3 {
        publish(
            api,
            "q",
            &format!("{{\"i\":{i}}}"),
            &[("x-event-id", &format!("q-{i}"))],
        )
        .await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            dlq_entries(&redis, "q").len() == 3
        })
        .await
    );

    let page = api_get(api, "/v1/events/dlq/q?count=2").await;
    assert_eq!(page.status, 200);
    let page = page.json();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["event_id"], "q-0");
    assert_eq!(entries[0]["reason"], "rejected");
    assert_eq!(entries[0]["payload"]["i"], 0);
    let next = page["next"].as_str().unwrap().to_owned();
    let rest = api_get(api, &format!("/v1/events/dlq/q?after={next}&count=2"))
        .await
        .json();
    assert_eq!(rest["entries"].as_array().unwrap().len(), 1);
    assert_eq!(rest["entries"][0]["event_id"], "q-2");
    assert!(rest["next"].is_null());
    assert_eq!(
        api_get(api, "/v1/events/dlq/q?count=zero").await.status,
        400
    );

    // The app is fixed: replay one by id, then the rest.
    app.answer_with(|_| 200);
    let first_id = entries[0]["id"].as_str().unwrap().to_owned();
    let one = api_post(
        api,
        "/v1/events/dlq/q/replay",
        &format!("{{\"ids\":[\"{first_id}\",\"1-1\"]}}"),
    )
    .await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    let one = one.json();
    assert_eq!(one["replayed"], 1);
    assert_eq!(one["events"][0]["event_id"], "q-0");
    assert_eq!(one["missing"][0], "1-1");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.of("q-0").len() == 2
        })
        .await
    );
    assert_eq!(dlq_entries(&redis, "q").len(), 2);
    let all = api_post(api, "/v1/events/dlq/q/replay", "").await.json();
    assert_eq!(all["replayed"], 2);
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 6 }).await);
    // Replayed with the same event id and payload; the DLQ is empty; nothing pending.
    let replayed = app.of("q-2");
    assert_eq!(replayed[1].json()["payload"]["i"], 2);
    assert!(dlq_entries(&redis, "q").is_empty());
    assert!(
        eventually(Duration::from_secs(3), || async {
            pending(&redis, "mesh:events:q", "notifier") == 0
        })
        .await
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream_recreates_the_group_and_delivery_resumes() {
    let mut redis = RedisServer::start();
    let app = App::start(App::ok()).await;
    let subs = subscription("m", ", start: latest");
    let s = sidecar(&config("risk", &redis, Some(app.addr), &subs)).await;
    let api = s.addresses.api;
    assert!(group_exists(&redis, "mesh:events:m", "risk").await);
    publish(api, "m", "{}", &[("x-event-id", "before")]).await;
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);

    redis.restart(); // empty: stream and group gone
                     // Publish until Redis takes it (the first tries may meet the dead connection).
    let mut stored = false;
    for _ in 0..50 {
        if publish(api, "m", "{}", &[("x-event-id", "after-1")])
            .await
            .status
            == 202
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored, "publish resumes by itself");
    publish(api, "m", "{}", &[("x-event-id", "after-2")]).await;
    // The group is recreated at 0: events published since the restart are not skipped.
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.of("after-1").len() == 1 && app.of("after-2").len() == 1
        })
        .await,
        "delivered after the restart: {:?}",
        app.received()
            .iter()
            .map(Received::event_id)
            .collect::<Vec<_>>()
    );
    assert!(group_exists(&redis, "mesh:events:m", "risk").await);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meshlets_of_one_service_share_the_stream() {
    let redis = RedisServer::start();
    let app = App::start(App::ok()).await;
    let subs = subscription("s", ", concurrency: 4");
    let a = sidecar(&config("ledger", &redis, Some(app.addr), &subs)).await;
    let b = sidecar(&config("ledger", &redis, Some(app.addr), &subs)).await;
    // A second service subscribing gets its own copy.
    let other = App::start(App::ok()).await;
    let c = sidecar(&config(
        "audit",
        &redis,
        Some(other.addr),
        &subscription("s", ""),
    ))
    .await;
    assert!(group_exists(&redis, "mesh:events:s", "ledger").await);
    assert!(group_exists(&redis, "mesh:events:s", "audit").await);
    let lines: String = (0..200).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let req = Request::post("/v1/events/s")
        .header("host", "localhost")
        .header("content-type", "application/x-ndjson")
        .body(Full::new(Bytes::from(lines)))
        .unwrap();
    assert_eq!(send(a.addresses.api, req).await.unwrap().status, 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.count() >= 200 && other.count() >= 200
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in app.received() {
        *seen.entry(r.event_id()).or_default() += 1;
    }
    assert_eq!(seen.len(), 200);
    assert!(
        seen.values().all(|n| *n == 1),
        "each event once across the two meshlets"
    );
    assert_eq!(other.count(), 200);
    let ta = metric(
        a.addresses.telemetry,
        r#"meshlet_events_delivered_total{outcome="ok",type="s"}"#,
    )
    .await;
    let tb = metric(
        b.addresses.telemetry,
        r#"meshlet_events_delivered_total{outcome="ok",type="s"}"#,
    )
    .await;
    assert_eq!(ta + tb, 200.0);
    assert!(
        ta > 0.0 && tb > 0.0,
        "both consumers took a share: {ta} + {tb}"
    );
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_over_entries_left_pending_by_a_dead_consumer() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("mesh:events:z")
        .arg("risk")
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut conn)
        .unwrap();
    // Published by a meshlet without subscriptions.
    let publisher = sidecar(&config("orders", &redis, None, "")).await;
    publish(
        publisher.addresses.api,
        "z",
        r#"{"z":1}"#,
        &[("x-event-id", "z-1")],
    )
    .await;
    // A consumer reads it and dies without acking.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("risk")
        .arg("ghost")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg("mesh:events:z")
        .arg(">")
        .query(&mut conn)
        .unwrap();
    assert_eq!(pending(&redis, "mesh:events:z", "risk"), 1);

    let app = App::start(App::ok()).await;
    let started = Instant::now();
    let s = sidecar(&config(
        "risk",
        &redis,
        Some(app.addr),
        &subscription("z", ""),
    ))
    .await;
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    let took = started.elapsed();
    let got = &app.received()[0];
    assert_eq!(got.event_id(), "z-1");
    assert_eq!(got.attempt(), 2, "the ghost's delivery counts");
    assert!(
        took >= Duration::from_millis(900),
        "only after 2 x timeout idle: {took:?}"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            pending(&redis, "mesh:events:z", "risk") == 0
        })
        .await
    );
    s.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publish_answers_a_line_per_event() {
    let redis = RedisServer::start();
    let s = sidecar(&config("orders", &redis, None, "")).await;
    let api = s.addresses.api;
    let batch = |body: &str, id: Option<&str>| {
        let mut req = Request::post("/v1/events/b")
            .header("host", "localhost")
            .header("content-type", "application/x-ndjson");
        if let Some(id) = id {
            req = req.header("x-event-id", id);
        }
        req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
    };
    let a = send(
        api,
        batch("{\"n\":1}\n\n[2]\r\n\"three\"\n", Some("batch-7")),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), "application/x-ndjson");
    let lines: Vec<serde_json::Value> = String::from_utf8(a.body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["event_id"], "batch-7:0");
    assert_eq!(lines[2]["event_id"], "batch-7:2");
    assert!(lines.iter().all(|l| l["duplicate"] == false));
    assert_eq!(xlen(&redis, "mesh:events:b"), 3);
    // Sent again (the producer did not see the answer): nothing doubles.
    let again = send(api, batch("{\"n\":1}\n[2]\n\"three\"\n", Some("batch-7")))
        .await
        .unwrap();
    assert!(String::from_utf8(again.body.to_vec())
        .unwrap()
        .lines()
        .all(|l| l.contains("\"duplicate\":true")));
    assert_eq!(xlen(&redis, "mesh:events:b"), 3);
    // A bad line refuses the batch whole.
    let bad = send(api, batch("{}\nnope\n", None)).await.unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.json()["message"].as_str().unwrap().contains("line 2"));
    assert_eq!(xlen(&redis, "mesh:events:b"), 3);
    // Thousands in one request.
    let many: String = (0..5000).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let started = Instant::now();
    let a = send(api, batch(&many, None)).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-event-count"), "5000");
    eprintln!("batch of 5000 published in {:?}", started.elapsed());
    assert_eq!(xlen(&redis, "mesh:events:b"), 5003);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_publishes_lists_and_replays() {
    let redis = RedisServer::start();
    let bin = env!("CARGO_BIN_EXE_meshlet");
    let url = redis.url();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["events", "--redis", &url])
            .args(args)
            .output()
            .expect("meshlet runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run(&["publish", "c", r#"{"a":1}"#, "--id", "c-1"]);
    let published: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(published["event_id"], "c-1");
    assert_eq!(published["duplicate"], false);
    let out = run(&["publish", "c", r#"{"a":1}"#, "--id", "c-1"]);
    assert!(out.contains("\"duplicate\":true"));
    let tail = run(&["tail", "c", "--from", "0", "--count", "1"]);
    assert!(tail.contains("\"event_id\":\"c-1\""), "{tail}");

    // A dead letter, written the way a meshlet writes one.
    let app = App::start(|_: &Received| 404).await;
    let s = sidecar(&config(
        "svc",
        &redis,
        Some(app.addr),
        &subscription("c", ""),
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            dlq_entries(&redis, "c").len() == 1
        })
        .await
    );
    let listed = run(&["dlq", "list", "c"]);
    let dead: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(dead["event_id"], "c-1");
    assert_eq!(dead["reason"], "rejected");
    app.answer_with(|_| 200);
    let id = dead["id"].as_str().unwrap();
    let replayed = run(&["dlq", "replay", "c", "--id", id]);
    assert!(replayed.contains("\"event_id\":\"c-1\""), "{replayed}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.of("c-1").len() == 2
        })
        .await
    );
    assert!(dlq_entries(&redis, "c").is_empty());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_report_lag_and_pending() {
    let redis = RedisServer::start();
    // The app holds each delivery a while: pending stays up, the rest waits (lag).
    let app = App::start(App::ok()).await;
    app.slow(300);
    let s = sidecar(&config(
        "risk",
        &redis,
        Some(app.addr),
        &subscription("g", ", timeout: 2s"),
    ))
    .await;
    assert!(group_exists(&redis, "mesh:events:g", "risk").await);
    for i in 0..5 {
        publish(
            s.addresses.api,
            "g",
            "{}",
            &[("x-event-id", &format!("g-{i}"))],
        )
        .await;
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
    let app = App::start(App::ok()).await;
    app.slow(300);
    let s = sidecar(&config(
        "risk",
        &redis,
        Some(app.addr),
        &subscription("h", ", timeout: 2s"),
    ))
    .await;
    assert!(group_exists(&redis, "mesh:events:h", "risk").await);
    let publisher = sidecar(&config("orders", &redis, None, "")).await;
    publish(publisher.addresses.api, "h", "{}", &[("x-event-id", "h-1")]).await;
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    s.shutdown().await;
    // The delivery in flight is answered and acked; nothing new is read.
    assert!(
        eventually(Duration::from_secs(3), || async {
            pending(&redis, "mesh:events:h", "risk") == 0
        })
        .await,
        "in-flight delivery finished and acked"
    );
    publish(publisher.addresses.api, "h", "{}", &[("x-event-id", "h-2")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count(), 1);
    publisher.shutdown().await;
}

/// A batch in which one event fails answers 503 with what was confirmed, and the published
/// counter counts the events that were stored (it used to count none of the batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_short_counts_what_it_stored() {
    let redis = RedisServer::start();
    // The dedupe key of line 1000 (the first of the second chunk of 1000) is not a string:
    // the publish script fails there (WRONGTYPE), after the first chunk was stored.
    let _: i64 = redis::cmd("HSET")
        .arg("mesh:evid:cut:1000")
        .arg("x")
        .arg("y")
        .query(&mut redis.conn())
        .unwrap();
    let s = sidecar(&config("orders", &redis, None, "")).await;
    let lines: String = (0..1500).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let req = Request::post("/v1/events/cut")
        .header("host", "localhost")
        .header("content-type", "application/x-ndjson")
        .header("x-event-id", "cut")
        .body(Full::new(Bytes::from(lines)))
        .unwrap();
    let a = send(s.addresses.api, req).await.unwrap();
    assert_eq!(a.status, 503, "{}", String::from_utf8_lossy(&a.body));
    // Redis runs the rest of the pipeline: every event but the poisoned one is stored,
    // and the answer and the counter say so.
    let text = String::from_utf8_lossy(&a.body).into_owned();
    assert!(text.contains("event 1000 (0-based)"), "{text}");
    assert!(
        text.contains("1499 of 1500 events confirmed stored"),
        "{text}"
    );
    assert_eq!(xlen(&redis, "mesh:events:cut"), 1499);
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_events_published_total{duplicate="false",type="cut"}"#
        )
        .await,
        1499.0
    );
    s.shutdown().await;
}

/// A subscriber meshlet run as a child process from a config file, so that a test can
/// SIGKILL it and start it again on the same config.
struct ChildMeshlet {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl ChildMeshlet {
    /// Writes `yaml` (plus free ports for every listener) to a config file of its own.
    fn write(yaml: &str) -> ChildMeshlet {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshlet.yaml");
        std::fs::write(&path, format!("{yaml}{}", support::FREE_PORTS)).unwrap();
        ChildMeshlet { _dir: dir, path }
    }

    fn start(&self) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshlet"))
            .args(["run", "--config"])
            .arg(&self.path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("meshlet starts")
    }
}

/// A subscriber meshlet process killed with SIGKILL mid-stream and started again: every
/// event reaches the app at least once (the dead consumer's pending entries are taken over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_killed_mid_stream_loses_nothing() {
    let redis = RedisServer::start();
    let app = App::start(App::ok()).await;
    app.slow(1);
    let risk = ChildMeshlet::write(&config(
        "risk",
        &redis,
        Some(app.addr),
        &subscription("k", ", concurrency: 4"),
    ));
    let mut first = risk.start();
    assert!(group_exists(&redis, "mesh:events:k", "risk").await);
    let publisher = sidecar(&config("orders", &redis, None, "")).await;
    const N: usize = 1500;
    let lines: String = (0..N).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let req = Request::post("/v1/events/k")
        .header("host", "localhost")
        .header("content-type", "application/x-ndjson")
        .header("x-event-id", "k")
        .body(Full::new(Bytes::from(lines)))
        .unwrap();
    assert_eq!(
        send(publisher.addresses.api, req).await.unwrap().status,
        200
    );
    assert!(eventually(Duration::from_secs(10), || async { app.count() >= 200 }).await);
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let at_kill = app.count();
    assert!(at_kill < N, "killed mid-stream ({at_kill} of {N})");
    let mut second = risk.start();
    let all = eventually(Duration::from_secs(20), || async {
        let ids: std::collections::HashSet<String> =
            app.received().iter().map(Received::event_id).collect();
        ids.len() == N
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();
    let total = app.count();
    assert!(
        all,
        "every event delivered at least once ({total} deliveries)"
    );
    eprintln!("killed after {at_kill} deliveries; {total} deliveries for {N} events");
    publisher.shutdown().await;
}

/// The "done when" of issue 7: 10,000 events published while the subscriber's meshlet is
/// SIGKILLed and started again, and while Redis (`appendonly yes`) is restarted once; every
/// event id reaches the app at least once. The restart is a graceful SHUTDOWN on the same
/// dir and port, so Redis keeps everything (`appendfsync everysec` would lose up to a
/// second of writes only if the host itself went down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_survive_a_killed_subscriber_and_a_redis_restart() {
    const N: usize = 10_000;
    const BATCH: usize = 100;
    /// Publishing runs at most this far ahead of the app, so it goes on through the kill
    /// and the Redis restart instead of finishing before them.
    const AHEAD: usize = 2_000;
    let mut redis = RedisServer::start_appendonly();
    let app = App::start(App::ok()).await;
    let risk = ChildMeshlet::write(&config(
        "risk",
        &redis,
        Some(app.addr),
        &subscription("r", ", concurrency: 8"),
    ));
    let mut subscriber = risk.start();
    assert!(group_exists(&redis, "mesh:events:r", "risk").await);
    let publisher = sidecar(&config("orders", &redis, None, "")).await;

    // Batches of 100 with ids `r{batch}:{line}`; a batch that meets Redis down (503) or a
    // dead connection is sent again with the same id: the dedupe stores only what is missing.
    let published = Arc::new(AtomicUsize::new(0));
    let resent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (api, received) = (publisher.addresses.api, app.received.clone());
        let (published, resent) = (published.clone(), resent.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            for b in 0..N / BATCH {
                let ahead = eventually(Duration::from_secs(60), || async {
                    published.load(Ordering::SeqCst) < distinct(&received) + AHEAD
                })
                .await;
                assert!(ahead, "the app stopped receiving");
                let lines: String = (0..BATCH)
                    .map(|i| format!("{{\"b\":{b},\"i\":{i}}}\n"))
                    .collect();
                loop {
                    assert!(Instant::now() < deadline, "batch {b} never stored");
                    let req = Request::post("/v1/events/r")
                        .header("host", "localhost")
                        .header("content-type", "application/x-ndjson")
                        .header("x-event-id", format!("r{b}"))
                        .body(Full::new(Bytes::from(lines.clone())))
                        .unwrap();
                    match send(api, req).await {
                        Ok(a) if a.status == 200 => break,
                        _ => {
                            resent.fetch_add(1, Ordering::SeqCst);
                            // Redis is restarting: try again shortly.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                published.store((b + 1) * BATCH, Ordering::SeqCst);
            }
        })
    };

    assert!(
        eventually(Duration::from_secs(60), || async {
            app.distinct() >= 1_500
        })
        .await,
        "delivery started"
    );
    subscriber.kill().expect("SIGKILL");
    let _ = subscriber.wait();
    let at_kill = app.distinct();
    let mut subscriber = risk.start();
    assert!(
        eventually(Duration::from_secs(60), || async {
            app.distinct() >= 5_000
        })
        .await,
        "delivery resumed after the kill ({} of {N})",
        app.distinct()
    );
    let before_restart = published.load(Ordering::SeqCst);
    tokio::task::block_in_place(|| redis.shutdown());
    // While Redis is down a publish is refused (not stored), never dropped silently ...
    let outage: String = (0..BATCH).map(|i| format!("{{\"down\":{i}}}\n")).collect();
    let outage_batch = || {
        Request::post("/v1/events/r")
            .header("host", "localhost")
            .header("content-type", "application/x-ndjson")
            .header("x-event-id", "down")
            .body(Full::new(Bytes::from(outage.clone())))
            .unwrap()
    };
    let refused = send(publisher.addresses.api, outage_batch()).await.unwrap();
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    tokio::task::block_in_place(|| redis.start_again());
    // ... and stored once Redis is back (the first try may meet the dead connection).
    let mut stored = false;
    for _ in 0..100 {
        if send(publisher.addresses.api, outage_batch())
            .await
            .unwrap()
            .status
            == 200
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored, "publishing resumes after the restart");
    let total = N + BATCH;
    let all = eventually(Duration::from_secs(120), || async {
        app.distinct() == total
    })
    .await;
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    producer.await.expect("every batch published");
    let seen: HashSet<String> = app.received().iter().map(Received::event_id).collect();
    let missing: Vec<String> = (0..N / BATCH)
        .flat_map(|b| (0..BATCH).map(move |i| format!("r{b}:{i}")))
        .chain((0..BATCH).map(|i| format!("down:{i}")))
        .filter(|id| !seen.contains(id))
        .collect();
    assert!(
        all && missing.is_empty(),
        "{} of {total} event ids never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(seen.len(), total, "nothing but the published ids arrived");
    assert!(
        at_kill < N && before_restart < N,
        "both faults hit mid-stream"
    );
    eprintln!(
        "killed at {at_kill} delivered, Redis restarted at {before_restart} published, {} batch sends repeated; {} deliveries for {total} events",
        resent.load(Ordering::SeqCst),
        app.count()
    );
    publisher.shutdown().await;
}

/// Names of the consumers of `group` on `key`.
fn consumers(redis: &RedisServer, key: &str, group: &str) -> Vec<String> {
    let info: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(key)
        .arg(group)
        .query(&mut redis.conn())
        .unwrap();
    let mut names: Vec<String> = info
        .iter()
        .filter_map(|c| match c.get("name") {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// A dead meshlet's consumer stays in the group after its entries were taken over, until it
/// has been idle 10 × the takeover idle time; then it is removed, and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_dead_meshlets_are_removed_once_nothing_is_pending() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let key = "mesh:events:f";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("risk")
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut conn)
        .unwrap();
    // Two dead meshlets: one never got anything, one died holding an entry.
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(key)
        .arg("risk")
        .arg("ghost-idle")
        .query(&mut conn)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("event_id")
        .arg("f-1")
        .arg("payload")
        .arg("{}")
        .query(&mut conn)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("risk")
        .arg("ghost-holding")
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    assert_eq!(pending(&redis, key, "risk"), 1);

    let app = App::start(App::ok()).await;
    // timeout 100ms: takeover after 200 ms idle, forgetting after 2 s. Two live meshlets
    // of the service.
    let subs = subscription("f", ", timeout: 100ms");
    let s = sidecar(&config("risk", &redis, Some(app.addr), &subs)).await;
    let peer = sidecar(&config("risk", &redis, Some(app.addr), &subs)).await;
    let consumer_of = |api| async move {
        // The route answers a JSON object with a string `consumer` (asserted by its test).
        api_get(api, "/v1/events").await.json()["consumer"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let live = [
        consumer_of(s.addresses.api).await,
        consumer_of(peer.addresses.api).await,
    ];
    let only_live = |names: Vec<String>| names.iter().all(|n| live.contains(n));
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.of("f-1").len() == 1
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            only_live(consumers(&redis, key, "risk"))
        })
        .await,
        "dead consumers removed: {:?}",
        consumers(&redis, key, "risk")
    );
    assert_eq!(pending(&redis, key, "risk"), 0);
    // Up to Redis 7.0 a live meshlet on a quiet stream may be removed too (its idle time
    // counts from its last read that returned entries): delivery goes on all the same, and
    // the consumer that gets an entry is back in the group.
    let publisher = sidecar(&config("orders", &redis, None, "")).await;
    for i in 2..12 {
        let id = format!("f-{i}");
        publish(publisher.addresses.api, "f", "{}", &[("x-event-id", &id)]).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            (2..12).all(|i| app.of(&format!("f-{i}")).len() == 1)
        })
        .await,
        "delivery goes on"
    );
    let now = consumers(&redis, key, "risk");
    assert!(
        !now.is_empty() && only_live(now.clone()),
        "the consumers that got entries are back: {now:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            pending(&redis, key, "risk") == 0
        })
        .await
    );
    for m in [s, peer, publisher] {
        m.shutdown().await;
    }
}

/// The removal script itself: a consumer with pending entries is never removed, however
/// idle, nor the caller's own consumer.
#[test]
fn forgetting_consumers_spares_pending_entries_and_the_caller() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let key = "mesh:events:g";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("risk")
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut conn)
        .unwrap();
    for name in ["me", "idle"] {
        let _: i64 = redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(key)
            .arg("risk")
            .arg(name)
            .query(&mut conn)
            .unwrap();
    }
    let _: String = redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("event_id")
        .arg("g-1")
        .query(&mut conn)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("risk")
        .arg("busy")
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    // Min idle -1: every consumer counts as idle long enough.
    let removed: Vec<String> = meshlet::events::scripts::FORGET_CONSUMERS
        .key(key)
        .arg("risk")
        .arg("me")
        .arg(-1)
        .invoke(&mut conn)
        .unwrap();
    assert_eq!(removed, vec!["idle".to_owned()]);
    assert_eq!(consumers(&redis, key, "risk"), vec!["busy", "me"]);
    assert_eq!(pending(&redis, key, "risk"), 1);
}

/// Publish → delivery latency at ~1k events/s (prints p50/p99). Run with
/// `cargo test --release --test events -- --ignored latency --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn latency_publish_to_deliver() {
    let redis = RedisServer::start();
    let app = App::start(App::ok()).await;
    let subs = subscription("lat", ", concurrency: 1");
    let s = sidecar(&config("risk", &redis, Some(app.addr), &subs)).await;
    assert!(group_exists(&redis, "mesh:events:lat", "risk").await);
    let mut client = support::Client::connect(s.addresses.api).await;
    const N: usize = 3000;
    let mut sent_at = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    for i in 0..N {
        tick.tick().await;
        let id = format!("lat-{i}");
        let req = Request::post("/v1/events/lat")
            .header("host", "localhost")
            .header("x-event-id", &id)
            .body(Full::new(Bytes::from_static(
                b"{\"px\":1.5,\"qty\":10,\"sym\":\"ABC\"}",
            )))
            .unwrap();
        let t = Instant::now();
        let a = client.send(req).await;
        assert_eq!(a.status, 202);
        sent_at.insert(id, t);
    }
    let rate = N as f64 / started.elapsed().as_secs_f64();
    assert!(eventually(Duration::from_secs(10), || async { app.count() == N }).await);
    let mut lat: Vec<Duration> = app
        .received()
        .iter()
        .map(|r| r.at - sent_at[&r.event_id()])
        .collect();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    eprintln!(
        "publish→deliver at {rate:.0}/s over {N}: p50 {:?} p99 {:?} max {:?}",
        p(0.5),
        p(0.99),
        lat[lat.len() - 1]
    );
    s.shutdown().await;
}
