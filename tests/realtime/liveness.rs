//! Clients that stop reading or answering pings are cut, the others get everything; clients
//! stay connected through a Redis restart.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::pair;
use crate::support::realtime::*;
use crate::support::*;

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
    let mut api = Client::connect(b.addresses.api).await;
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
async fn a_client_that_stays_connected_through_lost_pubsub_sessions_misses_nothing() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "").await;
    let (mut ws, _) = join_as(inbound(&a), "alice").await;
    join(&mut ws, "gap", None).await;
    const SENT: i64 = 60;
    let mut admin = redis.conn();
    for n in 0..SENT {
        if n % 10 == 5 {
            // Every pub/sub session is cut: A's subscriber reconnects after a backoff, and
            // the broadcasts right behind the cut are stored in history but not heard live.
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut admin)
                .expect("CLIENT KILL TYPE pubsub");
        }
        let answer = post(
            b.addresses.api,
            "/v1/broadcast",
            json!({"to": {"room": "gap"}, "event": "n", "data": n}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "broadcast {n}");
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while got.len() < SENT as usize && tokio::time::Instant::now() < deadline {
        let Some(frame) = try_next(&mut ws, Duration::from_secs(3)).await else {
            break;
        };
        if frame["type"] == "message" {
            got.push(frame["data"].as_i64().expect("a number"));
        }
    }
    assert_eq!(
        got,
        (0..SENT).collect::<Vec<_>>(),
        "every broadcast once, in order"
    );
    a.shutdown().await;
    b.shutdown().await;
}
