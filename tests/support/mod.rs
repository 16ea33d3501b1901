//! Test harness: a real `redis-server` per test (own port, own temp dir), real HTTP
//! upstreams on 127.0.0.1, in-process sidecars, a tiny HTTP client, and `eventually` for
//! state that changes in the background (no fixed sleeps where a signal exists).

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshlet::config::LoadedConfig;
use meshlet::sidecar::Sidecar;
use tokio::net::{TcpListener, TcpStream};

/// A redis-server of the test's own.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `appendonly yes` (with `appendfsync everysec`) instead of no persistence.
    appendonly: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// A redis-server that keeps its data in an append-only file in its temp dir
    /// (`appendfsync everysec`), for restarts that keep the data.
    pub fn start_appendonly() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(appendonly: bool) -> RedisServer {
        for _ in 0..20 {
            let mut server = RedisServer {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                appendonly,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                if self.appendonly { "yes" } else { "no" },
                "--appendfsync",
                "everysec",
                "--dir",
                self.dir.path().to_str().expect("utf-8 temp path"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (bash .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false; // port taken: exited at once
                }
            }
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, empty (nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    /// A graceful restart on the same port and dir: [`RedisServer::shutdown`], then
    /// [`RedisServer::start_again`]; with [`RedisServer::start_appendonly`] the data comes back.
    pub fn shutdown_and_restart(&mut self) {
        self.shutdown();
        self.start_again();
    }

    /// `SHUTDOWN`: Redis writes and fsyncs its append-only file (when it has one) and exits.
    pub fn shutdown(&mut self) {
        if let Ok(mut conn) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
            // The connection closes under the command: an error reply is the normal answer.
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut conn);
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("redis-server did not exit after SHUTDOWN within 10 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Starts again on the same port and dir (after [`RedisServer::shutdown`]).
    pub fn start_again(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Registers an instance the way docs/registry.md tells a non-meshlet service to.
pub fn register_by_hand(
    conn: &mut redis::Connection,
    service: &str,
    id: &str,
    addr: SocketAddr,
    ttl_ms: u64,
) {
    let now = now_ms();
    let key = format!("mesh:inst:{service}:{id}");
    let _: () = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(&key)
        .arg("host")
        .arg(addr.ip().to_string())
        .arg("port")
        .arg(addr.port())
        .arg("version")
        .arg("test")
        .arg("status")
        .arg("up")
        .arg("metadata")
        .arg("{}")
        .arg("registered_at")
        .arg(now)
        .arg("last_heartbeat")
        .arg(now)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(ttl_ms)
        .ignore()
        .cmd("ZADD")
        .arg(format!("mesh:svc:{service}"))
        .arg(now + ttl_ms)
        .arg(id)
        .ignore()
        .cmd("SADD")
        .arg("mesh:services")
        .arg(service)
        .ignore()
        .cmd("PUBLISH")
        .arg("mesh:changes")
        .arg(service)
        .ignore()
        .query(conn)
        .expect("register");
}

pub fn deregister_by_hand(conn: &mut redis::Connection, service: &str, id: &str) {
    let _: () = redis::pipe()
        .atomic()
        .cmd("ZREM")
        .arg(format!("mesh:svc:{service}"))
        .arg(id)
        .ignore()
        .cmd("DEL")
        .arg(format!("mesh:inst:{service}:{id}"))
        .ignore()
        .cmd("PUBLISH")
        .arg("mesh:changes")
        .arg(service)
        .ignore()
        .query(conn)
        .expect("deregister");
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

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
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let fail = req.uri().path().starts_with("/flaky")
                            && f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                n.checked_sub(1)
                            })
                            .is_ok();
                        upstream_answer(name, req, fail)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
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
) -> Result<Response<UpBody>, Infallible> {
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
        Ok(r)
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
        return Ok(r);
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunks = (0..n).step_by(64 * 1024).map(move |start| {
            let len = (n - start).min(64 * 1024);
            let chunk: Vec<u8> = (start..start + len).map(|i| (i % 251) as u8).collect();
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk)))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        return Ok(Response::new(body));
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

/// An in-process sidecar from YAML text; listeners on 127.0.0.1:0 unless the YAML says otherwise.
pub async fn sidecar(yaml: &str) -> Sidecar {
    let text = if yaml.contains("listen:") {
        yaml.to_owned()
    } else {
        format!("{yaml}\nlisten: {{outbound: 127.0.0.1:0, inbound: 127.0.0.1:0, api: 127.0.0.1:0, telemetry: 127.0.0.1:0}}\n")
    };
    let loaded = LoadedConfig::from_text(&text, "test.yaml").expect("valid test config");
    Sidecar::start(loaded).await.expect("sidecar starts")
}

/// An in-process sidecar from a config file (watched for changes, like `meshlet run`).
pub async fn sidecar_from_file(path: &std::path::Path) -> Sidecar {
    let loaded = LoadedConfig::from_file(path).expect("valid test config");
    Sidecar::start(loaded).await.expect("sidecar starts")
}

/// The listen line tests add so every listener takes a free port.
pub const FREE_PORTS: &str = "listen: {outbound: 127.0.0.1:0, inbound: 127.0.0.1:0, api: 127.0.0.1:0, telemetry: 127.0.0.1:0}\n";

/// One keep-alive HTTP/1.1 connection, for timing and ordering.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Answer {
        self.sender.ready().await.expect("connection ready");
        let resp = self.sender.send_request(req).await.expect("answered");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&mut self, url: &str) -> Answer {
        self.send(Request::get(url).body(Full::new(Bytes::new())).unwrap())
            .await
    }
}

/// The value of a metric line (exact labels as Prometheus prints them), 0 when absent.
pub async fn metric(telemetry: SocketAddr, series: &str) -> f64 {
    let text = get_host(telemetry, "x", "/metrics").await;
    String::from_utf8_lossy(&text.body)
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends one request over a fresh HTTP/1.1 connection to `addr`; `target` may be
/// absolute-form (`http://inventory/x`, proxy style) or origin-form.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Answer, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// GET through a proxy, HTTP_PROXY style.
pub async fn get_via(proxy: SocketAddr, url: &str) -> Answer {
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    send(proxy, req).await.expect("request answered")
}

/// GET `path` on `addr` with a Host header.
pub async fn get_host(addr: SocketAddr, host: &str, path: &str) -> Answer {
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, req).await.expect("request answered")
}

/// Polls `check` every 20 ms until it returns true or `within` passes; returns whether it did.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the sidecar's registry snapshot is loaded (readiness signal).
pub async fn until_ready(s: &Sidecar) {
    assert!(
        eventually(Duration::from_secs(10), || async { s.shared.is_ready() }).await,
        "sidecar did not become ready"
    );
}
