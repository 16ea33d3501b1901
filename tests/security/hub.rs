//! The hub and events across services (docs/realtime.md, docs/events.md, docs/security.md):
//! services sharing one Redis and prefix share no hub and no event ids, and one client or
//! one anonymous config cannot take a hub over. Each case is tried as an attacker would.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use meshlet::config::LoadedConfig;
use meshlet::sidecar::Sidecar;
use serde_json::{json, Value};

use crate::support::realtime::*;
use crate::support::*;

/// A meshlet of `service` with the hub, on `redis` (short heartbeats, so presence settles
/// fast); `extra` lines go under `realtime:`.
async fn hub_of(service: &str, redis: &RedisServer, extra: &str) -> Sidecar {
    MeshletSpec::new(service)
        .redis(redis)
        .registry("heartbeat: 200ms, ttl: 2s, resync: 1s")
        .with(&format!(
            "realtime:\n  path: /ws\n  auth: {{secret: \"{SECRET}\", require: true}}\n{extra}"
        ))
        .start()
        .await
}

/// How long a client waits to be sure a message is NOT coming: the same message reached
/// the sending service's own client long before.
const QUIET: Duration = Duration::from_millis(700);

/// Service A's app broadcasts to everyone, to user 42 and to a room name B uses, on the
/// Redis and prefix B shares: A's own clients get them, B's never do. And A's local API
/// does not list B's rooms or presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_never_reaches_another_services_clients() {
    let redis = RedisServer::start();
    let a = hub_of("chat", &redis, "").await;
    let b = hub_of("billing", &redis, "").await;
    // The same user id, and the same room name, on both services.
    let (mut a42, _) = join_as(inbound(&a), "42").await;
    let (mut b42, _) = join_as(inbound(&b), "42").await;
    join(&mut a42, "lobby", None).await;
    join(&mut b42, "lobby", None).await;
    join(&mut b42, "billing-secret", None).await;

    for (to, event) in [
        (json!({"all": true}), "to-all"),
        (json!({"user": "42"}), "to-user"),
        (json!({"room": "lobby"}), "to-room"),
    ] {
        broadcast(a.addresses.api, to, event, json!("from chat")).await;
        let got = next(&mut a42).await;
        assert_eq!(got["event"], event, "chat's own client: {got}");
        let leaked = try_next(&mut b42, QUIET).await;
        assert!(
            leaked.is_none(),
            "chat's broadcast {event} reached billing's client: {leaked:?}"
        );
    }

    // Presence is written: billing's API sees its own rooms...
    let rooms =
        |api: SocketAddr| async move { get(api, "/v1/rooms").await.json()["rooms"].clone() };
    let names = |rooms: Value| -> Vec<String> {
        rooms
            .as_array()
            .expect("rooms")
            .iter()
            .map(|r| r["room"].as_str().expect("room").to_owned())
            .collect()
    };
    assert!(
        eventually(WAIT, || async {
            names(rooms(b.addresses.api).await).contains(&"billing-secret".to_owned())
        })
        .await,
        "billing lists its room: {}",
        rooms(b.addresses.api).await
    );
    // ...and chat's API lists none of them, nor counts billing's member of `lobby`.
    let only_lobby = json!([{"room": "lobby", "clients": 1, "local": 1}]);
    assert!(
        eventually(WAIT, || async {
            rooms(a.addresses.api).await == only_lobby
        })
        .await,
        "chat lists: {}",
        rooms(a.addresses.api).await
    );
    let presence = get(a.addresses.api, "/v1/rooms/billing-secret/presence")
        .await
        .json();
    assert_eq!(presence["users"], json!([]), "{presence}");
    assert_eq!(presence["clients"], json!([]), "{presence}");
    let lobby = get(a.addresses.api, "/v1/rooms/lobby/presence")
        .await
        .json();
    assert_eq!(
        lobby["clients"].as_array().map(Vec::len),
        Some(1),
        "{lobby}"
    );

    // No hub key of either service outside its own scope.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("mesh:rt:*")
        .query(&mut redis.conn())
        .expect("keys");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("mesh:rt:chat:") || k.starts_with("mesh:rt:billing:")),
        "{keys:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Publishes `body` as `event_type` with `x-event-id: id` through the meshlet at `api`.
async fn publish(api: SocketAddr, event_type: &str, id: &str) -> Value {
    let req = Request::post(format!("/v1/events/{event_type}"))
        .header("content-type", "application/json")
        .header("x-event-id", id)
        .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
        .expect("request");
    let answer = send(api, req).await.expect("answered");
    assert!(
        answer.status == 202 || answer.status == 200,
        "{} {:?}",
        answer.status,
        answer.body
    );
    answer.json()
}

fn xlen(redis: &RedisServer, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut redis.conn())
        .expect("xlen")
}

/// An attacker who knows (or guesses) the ids one service publishes reuses them: under
/// another type, or from another service. Each is a new event, stored; only the same id,
/// type and service again is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_reused_for_another_type_or_by_another_service_is_stored() {
    let redis = RedisServer::start();
    let orders = MeshletSpec::new("orders").redis(&redis).start().await;
    let mallory = MeshletSpec::new("mallory").redis(&redis).start().await;

    let first = publish(orders.addresses.api, "order.paid", "order-42").await;
    assert_eq!(first["duplicate"], false, "{first}");

    // The same id under another type: a new event, not a duplicate never stored.
    let other_type = publish(orders.addresses.api, "order.refunded", "order-42").await;
    assert_eq!(other_type["duplicate"], false, "{other_type}");
    assert_eq!(xlen(&redis, "mesh:events:{order.refunded}"), 1);

    // Another service reusing the id of the same type first cannot make orders' own
    // event a "duplicate": each service's id is its own.
    let squatted = publish(mallory.addresses.api, "order.shipped", "order-43").await;
    assert_eq!(squatted["duplicate"], false, "{squatted}");
    let real = publish(orders.addresses.api, "order.shipped", "order-43").await;
    assert_eq!(
        real["duplicate"], false,
        "orders' event was swallowed: {real}"
    );
    assert_eq!(xlen(&redis, "mesh:events:{order.shipped}"), 2);

    // The normal path: the same id, type and service again is one event.
    let again = publish(orders.addresses.api, "order.paid", "order-42").await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["stream_id"], first["stream_id"]);
    assert_eq!(xlen(&redis, "mesh:events:{order.paid}"), 1);
    orders.shutdown().await;
    mallory.shutdown().await;
}

/// One client joins 1,000 rooms: after `max_rooms_per_client` (100 by default) each join
/// is refused with `too_many_rooms`, and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_joining_a_thousand_rooms_is_stopped_at_the_limit() {
    let redis = RedisServer::start();
    let hub = hub_of("chat", &redis, "").await;
    let (mut ws, _) = join_as(inbound(&hub), "mallory").await;
    let mut joined = 0;
    let mut refused = 0;
    for i in 0..1000 {
        say(&mut ws, json!({"type": "join", "room": format!("r{i}")})).await;
        let answer = next(&mut ws).await;
        match answer["type"].as_str() {
            Some("joined") => joined += 1,
            Some("error") => {
                assert_eq!(answer["code"], "too_many_rooms", "{answer}");
                refused += 1;
            }
            _ => panic!("unexpected frame {answer}"),
        }
    }
    assert_eq!((joined, refused), (100, 900));
    // Still connected, still in its 100 rooms, and a room it left frees a place.
    say(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");
    let stats = get(hub.addresses.api, "/v1/realtime").await.json();
    assert_eq!(stats["rooms"], 100, "{stats}");
    say(&mut ws, json!({"type": "leave", "room": "r0"})).await;
    assert_eq!(next(&mut ws).await["type"], "left");
    join(&mut ws, "r999", None).await;
    hub.shutdown().await;
}

/// A client floods `publish` frames toward a slow app (`client_publish: app`): beyond
/// `app_concurrency` posts in flight, each gets an error frame `overloaded` at once
/// instead of piling up tasks and connections toward the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publishes_beyond_app_concurrency_are_overloaded() {
    let app = RecordingApp::ok().await;
    app.slow(1500);
    let hub = MeshletSpec::new("chat")
        .app(app.addr)
        .with(&format!(
            "realtime:\n  auth: {{secret: \"{SECRET}\"}}\n  client_publish: app\n  app_concurrency: 4\n"
        ))
        .start()
        .await;
    let (mut ws, _) = join_as(inbound(&hub), "mallory").await;
    for i in 0..10 {
        say(
            &mut ws,
            json!({"type": "publish", "room": "lobby", "data": i}),
        )
        .await;
    }
    let mut overloaded = 0;
    while let Some(frame) = try_next(&mut ws, Duration::from_millis(700)).await {
        assert_eq!(frame["code"], "overloaded", "{frame}");
        overloaded += 1;
    }
    assert_eq!(overloaded, 6, "4 posts in flight, the 6 others refused");
    assert!(eventually(WAIT, || async { app.count() == 4 }).await);

    // Once the app answered, the slots are free again.
    app.slow(0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    say(
        &mut ws,
        json!({"type": "publish", "room": "lobby", "data": "later"}),
    )
    .await;
    assert!(eventually(WAIT, || async { app.count() == 5 }).await);
    assert!(try_next(&mut ws, Duration::from_millis(300))
        .await
        .is_none());
    hub.shutdown().await;
}

/// A hub without `realtime.auth` on an inbound listener others can reach (0.0.0.0) is a
/// config error naming `realtime.auth` and `realtime.allow_anonymous`; on loopback, or
/// with `allow_anonymous: true`, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_hub_on_a_public_inbound_does_not_start_by_accident() {
    let listen = |inbound: &str| {
        format!(
            "listen: {{outbound: 127.0.0.1:0, inbound: \"{inbound}\", api: 127.0.0.1:0, telemetry: 127.0.0.1:0}}\n"
        )
    };
    let anonymous = |inbound: &str, extra: &str| {
        format!(
            "service: {{name: chat}}\n{}realtime:\n  path: /ws\n{extra}",
            listen(inbound)
        )
    };
    for public in ["0.0.0.0:0", "[::]:0"] {
        let refused = LoadedConfig::from_text(&anonymous(public, ""), "test.yaml")
            .map(|_| ())
            .expect_err("an anonymous hub on a public inbound is refused");
        let message = refused.to_string();
        assert!(message.contains("realtime.auth"), "{message}");
        assert!(message.contains("realtime.allow_anonymous"), "{message}");
    }

    // Allowed on purpose: it starts, and anonymous clients connect.
    let text = anonymous("0.0.0.0:0", "  allow_anonymous: true\n");
    let loaded = LoadedConfig::from_text(&text, "test.yaml").expect("allowed on purpose");
    let hub = Sidecar::start(loaded).await.expect("starts");
    let port = inbound(&hub).port();
    let mut ws = connect(SocketAddr::from(([127, 0, 0, 1], port)), "", None)
        .await
        .expect("anonymous client connects");
    assert_eq!(next(&mut ws).await["user"], Value::Null);
    hub.shutdown().await;

    // On loopback nobody else can reach it: no flag needed.
    let hub = sidecar(&anonymous("127.0.0.1:0", "")).await;
    hub.shutdown().await;
}
