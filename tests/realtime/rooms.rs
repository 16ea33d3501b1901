//! Rooms: listed cluster-wide, presence (forgetting dead meshlets), recovery of what a
//! reconnecting client missed, and one meshlet without Redis.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::pair;
use crate::support::realtime::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_cluster_wide() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "").await;
    let (mut alice, _) = join_as(inbound(&a), "alice").await;
    let (mut bob, _) = join_as(inbound(&b), "bob").await;
    join(&mut alice, "room1", None).await;
    join(&mut bob, "room1", None).await;
    join(&mut bob, "room2", None).await;
    // A meshlet that died without cleaning up: listed, but without a liveness key.
    let mut conn = redis.conn();
    let _: () = redis::pipe()
        .sadd("mesh:rt:chat:instances", "ghost-0001")
        .sadd("mesh:rt:chat:rooms:ghost-0001", "room9")
        .hset("mesh:rt:chat:presence:{room9}", "ghost-0001:1", "carol")
        .query(&mut conn)
        .expect("ghost presence");

    let rooms =
        |api: SocketAddr| async move { get(api, "/v1/rooms").await.json()["rooms"].clone() };
    let both = json!([
        {"room": "room1", "clients": 2, "local": 1},
        {"room": "room2", "clients": 1, "local": 0},
    ]);
    assert!(
        eventually(WAIT, || async { rooms(a.addresses.api).await == both }).await,
        "rooms seen from a: {}",
        rooms(a.addresses.api).await
    );
    assert_eq!(
        rooms(b.addresses.api).await,
        json!([
            {"room": "room1", "clients": 2, "local": 1},
            {"room": "room2", "clients": 1, "local": 1},
        ])
    );

    // Rooms follow their members away, on every meshlet.
    drop(bob);
    assert!(
        eventually(WAIT, || async {
            rooms(a.addresses.api).await == json!([{"room": "room1", "clients": 1, "local": 1}])
        })
        .await,
        "rooms seen from a after bob left: {}",
        rooms(a.addresses.api).await
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_and_forgets_dead_meshlets() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "").await;
    let (mut alice, alice_id) = join_as(inbound(&a), "alice").await;
    let (mut bob, _) = join_as(inbound(&b), "bob").await;
    join(&mut alice, "room1", None).await;
    join(&mut bob, "room1", None).await;
    // A meshlet that died without cleaning up: no liveness key.
    let mut conn = redis.conn();
    let _: () = redis::cmd("HSET")
        .arg("mesh:rt:chat:presence:{room1}")
        .arg("ghost-0001:1")
        .arg("carol")
        .query(&mut conn)
        .expect("hset");

    let users = |api: SocketAddr| async move {
        get(api, "/v1/rooms/room1/presence").await.json()["users"].clone()
    };
    assert!(
        eventually(WAIT, || async {
            users(b.addresses.api).await == json!(["alice", "bob"])
        })
        .await,
        "presence: {}",
        users(b.addresses.api).await
    );
    let presence = get(a.addresses.api, "/v1/rooms/room1/presence")
        .await
        .json();
    assert!(presence["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .any(|c| c["client"] == alice_id.as_str() && c["user"] == "alice"));
    let ghost: bool = redis::cmd("HEXISTS")
        .arg("mesh:rt:chat:presence:{room1}")
        .arg("ghost-0001:1")
        .query(&mut conn)
        .expect("hexists");
    assert!(!ghost, "a dead meshlet's entries are removed");

    say(&mut bob, json!({"type": "leave", "room": "room1"})).await;
    next(&mut bob).await;
    assert!(
        eventually(WAIT, || async {
            users(a.addresses.api).await == json!(["alice"])
        })
        .await
    );
    drop(alice);
    assert!(eventually(WAIT, || async { users(a.addresses.api).await == json!([]) }).await);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_recovers_what_it_missed() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "  history: {size: 5, ttl: 1m}\n").await;
    let (mut ws, _) = join_as(inbound(&a), "alice").await;
    join(&mut ws, "prices", None).await;
    broadcast(b.addresses.api, json!({"room": "prices"}), "tick", json!(1)).await;
    let seen = next(&mut ws).await["offset"]
        .as_str()
        .expect("offset")
        .to_owned();
    drop(ws);

    for n in 2..=4 {
        broadcast(b.addresses.api, json!({"room": "prices"}), "tick", json!(n)).await;
    }
    // Back on the other meshlet, with the last offset it saw.
    let (mut ws, _) = join_as(inbound(&b), "alice").await;
    let joined = join(&mut ws, "prices", Some(&seen)).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    for n in 2..=4 {
        let m = next(&mut ws).await;
        assert_eq!(m["data"], n, "{m}");
        assert_eq!(m["room"], "prices");
    }
    // Live messages follow, none repeated.
    broadcast(a.addresses.api, json!({"room": "prices"}), "tick", json!(5)).await;
    assert_eq!(next(&mut ws).await["data"], 5);
    assert!(
        joined["offset"].as_str().is_some(),
        "joined carries the room's latest offset"
    );

    // History is capped: far behind, the hub cannot prove nothing was missed.
    let mut api = Client::connect(b.addresses.api).await;
    for n in 0..150 {
        let req = Request::post("/v1/broadcast")
            .body(Full::new(Bytes::from(
                json!({"to": {"room": "prices"}, "data": n}).to_string(),
            )))
            .expect("request");
        assert_eq!(api.send(req).await.status, StatusCode::ACCEPTED);
    }
    let (mut late, _) = join_as(inbound(&a), "carol").await;
    let joined = join(&mut late, "prices", Some(&seen)).await;
    assert_eq!(joined["recovered"], false, "{joined}");
    // And an offset it never issued.
    let joined = join(&mut late, "prices", Some("1-0")).await;
    assert_eq!(joined["recovered"], false);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_meshlet_without_redis_serves_rooms_recovery_and_presence() {
    let hub =
        sidecar("service: {name: chat}\nrealtime:\n  auth: {secret: \"x\", require: false}\n")
            .await;
    let addr = inbound(&hub);
    // Tokens are optional here: an anonymous client is welcome.
    let mut anon = connect(addr, "", None).await.expect("anonymous");
    let welcome = next(&mut anon).await;
    assert_eq!(welcome["user"], Value::Null);
    join(&mut anon, "town", None).await;
    let first = broadcast(hub.addresses.api, json!({"room": "town"}), "e", json!(1)).await;
    let seen = first["offset"].as_str().expect("local offset").to_owned();
    assert_eq!(next(&mut anon).await["offset"], seen.as_str());
    drop(anon);
    broadcast(hub.addresses.api, json!({"room": "town"}), "e", json!(2)).await;
    let mut back = connect(addr, "", None).await.expect("anonymous");
    next(&mut back).await;
    let joined = join(&mut back, "town", Some(&seen)).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(next(&mut back).await["data"], 2);
    let presence = get(hub.addresses.api, "/v1/rooms/town/presence")
        .await
        .json();
    assert_eq!(presence["clients"].as_array().map(Vec::len), Some(1));
    hub.shutdown().await;
}
