//! gRPC over h2c through meshlet, against a minimal gRPC server (real h2 framing,
//! trailers): messages and trailers pass whole, statuses are counted, only the named ones
//! are retried, the client's deadline caps meshlet's budget, a bidi stream is never held.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::support::*;
use crate::tokio_stream_from;

struct GrpcServer {
    addr: SocketAddr,
    unavailable_left: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    _server: Server,
}

type GrpcBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn grpc_server() -> GrpcServer {
    let unavailable_left = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (u, c) = (unavailable_left.clone(), calls.clone());
    let server = serve(Http::H2, move |req: Request<Incoming>| {
        let (u, c) = (u.clone(), c.clone());
        async move { grpc_answer(req, &u, &c).await }
    })
    .await;
    GrpcServer {
        addr: server.addr,
        unavailable_left,
        calls,
        _server: server,
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
    messages_and_trailers_pass_whole(out).await;
    only_named_statuses_are_retried(out, &server).await;
    the_clients_deadline_caps_the_budget(out).await;
    a_bidi_stream_is_not_held_back(out).await;

    let a = grpc_call(out, "http://nowhere/svc/Method", b"x", &[]).await;
    assert_eq!(
        (a.status, a.grpc_status().as_str()),
        (200, "12"),
        "no_route → UNIMPLEMENTED"
    );
    assert_eq!(a.headers["x-mesh-error"], "no_route");
    statuses_are_counted(s.addresses.telemetry).await;
}

async fn messages_and_trailers_pass_whole(out: SocketAddr) {
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
}

async fn only_named_statuses_are_retried(out: SocketAddr, server: &GrpcServer) {
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
}

async fn the_clients_deadline_caps_the_budget(out: SocketAddr) {
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
}

/// A bidi stream through a destination that retries gRPC codes is not held back waiting
/// for the request to end: each message comes back before the next is sent.
async fn a_bidi_stream_is_not_held_back(out: SocketAddr) {
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
}

async fn statuses_are_counted(t: SocketAddr) {
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
