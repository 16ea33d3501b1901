//! Protocols end to end with real peers: WebSocket through outbound and inbound, gRPC over
//! h2c (trailers, statuses, deadlines, retries), streamed responses, CONNECT, `Via`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

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

/// Two meshlets on one Redis registry: `web` (the caller) and `chat` in front of an app
/// (`chat_service`: the rest of its `service:` entry); `extra` is appended to both configs.
async fn caller_and_chat(
    redis: &RedisServer,
    chat_service: &str,
    extra: &str,
) -> (meshlet::sidecar::Sidecar, meshlet::sidecar::Sidecar) {
    let registry = format!(
        "workers: 1\nregistry: {{redis: \"{}\"}}\n{extra}",
        redis.url()
    );
    let callee = sidecar(&format!(
        "service: {{name: chat, {chat_service}}}\n{registry}"
    ))
    .await;
    let caller = sidecar(&format!("service: {{name: web}}\n{registry}")).await;
    (caller, callee)
}

#[tokio::test]
async fn websocket_passes_through_outbound_and_inbound_and_idles_out() {
    let echo = websocket_echo().await;
    let redis = RedisServer::start();
    let limits = "limits: {idle_timeout: 400ms}\n";
    let (caller, callee) =
        caller_and_chat(&redis, &format!("app: \"http://{echo}\""), limits).await;
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

// ---- gRPC over h2c: a minimal gRPC server (real h2 framing, trailers) ----

struct GrpcServer {
    addr: SocketAddr,
    unavailable_left: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

type GrpcBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn grpc_server() -> GrpcServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let unavailable_left = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (u, c) = (unavailable_left.clone(), calls.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (u, c) = (u.clone(), c.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (u, c) = (u.clone(), c.clone());
                    async move { Ok::<_, Infallible>(grpc_answer(req, &u, &c).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    GrpcServer {
        addr,
        unavailable_left,
        calls,
    }
}

fn trailers_only(status: u32, message: &'static str) -> Response<GrpcBody> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    r.headers_mut().insert("grpc-status", status.into());
    r.headers_mut()
        .insert("grpc-message", message.parse().unwrap());
    r
}

async fn grpc_answer(
    req: Request<Incoming>,
    unavailable_left: &AtomicUsize,
    calls: &AtomicUsize,
) -> Response<GrpcBody> {
    calls.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    if path.ends_with("/Flaky")
        && unavailable_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return trailers_only(14, "try again");
    }
    if path.ends_with("/Slow") {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    if path.ends_with("/Denied") {
        return trailers_only(7, "not you");
    }
    if path.ends_with("/Chat") {
        // Bidi streaming: every message goes back the moment it arrives.
        let mut r = Response::new(BodyExt::boxed(req.into_body().map_err(|_| unreachable!())));
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        return r;
    }
    // Echo every message back, then trailers with custom metadata.
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("x-echo-bytes", body.len().into());
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(body)),
        Ok(Frame::trailers(trailers)),
    ];
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
        frames,
    ))));
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    r
}

/// A length-prefixed gRPC message.
fn grpc_message(payload: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

struct GrpcAnswer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl GrpcAnswer {
    fn grpc_status(&self) -> String {
        let from = |h: &HeaderMap| h.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
        self.trailers
            .as_ref()
            .and_then(from)
            .or_else(|| from(&self.headers))
            .unwrap_or_default()
    }
}

async fn grpc_call(
    proxy: SocketAddr,
    url: &str,
    payload: &[u8],
    extra: &[(&str, &str)],
) -> GrpcAnswer {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(8 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(grpc_message(payload))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    GrpcAnswer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

#[tokio::test]
async fn grpc_calls_keep_trailers_get_grpc_errors_deadlines_and_named_retries() {
    let server = grpc_server().await;
    let s = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{greeter: [\"h2://{}\"]}}}}\nservices:\n  greeter: {{timeout: 5s, retry: {{attempts: 3, backoff: 5ms, on: [connect-failure, unavailable]}}}}\n",
        server.addr
    ))
    .await;
    let out = s.addresses.outbound;

    let a = grpc_call(
        out,
        "http://greeter/helloworld.Greeter/SayHello",
        b"hi",
        &[],
    )
    .await;
    assert_eq!((a.status, a.grpc_status().as_str()), (200, "0"));
    assert_eq!(&a.body[5..], b"hi");
    assert_eq!(
        a.trailers.as_ref().unwrap()["x-echo-bytes"],
        "7",
        "trailers and metadata pass untouched"
    );

    let big = vec![42u8; 4 * 1024 * 1024];
    let a = grpc_call(out, "http://greeter/helloworld.Greeter/Big", &big, &[]).await;
    assert_eq!(a.grpc_status(), "0");
    assert_eq!(
        a.body.len(),
        big.len() + 5,
        "a 4 MiB message goes through whole"
    );

    server.unavailable_left.store(2, Ordering::SeqCst);
    let before = server.calls.load(Ordering::SeqCst);
    let a = grpc_call(out, "http://greeter/helloworld.Greeter/Flaky", b"x", &[]).await;
    assert_eq!(
        a.grpc_status(),
        "0",
        "UNAVAILABLE retried because it is named"
    );
    assert_eq!(a.headers["x-mesh-attempts"], "3");
    assert_eq!(server.calls.load(Ordering::SeqCst) - before, 3);

    let a = grpc_call(out, "http://greeter/helloworld.Greeter/Denied", b"x", &[]).await;
    assert_eq!(
        (
            a.grpc_status().as_str(),
            a.headers["x-mesh-attempts"].to_str().unwrap()
        ),
        ("7", "1"),
        "not named: not retried, passed as is"
    );

    let started = Instant::now();
    let a = grpc_call(
        out,
        "http://greeter/helloworld.Greeter/Slow",
        b"x",
        &[("grpc-timeout", "200m")],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "the client's deadline caps meshlet's budget"
    );
    assert_eq!(
        (a.status, a.grpc_status().as_str()),
        (200, "4"),
        "DEADLINE_EXCEEDED from meshlet"
    );
    assert_eq!(a.headers["grpc-message"], "timeout");

    // A bidi stream through a destination that retries gRPC codes is not held back
    // waiting for the request to end: each message comes back before the next is sent.
    let stream = TcpStream::connect(out).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = Request::post("http://greeter/chat.Room/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(2), async {
        tx.send(Ok(Frame::data(grpc_message(b"one"))))
            .await
            .unwrap();
        sender.send_request(req).await.unwrap()
    })
    .await
    .expect("response headers while the request is still open");
    let mut replies = resp.into_body();
    for word in [&b"one"[..], b"two", b"three"] {
        if word != b"one" {
            tx.send(Ok(Frame::data(grpc_message(word)))).await.unwrap();
        }
        let frame = tokio::time::timeout(Duration::from_secs(2), replies.frame())
            .await
            .expect("each message echoed before the next is sent")
            .unwrap()
            .unwrap();
        assert_eq!(&frame.into_data().unwrap()[5..], word);
    }
    drop(tx);

    let a = grpc_call(out, "http://nowhere/svc/Method", b"x", &[]).await;
    assert_eq!(
        (a.status, a.grpc_status().as_str()),
        (200, "12"),
        "no_route → UNIMPLEMENTED"
    );
    assert_eq!(a.headers["x-mesh-error"], "no_route");
    let t = s.addresses.telemetry;
    let series = |code: &str| {
        format!(
            r#"meshlet_grpc_responses_total{{destination="greeter",direction="outbound",grpc_status="{code}"}}"#
        )
    };
    let dump = String::from_utf8_lossy(&get_host(t, "x", "/metrics").await.body)
        .lines()
        .filter(|l| l.contains("grpc"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        metric(t, &series("0")).await >= 3.0,
        "OK statuses counted from the trailers: {dump}"
    );
    assert_eq!(
        metric(t, &series("7")).await,
        1.0,
        "trailers-only PERMISSION_DENIED counted"
    );
    assert_eq!(
        metric(t, &series("4")).await,
        1.0,
        "meshlet's own DEADLINE_EXCEEDED counted"
    );
}

#[tokio::test]
async fn streamed_responses_arrive_as_written_and_outlive_the_call_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    let events = futures_util::stream::unfold(0u32, |i| async move {
                        if i == 5 {
                            return None;
                        }
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                        }
                        let chunk = Bytes::from(format!("data: event {i}\n\n"));
                        Some((Ok::<_, Infallible>(Frame::data(chunk)), i + 1))
                    });
                    let mut r = Response::new(StreamBody::new(events));
                    r.headers_mut()
                        .insert("content-type", "text/event-stream".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let s = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{feed: [\"{addr}\"]}}}}\nservices:\n  feed: {{timeout: 300ms}}\n"
    ))
    .await;
    let stream = TcpStream::connect(s.addresses.outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let resp = sender
        .send_request(
            Request::get("http://feed/events")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push((started.elapsed(), data));
        }
    }
    let text: String = arrivals
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).to_string())
        .collect();
    assert_eq!(text.matches("data: event").count(), 5, "{text}");
    assert!(
        arrivals[0].0 < Duration::from_millis(150),
        "first event came before the stream ended: {:?}",
        arrivals[0].0
    );
    assert!(
        arrivals.last().unwrap().0 >= Duration::from_millis(550),
        "the 300ms call timeout does not cut the stream"
    );
    assert!(
        arrivals.len() >= 4,
        "events arrived one by one, not buffered whole"
    );
}

/// An h2c app that accepts RFC 8441 extended CONNECT for `websocket` and echoes the
/// stream's bytes.
async fn h2_tunnel_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    let protocol = req.extensions().get::<hyper::ext::Protocol>();
                    let wanted = req.method() == http::Method::CONNECT
                        && protocol.is_some_and(|p| p.as_str() == "websocket");
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    if !wanted {
                        *resp.status_mut() = http::StatusCode::BAD_REQUEST;
                        return Ok::<_, Infallible>(resp);
                    }
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = upgrade.await else { return };
                        let mut io = TokioIo::new(upgraded);
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    Ok(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .enable_connect_protocol()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
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
    let chat = format!("app: \"http://{app}\", protocol: h2");
    let (caller, callee) = caller_and_chat(&redis, &chat, "").await;
    let out = caller.addresses.outbound;
    assert!(
        eventually(Duration::from_secs(10), || async {
            get_via(out, "http://chat/").await.status == 400
        })
        .await,
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
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{chat: [\"{app}\"]}}}}\n"
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

/// An HTTP/1.1 app with two streams: `/stall` writes one event then goes silent;
/// `/drain` answers headers at once and writes `got N` only after the whole request body.
async fn stalling_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    type Chunks = std::pin::Pin<
                        Box<
                            dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>
                                + Send,
                        >,
                    >;
                    let chunks: Chunks = if req.uri().path() == "/stall" {
                        let first = futures_util::stream::iter([Ok(Frame::data(Bytes::from(
                            "data: first\n\n",
                        )))]);
                        Box::pin(first.chain(futures_util::stream::pending()))
                    } else {
                        let mut body = req.into_body();
                        Box::pin(futures_util::stream::once(async move {
                            let mut n = 0;
                            while let Some(Ok(frame)) = body.frame().await {
                                n += usize::from(frame.is_data());
                            }
                            Ok(Frame::data(Bytes::from(format!("got {n}"))))
                        }))
                    };
                    Ok::<_, Infallible>(Response::new(StreamBody::new(chunks)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_stream_silent_both_ways_for_idle_timeout_is_cut_and_one_still_moving_is_not() {
    let app = stalling_app().await;
    let s = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nlimits: {{idle_timeout: 400ms}}\nregistry: {{static: {{feed: [\"{app}\"]}}}}\nservices:\n  feed: {{timeout: 200ms, retry: {{attempts: 1}}}}\n"
    ))
    .await;

    // Silent after its first event: cut after the idle timeout, not by the call timeout.
    let stream = TcpStream::connect(s.addresses.outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let req = Request::get("http://feed/stall")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    let end = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("an idle stream is cut, not left open");
    let cut_after = started.elapsed();
    assert!(
        matches!(end, Some(Err(_)) | None),
        "the stream ends without more data: {end:?}"
    );
    assert!(
        cut_after >= Duration::from_millis(400),
        "not before idle_timeout: {cut_after:?}"
    );

    // A silent response whose request body keeps moving is not idle: 6 chunks 150 ms
    // apart (900 ms, over twice the idle timeout), then the app answers.
    let stream = TcpStream::connect(s.addresses.outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    tokio::spawn(async move {
        for i in 0..6 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if tx
                .send(Ok(Frame::data(Bytes::from(format!("chunk {i}")))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let req = Request::post("http://feed/drain")
        .body(StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "headers come before the request ends");
    let whole = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("answered")
        .expect("not cut: the request side was moving");
    assert_eq!(&whole.to_bytes()[..], b"got 6");
}

#[tokio::test]
async fn connect_tunnels_only_to_egress_destinations() {
    // A plain TCP echo standing in for an HTTPS partner.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let partner = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
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

/// An mpsc receiver as a stream (no extra crate needed).
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
