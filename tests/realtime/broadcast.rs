//! Messages across meshlets: broadcasts to a room, a user, a client and everyone; server-side
//! joins and leaves; what clients publish (to the app, to the room, or refused).

use http::StatusCode;
use serde_json::{json, Value};

use crate::pair;
use crate::support::realtime::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_broadcast_leave_across_two_meshlets() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "").await;
    let (mut alice, _) = join_as(inbound(&a), "alice").await;
    let (mut bob, _) = join_as(inbound(&b), "bob").await;
    let joined = join(&mut alice, "lobby", None).await;
    assert_eq!(joined["recovered"], false);
    join(&mut bob, "lobby", None).await;

    // Posted to B, delivered to the member on A and the one on B.
    let sent = broadcast(
        b.addresses.api,
        json!({"room": "lobby"}),
        "notice",
        json!({"n": 1}),
    )
    .await;
    assert!(sent["id"].is_string());
    let offset = sent["offset"].as_str().expect("room offset").to_owned();
    for ws in [&mut alice, &mut bob] {
        let m = next(ws).await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["room"], "lobby");
        assert_eq!(m["event"], "notice");
        assert_eq!(m["data"], json!({"n": 1}));
        assert_eq!(m["offset"], offset.as_str());
    }

    // Rooms (cluster-wide: presence is written in the background) and stats.
    let lobby = json!([{"room": "lobby", "clients": 2, "local": 1}]);
    assert!(
        eventually(WAIT, || async {
            get(a.addresses.api, "/v1/rooms").await.json()["rooms"] == lobby
        })
        .await,
        "{}",
        get(a.addresses.api, "/v1/rooms").await.json()
    );
    let stats = get(a.addresses.api, "/v1/realtime").await.json();
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["rooms"], 1);
    assert_eq!(stats["redis"], "up");

    say(&mut alice, json!({"type": "leave", "room": "lobby"})).await;
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "left", "room": "lobby"})
    );
    broadcast(
        a.addresses.api,
        json!({"room": "lobby"}),
        "notice",
        json!({"n": 2}),
    )
    .await;
    assert_eq!(next(&mut bob).await["data"], json!({"n": 2}));
    // Alice left: the next thing she hears is her own pong.
    say(&mut alice, json!({"type": "ping"})).await;
    assert_eq!(next(&mut alice).await["type"], "pong");
    assert!(
        eventually(WAIT, || async {
            get(a.addresses.api, "/v1/rooms").await.json()["rooms"]
                == json!([{"room": "lobby", "clients": 1, "local": 0}])
        })
        .await,
        "bob is still in the lobby, on the other meshlet"
    );
    assert!(metric(a.addresses.telemetry, "meshlet_realtime_messages_out_total").await >= 3.0);
    assert_eq!(
        metric(a.addresses.telemetry, "meshlet_realtime_connections").await,
        1.0
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_to_a_user_a_client_and_everyone() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "").await;
    let (mut alice_a, _) = join_as(inbound(&a), "alice").await;
    let (mut alice_b, _) = join_as(inbound(&b), "alice").await;
    let (mut bob, bob_id) = join_as(inbound(&b), "bob").await;

    broadcast(
        a.addresses.api,
        json!({"user": "alice"}),
        "dm",
        json!("hi alice"),
    )
    .await;
    for ws in [&mut alice_a, &mut alice_b] {
        let m = next(ws).await;
        assert_eq!(m["data"], "hi alice");
        assert_eq!(m["room"], Value::Null);
    }
    broadcast(
        a.addresses.api,
        json!({"client": bob_id}),
        "dm",
        json!("hi bob"),
    )
    .await;
    assert_eq!(next(&mut bob).await["data"], "hi bob");
    broadcast(b.addresses.api, json!({"all": true}), "news", json!(42)).await;
    for ws in [&mut alice_a, &mut alice_b, &mut bob] {
        let m = next(ws).await;
        assert_eq!(
            (m["event"].clone(), m["data"].clone()),
            (json!("news"), json!(42))
        );
    }
    // Nothing else was queued for bob (the user message was alice's).
    say(&mut bob, json!({"type": "ping"})).await;
    assert_eq!(next(&mut bob).await["type"], "pong");

    let bad = post(
        a.addresses.api,
        "/v1/broadcast",
        json!({"to": {"room": "a", "user": "b"}}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_join_and_leave_reach_clients_on_any_meshlet() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "").await;
    let (mut alice, _) = join_as(inbound(&b), "alice").await;
    let (mut bob, bob_id) = join_as(inbound(&b), "bob").await;
    let answer = post(
        a.addresses.api,
        "/v1/rooms/desk/join",
        json!({"user": "alice"}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(next(&mut alice).await["type"], "joined");
    assert_eq!(
        post(
            a.addresses.api,
            "/v1/rooms/desk/join",
            json!({"client": bob_id}),
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(next(&mut bob).await["type"], "joined");
    broadcast(a.addresses.api, json!({"room": "desk"}), "e", json!(1)).await;
    assert_eq!(next(&mut alice).await["data"], 1);
    assert_eq!(next(&mut bob).await["data"], 1);
    assert_eq!(
        post(
            a.addresses.api,
            "/v1/rooms/desk/leave",
            json!({"user": "alice"}),
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(next(&mut alice).await["type"], "left");
    broadcast(a.addresses.api, json!({"room": "desk"}), "e", json!(2)).await;
    assert_eq!(next(&mut bob).await["data"], 2);
    say(&mut alice, json!({"type": "ping"})).await;
    assert_eq!(next(&mut alice).await["type"], "pong");
    // Membership names users or clients, not everyone and not another room's members.
    for to in [json!({"all": true}), json!({"room": "desk"})] {
        let answer = post(a.addresses.api, "/v1/rooms/lobby/join", to).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{:?}", answer.body);
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publish_goes_to_the_app_with_user_and_client_id() {
    let app = RecordingApp::ok().await;
    let hub = MeshletSpec::new("chat")
        .app(app.addr)
        .with(&format!(
            "realtime:\n  auth: {{secret: \"{SECRET}\"}}\n  client_publish: app\n"
        ))
        .start()
        .await;
    let (mut ws, id) = join_as(inbound(&hub), "alice").await;
    say(
        &mut ws,
        json!({"type": "publish", "room": "support", "data": {"text": "help"}}),
    )
    .await;
    assert!(eventually(WAIT, || async { app.count() > 0 }).await);
    let got = &app.recorded()[0];
    let (headers, body) = (&got.headers, got.json());
    assert_eq!(headers["x-realtime-client"], id.as_str());
    assert_eq!(headers["x-realtime-user"], "alice");
    assert_eq!(body["client"], id.as_str());
    assert_eq!(body["user"], "alice");
    assert_eq!(body["room"], "support");
    assert_eq!(body["data"], json!({"text": "help"}));
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publish_room_broadcasts_and_deny_refuses() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "  client_publish: room\n").await;
    let (mut alice, _) = join_as(inbound(&a), "alice").await;
    let (mut bob, _) = join_as(inbound(&b), "bob").await;
    join(&mut alice, "chat", None).await;
    join(&mut bob, "chat", None).await;
    say(
        &mut alice,
        json!({"type": "publish", "room": "chat", "data": "hello"}),
    )
    .await;
    for ws in [&mut bob, &mut alice] {
        let m = next(ws).await;
        assert_eq!(
            (m["event"].clone(), m["data"].clone()),
            (json!("message"), json!("hello"))
        );
    }
    // A frame many times the hub's 256-byte read buffer arrives whole.
    let long = "0123456789abcdef".repeat(1280);
    say(
        &mut alice,
        json!({"type": "publish", "room": "chat", "data": long}),
    )
    .await;
    for ws in [&mut bob, &mut alice] {
        assert_eq!(next(ws).await["data"], json!(long));
    }
    a.shutdown().await;
    b.shutdown().await;

    let deny = sidecar(&config(None, "  client_publish: deny\n")).await;
    let (mut ws, _) = join_as(inbound(&deny), "alice").await;
    say(
        &mut ws,
        json!({"type": "publish", "room": "chat", "data": 1}),
    )
    .await;
    assert_eq!(next(&mut ws).await["code"], "publish_denied");
    deny.shutdown().await;
}
