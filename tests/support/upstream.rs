//! The general-purpose upstream most proxy tests call through.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::net::TcpListener;

use super::server::{serve_connection, Http};

/// A real HTTP upstream on 127.0.0.1 with a few behaviours chosen by path:
/// `/status/{code}`, `/slow/{ms}`, `/echo` (streams the request body back),
/// `/bytes/{n}` (streams n bytes), anything else: JSON with its name and the request head.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    /// `/flaky` answers 503 while this is above zero (and counts it down).
    pub failures_left: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let failures_left = Arc::new(AtomicUsize::new(0));
        let (r, c, f) = (requests.clone(), connections.clone(), failures_left.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, f) = (r.clone(), f.clone());
                let answer = move |req: Request<Incoming>| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let fail = req.uri().path().starts_with("/flaky")
                        && f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                    upstream_answer(name, req, fail)
                };
                tokio::spawn(serve_connection(stream, Http::Auto, answer));
            }
        });
        Upstream {
            addr,
            name,
            requests,
            connections,
            failures_left,
            task,
        }
    }

    pub fn stop(&self) {
        self.task.abort();
    }

    /// The next `n` requests to `/flaky...` answer 503.
    pub fn fail_next(&self, n: usize) {
        self.failures_left.store(n, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn upstream_answer(
    name: &'static str,
    req: Request<Incoming>,
    fail: bool,
) -> Response<UpBody> {
    let path = req.uri().path().to_owned();
    let full = |status: u16, body: String| {
        let mut r = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static(name));
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    if fail {
        return full(503, format!("{{\"upstream\":\"{name}\",\"failed\":true}}"));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return full(
            code.parse().unwrap_or(500),
            format!("{{\"upstream\":\"{name}\"}}"),
        );
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        return full(
            200,
            format!("{{\"upstream\":\"{name}\",\"slept_ms\":{ms}}}"),
        );
    }
    if path == "/echo" || path == "/flaky/echo" {
        let body = req.into_body().map_err(std::io::Error::other).boxed();
        let mut r = Response::new(body);
        r.headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static(name));
        return r;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunks = (0..n).step_by(64 * 1024).map(move |start| {
            let len = (n - start).min(64 * 1024);
            let chunk: Vec<u8> = (start..start + len).map(|i| (i % 251) as u8).collect();
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk)))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        return Response::new(body);
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::from(v.to_str().unwrap_or("")),
            )
        })
        .collect();
    let body = serde_json::json!({
        "upstream": name,
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "headers": headers,
    });
    full(200, body.to_string())
}
