//! What every backend must do, written once over any [`RedisSet`]: meshlets register, route
//! to each other and deregister; an event is published, delivered, dead-lettered and
//! replayed; the hub broadcasts across two meshlets. Plus the pieces the failure tests share:
//! the meshlets' configs, a bounded publish load and what it saw, and a hub check that
//! retries until a broadcast reaches every client.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use meshlet::sidecar::Sidecar;
use serde_json::json;

use crate::support::events::{subscription, Deliveries};
use crate::support::realtime::{join, join_as, next, post, try_next, Ws, SECRET};
use crate::support::redis_sets::RedisSet;
use crate::support::{
    callee_and_caller, eventually, get_host, get_via, send, until_status, Answer, MeshletSpec,
    Pair, RecordedRequest, RecordingApp, Upstream,
};

/// The stream of `event_type`: its type is a hash tag, on every backend (docs/events.md).
pub fn stream_key(event_type: &str) -> String {
    format!("mesh:events:{{{event_type}}}")
}

/// The dead letters of `event_type`.
pub fn dlq_key(event_type: &str) -> String {
    format!("mesh:dlq:{{{event_type}}}")
}

/// `name`'s meshlet on `set`: one worker, a 3 s ttl and 1 s heartbeats.
pub fn meshlet(name: &str, set: &dyn RedisSet) -> MeshletSpec {
    MeshletSpec::new(name)
        .workers(1)
        .on(&set.registry_entry())
        .registry("ttl: 3s, heartbeat: 1s, resync: 2s")
}

/// `name`'s meshlet in front of `app`, delivering `event_type` to it (`extra` as in
/// [`subscription`]); publishes wait for one replica.
pub fn subscriber(
    name: &str,
    set: &dyn RedisSet,
    app: SocketAddr,
    event_type: &str,
    extra: &str,
) -> MeshletSpec {
    meshlet(name, set).app(app).with(&format!(
        "events:\n  replicas: 1\n  subscriptions:\n{}",
        subscription(event_type, extra)
    ))
}

/// A meshlet of service `chat` with the hub on `/ws` (the tests' secret), on `set`. Its
/// clients may go unread for up to 10 s (`slow_after`): a test's clients are not read while
/// it waits for a failover.
pub fn chat(set: &dyn RedisSet) -> MeshletSpec {
    MeshletSpec::new("chat")
        .on(&set.registry_entry())
        .registry("heartbeat: 200ms, ttl: 2s, resync: 1s")
        .with(&format!(
            "realtime:\n  path: /ws\n  auth: {{secret: \"{SECRET}\", require: true}}\n  slow_after: 10s\n"
        ))
}

/// The hub's listener (the inbound one).
pub fn hub_addr(s: &Sidecar) -> SocketAddr {
    s.addresses.inbound.expect("inbound listener for the hub")
}

/// `POST /v1/events/{event_type}` with `body` as event `id`.
pub async fn publish(api: SocketAddr, event_type: &str, id: &str, body: &str) -> Answer {
    let req = Request::post(format!("/v1/events/{event_type}"))
        .header("host", "localhost")
        .header("x-event-id", id)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    match send(api, req).await {
        Ok(answer) => answer,
        Err(e) => panic!("publish of {id} not answered: {e}"),
    }
}

async fn api(api: SocketAddr, method: &str, path: &str, body: &str) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    send(api, req).await.expect("answered")
}

/// The `event_id`s of a stream's entries, in stream order, read from the master holding it.
pub fn stream_event_ids(set: &dyn RedisSet, key: &str) -> Vec<String> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut set.conn_for(key))
        .expect("XRANGE");
    entries
        .into_iter()
        .filter_map(|(_, mut f)| f.remove("event_id"))
        .collect()
}

/// A callee (`inventory`, in front of an upstream) and a caller (`orders`) find each other
/// in the registry on `set`; the callee's entry is where docs/registry.md puts it; on
/// shutdown it leaves the registry and the caller stops routing to it.
pub async fn register_route_deregister(set: &dyn RedisSet) {
    let app = Upstream::start("inventory-app").await;
    let inventory = meshlet("inventory", set).app(app.addr);
    let Pair { callee, caller } = callee_and_caller(&inventory, &meshlet("orders", set)).await;
    let out = caller.addresses.outbound;
    assert!(
        until_status(out, "http://inventory/", 200, Duration::from_secs(5)).await,
        "the caller routes to the callee it found in the registry"
    );
    let a = get_via(out, "http://inventory/items").await;
    assert_eq!(a.json()["upstream"], "inventory-app");
    assert_eq!(a.json()["uri"], "/items");

    let key = format!("mesh:inst:inventory:{}", callee.shared.instance_id);
    let hash: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&key)
        .query(&mut set.conn_for(&key))
        .expect("HGETALL");
    let inbound = callee.addresses.inbound.expect("inbound listener");
    assert_eq!(
        hash.get("port"),
        Some(&inbound.port().to_string()),
        "{hash:?}"
    );
    assert_eq!(hash.get("status").map(String::as_str), Some("up"));
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("mesh:svc:inventory")
        .arg(0)
        .arg(-1)
        .query(&mut set.conn_for("mesh:svc:inventory"))
        .expect("ZRANGE");
    assert_eq!(members, vec![callee.shared.instance_id.to_string()]);

    callee.shutdown().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query(&mut set.conn_for(&key))
        .expect("EXISTS");
    assert!(!exists, "deregistered on shutdown");
    assert!(
        until_status(out, "http://inventory/", 503, Duration::from_secs(3)).await,
        "the caller stops routing to the callee that left"
    );
    caller.shutdown().await;
}

/// Events that the app takes (`ok-*`) are delivered; those it refuses (`bad-*`, 400) are
/// dead-lettered at once; once the app takes them, a replay delivers them again.
pub async fn publish_deliver_dead_letter_replay(set: &dyn RedisSet) {
    let app = RecordingApp::answering(|r: &RecordedRequest| {
        if r.header("x-event-id").starts_with("ok-") {
            200
        } else {
            400
        }
    })
    .await;
    let s = subscriber("notifier", set, app.addr, "q", "").start().await;
    let api_addr = s.addresses.api;
    for id in ["ok-1", "bad-1", "bad-2"] {
        let a = publish(api_addr, "q", id, &format!("{{\"id\":\"{id}\"}}")).await;
        assert_eq!(a.status, 202, "{id}: {:?}", a.body);
    }
    let dup = publish(api_addr, "q", "ok-1", "{\"id\":\"ok-1\"}").await;
    assert_eq!(
        dup.status, 200,
        "the same id again is a duplicate: {:?}",
        dup.body
    );
    assert_eq!(dup.json()["duplicate"], true);
    assert_eq!(
        stream_event_ids(set, &stream_key("q")),
        vec!["ok-1", "bad-1", "bad-2"],
        "one entry per event, in the tagged stream"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.of("ok-1").len() == 1 && app.of("bad-2").len() == 1
        })
        .await,
        "delivered: {:?}",
        app.recorded()
            .iter()
            .map(|r| r.header("x-event-id").to_owned())
            .collect::<Vec<_>>()
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            api(api_addr, "GET", "/v1/events/dlq/q", "").await.json()["entries"]
                .as_array()
                .is_some_and(|e| e.len() == 2)
        })
        .await,
        "two dead letters: {}",
        api(api_addr, "GET", "/v1/events/dlq/q", "").await.json()
    );
    let listed = api(api_addr, "GET", "/v1/events/dlq/q", "").await.json();
    assert_eq!(listed["entries"][0]["event_id"], "bad-1");
    assert_eq!(listed["entries"][0]["reason"], "rejected");
    let xlen: usize = redis::cmd("XLEN")
        .arg(dlq_key("q"))
        .query(&mut set.conn_for(&dlq_key("q")))
        .expect("XLEN");
    assert_eq!(xlen, 2, "dead letters in the tagged DLQ stream");

    app.answer_with(|_| 200);
    let replayed = api(api_addr, "POST", "/v1/events/dlq/q/replay", "").await;
    assert_eq!(replayed.status, 200, "{:?}", replayed.body);
    assert_eq!(replayed.json()["replayed"], 2);
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.of("bad-1").len() == 2 && app.of("bad-2").len() == 2
        })
        .await,
        "replayed events delivered again"
    );
    assert_eq!(
        app.of("ok-1").len(),
        1,
        "the delivered event is not redelivered"
    );
    let left = api(api_addr, "GET", "/v1/events/dlq/q", "").await.json();
    assert_eq!(
        left["entries"],
        json!([]),
        "the DLQ is empty after the replay"
    );
    s.shutdown().await;
}

/// docs/events.md, "acknowledged means replicated": with the stream's replica stopped,
/// a publish is refused (503 `events_unavailable`) once `WAIT` saw no confirmation within
/// 200 ms; once the replica runs again the same id is answered as a duplicate and the
/// stream holds the event once.
pub async fn unconfirmed_publish_is_refused_then_a_duplicate(set: &dyn RedisSet) {
    let app = RecordingApp::ok().await;
    let s = subscriber("ledger", set, app.addr, "w", "").start().await;
    let api_addr = s.addresses.api;
    let first = publish(api_addr, "w", "w-1", "{}").await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let key = stream_key("w");
    let replicas = set.replicas_for(&key);
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    set.pause(replicas[0]);
    let asked = Instant::now();
    let refused = publish(api_addr, "w", "w-2", "{}").await;
    let took = asked.elapsed();
    set.resume(replicas[0]);
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.header("x-mesh-error"), "events_unavailable");
    assert_eq!(refused.json()["error"], "events_unavailable");
    assert!(took < Duration::from_secs(2), "refused after {took:?}");

    // Retried as an app would, until the replica confirms again (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let retried = loop {
        let a = publish(api_addr, "w", "w-2", "{}").await;
        if a.status != 503 || Instant::now() >= deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(retried.status, 200, "a duplicate: {:?}", retried.body);
    assert_eq!(retried.json()["duplicate"], true);
    assert_eq!(
        stream_event_ids(set, &key),
        vec!["w-1", "w-2"],
        "stored once"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.of("w-1").len() == 1 && app.of("w-2").len() == 1
        })
        .await,
        "both delivered once"
    );
    s.shutdown().await;
}

/// Two hub meshlets; alice on one, bob on the other, both in a room: a room broadcast
/// posted to either reaches both, a user broadcast reaches that user, `all` reaches both.
pub async fn hub_broadcasts_across_two_meshlets(set: &dyn RedisSet, room: &str) {
    let a = chat(set).start().await;
    let b = chat(set).start().await;
    let (mut alice, _) = join_as(hub_addr(&a), "alice").await;
    let (mut bob, _) = join_as(hub_addr(&b), "bob").await;
    join(&mut alice, room, None).await;
    join(&mut bob, room, None).await;

    // Rooms and users on sharded pub/sub on a cluster only; `all` on plain pub/sub always
    // (docs/realtime.md).
    let room_channel = format!("mesh:rt:chat:room:{{{room}}}");
    let sharded = set.sharded_pubsub();
    assert!(
        eventually(Duration::from_secs(5), || async {
            set.subscribed_channels(sharded).contains(&room_channel)
        })
        .await,
        "{room_channel} subscribed (sharded: {sharded}): {:?} / {:?}",
        set.subscribed_channels(true),
        set.subscribed_channels(false)
    );
    assert!(!set.subscribed_channels(!sharded).contains(&room_channel));
    assert!(set.subscribed_channels(false).contains("mesh:rt:chat:all"));
    // `GET /v1/rooms` reads every live meshlet's room set (docs/realtime.md): on a cluster
    // those sets sit in different slots, so no one multi-key command may read them.
    let listed = eventually(Duration::from_secs(5), || async {
        let rooms = get_host(a.addresses.api, "localhost", "/v1/rooms").await;
        rooms.status == 200
            && rooms.json()["rooms"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["room"] == room && r["clients"] == 2))
    })
    .await;
    let last = get_host(a.addresses.api, "localhost", "/v1/rooms").await;
    assert!(
        listed,
        "GET /v1/rooms lists {room} with 2 clients: {} {}",
        last.status,
        String::from_utf8_lossy(&last.body)
    );
    let sent = post(
        b.addresses.api,
        "/v1/broadcast",
        json!({"to": {"room": room}, "event": "notice", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    for ws in [&mut alice, &mut bob] {
        let m = next(ws).await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["room"], room);
        assert_eq!(m["data"], json!({"n": 1}));
    }
    let to_bob = post(
        a.addresses.api,
        "/v1/broadcast",
        json!({"to": {"user": "bob"}, "event": "dm", "data": "hi bob"}),
    )
    .await;
    assert_eq!(to_bob.status, 202, "{:?}", to_bob.body);
    assert_eq!(next(&mut bob).await["data"], "hi bob");
    let all = post(
        a.addresses.api,
        "/v1/broadcast",
        json!({"to": {"all": true}, "event": "news", "data": 42}),
    )
    .await;
    assert_eq!(all.status, 202, "{:?}", all.body);
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next(ws).await["data"], 42);
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Posts room broadcasts (`{"probe": k}`, k = 0, 1, ...) to `api` until one reaches every
/// client in `clients` (each has joined `room`), or `within` passes; returns when it did.
/// A client may first hear earlier probes the hub replays from history: they are skipped.
pub async fn until_room_broadcast_reaches(
    api: SocketAddr,
    room: &str,
    clients: &mut [&mut Ws],
    within: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + within;
    let mut probe = 0u64;
    while Instant::now() < deadline {
        probe += 1;
        let sent = post(
            api,
            "/v1/broadcast",
            json!({"to": {"room": room}, "event": "probe", "data": {"probe": probe}}),
        )
        .await;
        if sent.status != 202 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Read every client at once: one not read for `slow_after` would be closed.
        let heard_it = futures_util::future::join_all(
            clients
                .iter_mut()
                .map(|ws| heard(ws, probe, Duration::from_millis(1_000))),
        )
        .await;
        if heard_it.iter().all(|h| *h) {
            return Some(Instant::now());
        }
    }
    None
}

/// Whether `ws` hears probe `n` within `within` (earlier probes skipped).
async fn heard(ws: &mut Ws, n: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = try_next(ws, left).await else {
            return false;
        };
        let got = frame["data"]["probe"].as_u64();
        if got == Some(n) {
            return true;
        }
    }
}

/// What a publish load saw: the ids answered 202 (acknowledged), 200 (duplicate) and
/// anything else (503 `events_unavailable` while the master is away), with when.
#[derive(Default, Debug)]
pub struct LoadLog {
    pub acked: Vec<(String, Instant)>,
    pub duplicates: Vec<String>,
    pub refused: Vec<(String, u16, Instant)>,
}

impl LoadLog {
    /// The first acknowledgement at or after `at`.
    pub fn first_ack_after(&self, at: Instant) -> Option<Instant> {
        self.acked.iter().map(|(_, t)| *t).find(|t| *t >= at)
    }

    /// The longest time between two answers (how long publishes hung at worst).
    pub fn longest_silence(&self) -> Duration {
        let mut at: Vec<Instant> = self.acked.iter().map(|(_, t)| *t).collect();
        at.extend(self.refused.iter().map(|(_, _, t)| *t));
        at.sort();
        at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    pub fn acked_ids(&self) -> HashSet<String> {
        self.acked.iter().map(|(id, _)| id.clone()).collect()
    }
}

/// A bounded publish load: `event_type` events `{prefix}-{i}`, one at a time with a short
/// pause, to `api` until `stop` is set, `max` were sent or 60 s passed.
pub struct Load {
    pub log: Arc<Mutex<LoadLog>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(
        api: SocketAddr,
        event_type: &'static str,
        prefix: &'static str,
        max: usize,
    ) -> Load {
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (log, stop) = (log.clone(), stop.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                for i in 0..max {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) || Instant::now() >= deadline
                    {
                        break;
                    }
                    let id = format!("{prefix}-{i}");
                    let a = publish(api, event_type, &id, &format!("{{\"i\":{i}}}")).await;
                    let now = Instant::now();
                    record(&log, id, a.status.as_u16(), now);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        Load { log, stop, task }
    }

    /// How many publishes were acknowledged so far.
    pub fn acked(&self) -> usize {
        self.log.lock().expect("load log").acked.len()
    }

    /// Stops the load and returns what it saw.
    pub async fn finish(self) -> LoadLog {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("load task");
        Arc::try_unwrap(self.log)
            .expect("the load task ended")
            .into_inner()
            .expect("load log")
    }
}

fn record(log: &Mutex<LoadLog>, id: String, status: u16, at: Instant) {
    let mut log = log.lock().expect("load log");
    match status {
        202 => log.acked.push((id, at)),
        200 => log.duplicates.push(id),
        other => log.refused.push((id, other, at)),
    }
}

/// Publishes every refused id again until it is acknowledged (202) or found a duplicate
/// (200: the refused publish had landed); bounded by `within`. Returns the ids that are now
/// in the stream by one of these answers.
pub async fn retry_refused(
    api: SocketAddr,
    event_type: &str,
    log: &LoadLog,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut settled = Vec::new();
    for (id, _, _) in &log.refused {
        loop {
            let a = publish(api, event_type, id, "{\"retry\":true}").await;
            if matches!(a.status.as_u16(), 200 | 202) {
                settled.push(id.clone());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} still refused ({}) after {within:?}",
                a.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    settled
}

/// Every id of `ids` delivered to `app` at least once within `within`: the missing ones
/// when not.
pub async fn missing_deliveries(
    app: &RecordingApp,
    ids: &HashSet<String>,
    within: Duration,
) -> Vec<String> {
    let all_there = || {
        let got: HashSet<String> = app
            .recorded()
            .iter()
            .map(|r| r.header("x-event-id").to_owned())
            .collect();
        let mut missing: Vec<String> = ids.difference(&got).cloned().collect();
        missing.sort();
        missing
    };
    let _ = eventually(within, || async { all_there().is_empty() }).await;
    all_there()
}

/// Each id once in `ids` (the stream), or the ids that appear more than once.
pub fn repeated(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut twice: Vec<String> = ids.iter().filter(|id| !seen.insert(*id)).cloned().collect();
    twice.sort();
    twice.dedup();
    twice
}
