//! The realtime hub end to end (docs/realtime.md): real WebSocket clients (tokio-tungstenite)
//! against in-process meshlets, two of them sharing one real redis-server.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshlet::sidecar::Sidecar;
use serde_json::{json, Value};
use support::{eventually, metric, send, sidecar, Answer, RedisServer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const SECRET: &str = "realtime-test-secret";
const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<TcpStream>;

fn token(sub: &str, rooms: Option<&[&str]>) -> String {
    token_with(SECRET, sub, rooms)
}

fn token_with(secret: &str, sub: &str, rooms: Option<&[&str]>) -> String {
    let exp = support::now_ms() / 1000 + 3600;
    let mut claims = json!({"sub": sub, "exp": exp});
    if let Some(rooms) = rooms {
        claims["rooms"] = json!(rooms);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("secret"),
    )
    .expect("token signs")
}

/// Config of one meshlet of service `chat`; `extra` lines go under `realtime:`.
fn config(redis: Option<&RedisServer>, extra: &str) -> String {
    let registry = match redis {
        Some(r) => format!(
            "registry: {{redis: \"{}\", heartbeat: 200ms, ttl: 2s, resync: 1s}}\n",
            r.url()
        ),
        None => String::new(),
    };
    format!(
        "service: {{name: chat}}\n{registry}realtime:\n  path: /ws\n  auth: {{secret: \"{SECRET}\", require: true}}\n{extra}"
    )
}

fn inbound(s: &Sidecar) -> SocketAddr {
    s.addresses.inbound.expect("inbound listener for the hub")
}

/// Connects a WebSocket client; `Err((status, body))` when refused before the upgrade.
async fn connect(
    addr: SocketAddr,
    query: &str,
    bearer: Option<&str>,
) -> Result<Ws, (StatusCode, String)> {
    let stream = TcpStream::connect(addr).await.expect("tcp connect");
    handshake(stream, addr, query, bearer).await
}

async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    query: &str,
    bearer: Option<&str>,
) -> Result<Ws, (StatusCode, String)> {
    let mut req = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .expect("request");
    if let Some(t) = bearer {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status(), body))
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// Connects as `user` and reads the welcome; returns the socket and its client id.
async fn join_as(addr: SocketAddr, user: &str) -> (Ws, String) {
    let mut ws = connect(addr, &format!("?token={}", token(user, None)), None)
        .await
        .expect("connected");
    let welcome = next(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["user"], user);
    let id = welcome["client_id"].as_str().expect("client id").to_owned();
    (ws, id)
}

/// The next JSON text frame (pings skipped).
async fn next(ws: &mut Ws) -> Value {
    try_next(ws, WAIT).await.expect("a frame in time")
}

async fn try_next(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg {
            Ok(Message::Text(t)) => {
                return Some(serde_json::from_str(t.as_str()).expect("JSON frame"))
            }
            Ok(Message::Close(c)) => panic!("closed unexpectedly: {c:?}"),
            Ok(_) => continue,
            Err(e) => panic!("socket error: {e}"),
        }
    }
}

/// Reads until the socket closes; returns the close code (None: closed without a frame).
async fn close_code(ws: &mut Ws, within: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("socket still open after {within:?}"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn say(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("frame sent");
}

/// Joins `room` and returns the `joined` frame.
async fn join(ws: &mut Ws, room: &str, since: Option<&str>) -> Value {
    let mut frame = json!({"type": "join", "room": room});
    if let Some(s) = since {
        frame["since"] = json!(s);
    }
    say(ws, frame).await;
    let joined = next(ws).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["room"], room);
    joined
}

async fn post(api: SocketAddr, path: &str, body: Value) -> Answer {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    send(api, req).await.expect("answered")
}

async fn get(api: SocketAddr, path: &str) -> Answer {
    let req = Request::get(path)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(api, req).await.expect("answered")
}

async fn broadcast(api: SocketAddr, to: Value, event: &str, data: Value) -> Value {
    let answer = post(
        api,
        "/v1/broadcast",
        json!({"to": to, "event": event, "data": data}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    answer.json()
}

/// Two meshlets of service `chat` on one redis-server.
async fn pair(redis: &RedisServer, extra: &str) -> (Sidecar, Sidecar) {
    let a = sidecar(&config(Some(redis), extra)).await;
    let b = sidecar(&config(Some(redis), extra)).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_before_the_upgrade() {
    let hub = sidecar(&config(None, "")).await;
    let addr = inbound(&hub);

    let (status, body) = connect(addr, "", None).await.expect_err("no token");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(body["error"], "unauthenticated");
    assert_eq!(body["service"], "chat");
    assert!(body["request_id"].is_string());

    let forged = token_with("another-secret", "mallory", None);
    let (status, body) = connect(addr, &format!("?token={forged}"), None)
        .await
        .expect_err("bad signature");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("unauthenticated"), "{body}");

    let (mut ws, _) = join_as(addr, "alice").await;
    say(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");

    let mut by_header = connect(addr, "", Some(&token("bob", None)))
        .await
        .expect("bearer header accepted");
    let welcome = next(&mut by_header).await;
    assert_eq!(welcome["user"], "bob");

    // A plain GET on the hub path is not an upgrade.
    let plain = get(addr, "/ws").await;
    assert_eq!(plain.status, StatusCode::BAD_REQUEST);
    assert_eq!(plain.header("x-mesh-error"), "bad_request");
    assert_eq!(
        metric(
            hub.addresses.telemetry,
            "meshlet_realtime_connects_total{result=\"unauthenticated\"}"
        )
        .await,
        2.0
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_connection_stays() {
    let hub = sidecar(&config(None, "")).await;
    let (mut ws, _) = join_as(inbound(&hub), "alice").await;
    for (frame, code) in [
        ("not json", "bad_json"),
        (r#"{"type":"dance"}"#, "unknown_type"),
        (r#"{"type":"join"}"#, "bad_frame"),
        (r#"{"type":"join","room":"has space"}"#, "bad_room"),
    ] {
        ws.send(Message::text(frame)).await.expect("sent");
        let answer = next(&mut ws).await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], code, "{answer}");
    }
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("sent");
    assert_eq!(next(&mut ws).await["code"], "binary_unsupported");
    // Over the frame size limit: closed with 1009.
    let huge = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70 * 1024));
    let _ = ws.send(Message::text(huge)).await;
    assert_eq!(close_code(&mut ws, WAIT).await, Some(1009));
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_claim_limits_joins() {
    let hub = sidecar(&config(None, "")).await;
    let t = token("alice", Some(&["lobby", "orders:*"]));
    let mut ws = connect(inbound(&hub), &format!("?token={t}"), None)
        .await
        .expect("connected");
    assert_eq!(next(&mut ws).await["type"], "welcome");
    join(&mut ws, "lobby", None).await;
    join(&mut ws, "orders:42", None).await;
    say(
        &mut ws,
        json!({"type": "publish", "room": "admin", "data": 1}),
    )
    .await;
    assert_eq!(next(&mut ws).await["code"], "forbidden");
    say(&mut ws, json!({"type": "join", "room": "admin"})).await;
    assert_eq!(close_code(&mut ws, WAIT).await, Some(4403));
    hub.shutdown().await;
}

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
    post(
        a.addresses.api,
        "/v1/rooms/desk/join",
        json!({"client": bob_id}),
    )
    .await;
    assert_eq!(next(&mut bob).await["type"], "joined");
    broadcast(a.addresses.api, json!({"room": "desk"}), "e", json!(1)).await;
    assert_eq!(next(&mut alice).await["data"], 1);
    assert_eq!(next(&mut bob).await["data"], 1);
    post(
        a.addresses.api,
        "/v1/rooms/desk/leave",
        json!({"user": "alice"}),
    )
    .await;
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
        .sadd("mesh:rt:instances", "ghost-0001")
        .sadd("mesh:rt:rooms:ghost-0001", "room9")
        .hset("mesh:rt:presence:room9", "ghost-0001:1", "carol")
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
    let mut api = support::Client::connect(b.addresses.api).await;
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
        .arg("mesh:rt:presence:room1")
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
        .arg("mesh:rt:presence:room1")
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

/// A client socket with a tiny receive buffer, so a client that stops reading is found
/// out quickly.
async fn small_buffer_socket(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(addr).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_and_the_others_get_everything() {
    let redis = RedisServer::start();
    let extra = "  send_queue: 8\n  ping_timeout: 2s\n  history: {size: 0}\n";
    let (a, b) = pair(&redis, extra).await;
    let addr = inbound(&a);
    let (mut reader, _) = join_as(addr, "alice").await;
    join(&mut reader, "feed", None).await;
    let stream = small_buffer_socket(addr).await;
    let mut stuck = handshake(
        stream,
        addr,
        &format!("?token={}", token("zed", None)),
        None,
    )
    .await
    .expect("connected");
    assert_eq!(next(&mut stuck).await["type"], "welcome");
    join(&mut stuck, "feed", None).await;

    // As soon as the hub counts it slow, the stuck client reads again: it finds what was
    // buffered, then the 4408 close (the hub waits at most a second for that).
    let telemetry = a.addresses.telemetry;
    let stuck_task = tokio::spawn(async move {
        let slow = eventually(Duration::from_secs(20), || async {
            metric(telemetry, "meshlet_realtime_slow_clients_dropped_total").await == 1.0
        })
        .await;
        assert!(slow, "the stuck client was never dropped");
        loop {
            match timeout(WAIT, stuck.next()).await.expect("closes in time") {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break None,
            }
        }
    });
    let payload = "p".repeat(200 * 1024);
    let total = 60;
    let mut api = support::Client::connect(b.addresses.api).await;
    let reading = tokio::spawn(async move {
        let mut got = 0;
        while got < total {
            let m = next(&mut reader).await;
            assert_eq!(m["data"]["n"], got);
            got += 1;
        }
        got
    });
    for n in 0..total {
        let body = json!({"to": {"room": "feed"}, "data": {"n": n, "pad": payload}});
        let req = Request::post("/v1/broadcast")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        assert_eq!(api.send(req).await.status, StatusCode::ACCEPTED);
    }
    assert_eq!(
        timeout(Duration::from_secs(20), reading)
            .await
            .expect("reader done in time")
            .expect("reader ok"),
        total
    );
    assert!(
        eventually(WAIT, || async {
            metric(
                a.addresses.telemetry,
                "meshlet_realtime_slow_clients_dropped_total",
            )
            .await
                == 1.0
        })
        .await
    );
    let code = stuck_task.await.expect("stuck client task");
    assert_eq!(code, Some(4408));
    let stats = get(a.addresses.api, "/v1/realtime").await.json();
    assert_eq!(stats["slow_clients_dropped"], 1);
    a.shutdown().await;
    b.shutdown().await;
}

/// Small messages at a modest rate never fill a socket's buffers nor a 256-message
/// queue: the ping the hub sends along with them finds the client that stopped reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_small_messages_is_cut_by_its_unanswered_ping() {
    let hub = sidecar(&config(
        None,
        "  slow_after: 300ms
",
    ))
    .await;
    let addr = inbound(&hub);
    let (mut reader, _) = join_as(addr, "alice").await;
    join(&mut reader, "feed", None).await;
    let (mut stuck, _) = join_as(addr, "zed").await;
    join(&mut stuck, "feed", None).await;
    let mut sent = 0;
    // Bounded: at most 100 messages, 50 ms apart, until the hub counts one slow client.
    while sent < 100 {
        broadcast(
            hub.addresses.api,
            json!({"room": "feed"}),
            "tick",
            json!(sent),
        )
        .await;
        assert_eq!(next(&mut reader).await["data"], sent);
        sent += 1;
        let stats = get(hub.addresses.api, "/v1/realtime").await.json();
        if stats["slow_clients_dropped"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent < 100, "the client that stopped reading was never cut");
    // Reading again, it finds what was written before the cut, then 4408.
    assert_eq!(close_code(&mut stuck, WAIT).await, Some(4408));
    // The reader was never in danger: it answers every ping.
    broadcast(
        hub.addresses.api,
        json!({"room": "feed"}),
        "tick",
        json!(sent),
    )
    .await;
    assert_eq!(next(&mut reader).await["data"], sent);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_answer_pings_is_closed() {
    let hub = sidecar(&config(
        None,
        "  ping_interval: 200ms\n  ping_timeout: 300ms\n",
    ))
    .await;
    let (mut ws, _) = join_as(inbound(&hub), "alice").await;
    // Not reading means not answering pings.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(close_code(&mut ws, WAIT).await, None);
    assert_eq!(
        metric(
            hub.addresses.telemetry,
            "meshlet_realtime_disconnects_total{reason=\"ping_timeout\"}"
        )
        .await,
        1.0
    );
    // A client that reads (and so answers) stays.
    let (mut live, _) = join_as(inbound(&hub), "bob").await;
    assert!(try_next(&mut live, Duration::from_millis(900))
        .await
        .is_none());
    say(&mut live, json!({"type": "ping"})).await;
    assert_eq!(next(&mut live).await["type"], "pong");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_is_503_overloaded() {
    let hub = sidecar(&config(None, "  max_connections: 2\n")).await;
    let addr = inbound(&hub);
    let (first, _) = join_as(addr, "a").await;
    let (_second, _) = join_as(addr, "b").await;
    let (status, body) = connect(addr, &format!("?token={}", token("c", None)), None)
        .await
        .expect_err("full");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("\"overloaded\""), "{body}");
    drop(first);
    assert!(
        eventually(WAIT, || async {
            connect(addr, &format!("?token={}", token("c", None)), None)
                .await
                .is_ok()
        })
        .await
    );
    hub.shutdown().await;
}

/// A local app that records what the hub POSTs to it.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(http::HeaderMap, Value)>>>,
}

async fn app() -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            record.lock().expect("lock").push((parts.headers, value));
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"{}"),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    App { addr, seen }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publish_goes_to_the_app_with_user_and_client_id() {
    let app = app().await;
    let yaml = format!(
        "service: {{name: chat, app: \"http://{}\"}}\nrealtime:\n  auth: {{secret: \"{SECRET}\"}}\n  client_publish: app\n",
        app.addr
    );
    let hub = sidecar(&yaml).await;
    let (mut ws, id) = join_as(inbound(&hub), "alice").await;
    say(
        &mut ws,
        json!({"type": "publish", "room": "support", "data": {"text": "help"}}),
    )
    .await;
    assert!(
        eventually(WAIT, || async {
            !app.seen.lock().expect("lock").is_empty()
        })
        .await
    );
    let (headers, body) = app.seen.lock().expect("lock")[0].clone();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stay_connected_through_a_redis_restart() {
    let mut redis = RedisServer::start();
    let (a, b) = pair(&redis, "").await;
    let (mut ws, _) = join_as(inbound(&a), "alice").await;
    join(&mut ws, "live", None).await;
    broadcast(b.addresses.api, json!({"room": "live"}), "e", json!(0)).await;
    assert_eq!(next(&mut ws).await["data"], 0);

    redis.restart();
    // Still connected while the hub reconnects.
    say(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");
    // Broadcasts flow again once A has subscribed anew (bounded: 50 tries, 15 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut delivered = false;
    for n in 1..=50 {
        if tokio::time::Instant::now() > deadline {
            break;
        }
        let answer = post(
            b.addresses.api,
            "/v1/broadcast",
            json!({"to": {"room": "live"}, "data": n}),
        )
        .await;
        if answer.status == StatusCode::ACCEPTED {
            if try_next(&mut ws, Duration::from_millis(300))
                .await
                .is_some()
            {
                delivered = true;
                break;
            }
        } else {
            assert_eq!(answer.header("x-mesh-error"), "realtime_unavailable");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        delivered,
        "no broadcast reached the client after the restart"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_with_1001() {
    let hub = sidecar(&config(None, "")).await;
    let (mut ws, _) = join_as(inbound(&hub), "alice").await;
    let (mut other, _) = join_as(inbound(&hub), "bob").await;
    hub.shutdown().await;
    assert_eq!(close_code(&mut ws, WAIT).await, Some(1001));
    assert_eq!(close_code(&mut other, WAIT).await, Some(1001));
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

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A rough figure, not a pass/fail check: memory per held connection (both ends, client
/// sockets with small buffers) and broadcast latency to every client of one meshlet.
/// `RT_CLIENTS=5000 cargo test --release --test realtime measure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_connections_and_fanout() {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let n: usize = std::env::var("RT_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let hub = sidecar(&config(None, "  max_connections: 100000\n")).await;
    let addr = inbound(&hub);
    let t = token("load", None);
    let before = rss_kib();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!("ws://{addr}/ws?token={t}")
            .into_client_request()
            .expect("request");
        let cfg = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(cfg))
            .await
            .expect("upgrade");
        next(&mut ws).await;
        clients.push(ws);
    }
    let held = rss_kib();
    println!(
        "{n} connections: RSS +{} KiB = {:.1} KiB per connection (client and server ends)",
        held - before,
        (held - before) as f64 / n as f64
    );
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n * 20)));
    let mut readers = Vec::new();
    for mut ws in clients {
        let latencies = latencies.clone();
        readers.push(tokio::spawn(async move {
            for _ in 0..20 {
                let m = next(&mut ws).await;
                let sent = m["data"].as_u64().expect("timestamp");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_micros() as u64;
                latencies
                    .lock()
                    .expect("lock")
                    .push(now.saturating_sub(sent));
            }
        }));
    }
    for _ in 0..20 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros() as u64;
        broadcast(hub.addresses.api, json!({"all": true}), "t", json!(now)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in readers {
        r.await.expect("reader");
    }
    let mut l = latencies.lock().expect("lock").clone();
    l.sort_unstable();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0;
    println!(
        "broadcast to {n} clients x20: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    hub.shutdown().await;
}
