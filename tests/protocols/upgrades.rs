//! Connections that stop being HTTP: WebSocket through outbound and inbound, an h2c upgrade
//! (never forwarded), RFC 8441 extended CONNECT to an h2 app, CONNECT tunnels to egress.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::echo_bytes;
use crate::support::*;

/// A WebSocket echo app on 127.0.0.1.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn ws_via(proxy: SocketAddr, url: &str) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("websocket handshake through meshlet");
    assert_eq!(resp.status(), 101);
    ws
}

/// Two meshlets on one Redis registry (one worker each): `chat` in front of its app (`chat`
/// says the rest) and `web`, the caller; `extra` is appended to both configs.
async fn caller_and_chat(redis: &RedisServer, chat: MeshletSpec, extra: &str) -> Pair {
    let on_redis = |spec: MeshletSpec| spec.workers(1).redis(redis).with(extra);
    callee_and_caller(&on_redis(chat), &on_redis(MeshletSpec::new("web"))).await
}

#[tokio::test]
async fn websocket_passes_through_outbound_and_inbound_and_idles_out() {
    let echo = websocket_echo().await;
    let redis = RedisServer::start();
    let limits = "limits: {idle_timeout: 400ms}\n";
    let Pair { caller, callee } =
        caller_and_chat(&redis, MeshletSpec::new("chat").app(echo), limits).await;
    let out = caller.addresses.outbound;
    assert!(
        eventually(Duration::from_secs(3), || async {
            get_via(out, "http://chat/").await.status != 404
        })
        .await
    );

    let mut ws = ws_via(out, "ws://chat/socket").await;
    for i in 0..20 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![7u8; 200_000])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().len(), 200_000);
    assert_eq!(
        metric(
            caller.addresses.telemetry,
            r#"meshlet_upgraded_connections{listener="outbound"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            callee.addresses.telemetry,
            r#"meshlet_upgraded_connections{listener="inbound"}"#
        )
        .await,
        1.0
    );

    // Nothing moves for longer than limits.idle_timeout: both halves are closed.
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(3), ws.next())
        .await
        .expect("closed by the idle timeout");
    assert!(
        !matches!(ended, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "no data, only the end of the connection: {ended:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(
                caller.addresses.telemetry,
                r#"meshlet_upgraded_connections{listener="outbound"}"#,
            )
            .await
                == 0.0
        })
        .await
    );
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_forwarded() {
    let up = Upstream::start("plain").await;
    let s = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{plain: [\"{}\"]}}}}\n",
        up.addr
    ))
    .await;
    let req = Request::get("http://plain/")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send(s.addresses.outbound, req).await.unwrap();
    assert_eq!(a.status, 200, "served as a plain request");
    let h = &a.json()["headers"];
    assert!(
        h.get("upgrade").is_none() && h.get("http2-settings").is_none(),
        "{h}"
    );
    assert_eq!(h["via"], "1.1 meshlet");
}

/// An h2c app that accepts RFC 8441 extended CONNECT for `websocket` and echoes the
/// stream's bytes.
async fn h2_tunnel_app() -> Server {
    serve(Http::H2Connect, |mut req: Request<Incoming>| async move {
        let protocol = req.extensions().get::<hyper::ext::Protocol>();
        let wanted = req.method() == http::Method::CONNECT
            && protocol.is_some_and(|p| p.as_str() == "websocket");
        let mut resp = Response::new(Full::new(Bytes::new()));
        if !wanted {
            *resp.status_mut() = http::StatusCode::BAD_REQUEST;
            return resp;
        }
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            echo_bytes(TokioIo::new(upgraded)).await;
        });
        resp
    })
    .await
}

/// Sends an extended CONNECT for `websocket` to `url` over h2c to `proxy`.
async fn extended_connect(
    proxy: SocketAddr,
    url: &str,
) -> (
    http::Response<Incoming>,
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
) {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(http::Method::CONNECT)
        .uri(url)
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    (resp, sender)
}

#[tokio::test]
async fn h2_extended_connect_is_carried_through_outbound_and_inbound_to_an_h2_app() {
    let app = h2_tunnel_app().await;
    let redis = RedisServer::start();
    let chat = MeshletSpec::new("chat")
        .app(app.addr)
        .service("protocol: h2");
    let Pair { caller, callee } = caller_and_chat(&redis, chat, "").await;
    let out = caller.addresses.outbound;
    assert!(
        until_status(out, "http://chat/", 400, Duration::from_secs(10)).await,
        "the callee is discovered (its app answers a plain GET with 400)"
    );
    let (resp, _sender) = extended_connect(out, "http://chat/socket").await;
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    for text in ["hello over h2", "and again"] {
        tunnel.write_all(text.as_bytes()).await.unwrap();
        let mut back = vec![0u8; text.len()];
        tunnel.read_exact(&mut back).await.unwrap();
        assert_eq!(back, text.as_bytes());
    }
    let gauge = |addr, listener: &'static str| async move {
        let series = format!(r#"meshlet_upgraded_connections{{listener="{listener}"}}"#);
        metric(addr, &series).await
    };
    assert_eq!(gauge(caller.addresses.telemetry, "outbound").await, 1.0);
    assert_eq!(gauge(callee.addresses.telemetry, "inbound").await, 1.0);
    drop(tunnel);
    assert!(
        eventually(Duration::from_secs(10), || async {
            gauge(caller.addresses.telemetry, "outbound").await == 0.0
        })
        .await,
        "the splice ends when the client closes its stream"
    );

    // An endpoint that speaks HTTP/1.1 cannot carry it: a clear error, not a hang.
    let legacy = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{chat: [\"{}\"]}}}}\n",
        app.addr
    ))
    .await;
    let (resp, _sender) = extended_connect(legacy.addresses.outbound, "http://chat/socket").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-mesh-error"], "upstream_unavailable");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("needs an h2 endpoint"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn connect_tunnels_only_to_egress_destinations() {
    // A plain TCP echo standing in for an HTTPS partner.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let partner = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo_bytes(s));
        }
    });
    let s = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nservices:\n  partner: {{url: \"http://{partner}\"}}\n"
    ))
    .await;
    let mut tunnel = TcpStream::connect(s.addresses.outbound).await.unwrap();
    tunnel
        .write_all(format!("CONNECT {partner} HTTP/1.1\r\nHost: {partner}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 256];
    let n = tunnel.read(&mut head).await.unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    tunnel
        .write_all(b"tls bytes would flow here")
        .await
        .unwrap();
    let mut back = [0u8; 64];
    let n = tunnel.read(&mut back).await.unwrap();
    assert_eq!(&back[..n], b"tls bytes would flow here");

    let other = free_port();
    let mut refused = TcpStream::connect(s.addresses.outbound).await.unwrap();
    refused
        .write_all(format!("CONNECT 127.0.0.1:{other} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let n = refused.read(&mut head).await.unwrap();
    let text = String::from_utf8_lossy(&head[..n]);
    assert!(
        text.starts_with("HTTP/1.1 403") && text.contains("forbidden"),
        "{text}"
    );
}
