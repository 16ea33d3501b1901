//! The realtime hub's WebSocket clients and local API (docs/realtime.md), shared by
//! tests/realtime and bench/realtime_fanout.rs.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::Full;
use meshlet::sidecar::Sidecar;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::client::{send, Answer};
use super::mesh::MeshletSpec;
use super::redis_server::RedisServer;

/// The HS256 secret of every hub the tests start.
pub const SECRET: &str = "realtime-test-secret";
/// How long a test waits for a frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// A WebSocket client of the hub.
pub type Ws = WebSocketStream<TcpStream>;

/// An HS256 token of `sub` signed with the hubs' secret (`rooms` claim when given).
pub fn token(sub: &str, rooms: Option<&[&str]>) -> String {
    token_with(SECRET, sub, rooms)
}

/// [`token`] signed with `secret`.
pub fn token_with(secret: &str, sub: &str, rooms: Option<&[&str]>) -> String {
    let exp = super::now_ms() / 1000 + 3600;
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

/// Config of one meshlet of service `chat` (on `redis` when given); `extra` lines go under
/// `realtime:`.
pub fn config(redis: Option<&RedisServer>, extra: &str) -> String {
    let mut spec = MeshletSpec::new("chat");
    if let Some(redis) = redis {
        spec = spec
            .redis(redis)
            .registry("heartbeat: 200ms, ttl: 2s, resync: 1s");
    }
    spec.with(&format!(
        "realtime:\n  path: /ws\n  auth: {{secret: \"{SECRET}\", require: true}}\n{extra}"
    ))
    .yaml()
}

/// The hub's listener (the inbound one).
pub fn inbound(s: &Sidecar) -> SocketAddr {
    s.addresses.inbound.expect("inbound listener for the hub")
}

/// Connects a WebSocket client; `Err((status, body))` when refused before the upgrade.
pub async fn connect(
    addr: SocketAddr,
    query: &str,
    bearer: Option<&str>,
) -> Result<Ws, (StatusCode, String)> {
    let stream = TcpStream::connect(addr).await.expect("tcp connect");
    handshake(stream, addr, query, bearer).await
}

/// The WebSocket handshake of [`connect`] over a stream the test opened.
pub async fn handshake(
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
pub async fn join_as(addr: SocketAddr, user: &str) -> (Ws, String) {
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
pub async fn next(ws: &mut Ws) -> Value {
    try_next(ws, WAIT).await.expect("a frame in time")
}

/// The next JSON text frame within `within`, `None` when none came (pings skipped).
#[must_use]
pub async fn try_next(ws: &mut Ws, within: Duration) -> Option<Value> {
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
#[must_use]
pub async fn close_code(ws: &mut Ws, within: Duration) -> Option<u16> {
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

/// Sends `frame` as a text frame.
pub async fn say(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("frame sent");
}

/// Joins `room` and returns the `joined` frame.
pub async fn join(ws: &mut Ws, room: &str, since: Option<&str>) -> Value {
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

/// POSTs `body` as JSON to the local API.
#[must_use = "check the answer's status"]
pub async fn post(api: SocketAddr, path: &str, body: Value) -> Answer {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    send(api, req).await.expect("answered")
}

/// GETs `path` from the local API.
pub async fn get(api: SocketAddr, path: &str) -> Answer {
    let req = Request::get(path)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(api, req).await.expect("answered")
}

/// `POST /v1/broadcast`, asserted accepted; returns the answer's JSON.
pub async fn broadcast(api: SocketAddr, to: Value, event: &str, data: Value) -> Value {
    let answer = post(
        api,
        "/v1/broadcast",
        json!({"to": to, "event": event, "data": data}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    answer.json()
}
