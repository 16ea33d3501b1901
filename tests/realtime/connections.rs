//! Connecting to the hub: tokens checked before the upgrade, the `rooms` claim, bad frames,
//! the connection limit, and the close at shutdown.

use futures_util::SinkExt;
use http::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::realtime::*;
use crate::support::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_with_1001() {
    let hub = sidecar(&config(None, "")).await;
    let (mut ws, _) = join_as(inbound(&hub), "alice").await;
    let (mut other, _) = join_as(inbound(&hub), "bob").await;
    hub.shutdown().await;
    assert_eq!(close_code(&mut ws, WAIT).await, Some(1001));
    assert_eq!(close_code(&mut other, WAIT).await, Some(1001));
}
