//! A recording app: an in-process HTTP server on 127.0.0.1 (HTTP/1.1 or h2c) that records
//! every request it gets and answers with the status the test asks for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use super::server::{serve_on, Http, Server};

/// One request the app received, read whole.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the app had read the whole request.
    pub at: Instant,
}

impl RecordedRequest {
    /// The header's value, "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the app got a body that is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What a [`RecordingApp`] received, in arrival order; cheap to clone into a task.
#[derive(Clone, Default)]
pub struct Recording(Arc<Mutex<Vec<RecordedRequest>>>);

impl Recording {
    pub fn all(&self) -> Vec<RecordedRequest> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The requests whose header `name` is `value`.
    pub fn with_header(&self, name: &str, value: &str) -> Vec<RecordedRequest> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|r| r.header(name) == value)
            .cloned()
            .collect()
    }

    /// How many different values header `name` took (without copying what was recorded).
    pub fn distinct(&self, name: &str) -> usize {
        let all = self.0.lock().unwrap();
        all.iter()
            .map(|r| r.header(name))
            .collect::<std::collections::HashSet<&str>>()
            .len()
    }

    fn push(&self, request: RecordedRequest) {
        self.0.lock().unwrap().push(request);
    }
}

/// Chooses the status of each answer from the request.
type Answerer = dyn Fn(&RecordedRequest) -> u16 + Send + Sync;

/// An app on 127.0.0.1 that records every request and answers `{}` with the status its
/// answerer picks (after a pause, when [`RecordingApp::slow`] set one). Stops when dropped.
pub struct RecordingApp {
    pub addr: SocketAddr,
    pub recording: Recording,
    answerer: Arc<Mutex<Arc<Answerer>>>,
    delay_ms: Arc<AtomicU64>,
    _server: Server,
}

impl RecordingApp {
    /// An app that answers every request 200.
    pub async fn ok() -> RecordingApp {
        RecordingApp::answering(|_| 200).await
    }

    /// An app that answers each request with `status(request)`.
    pub async fn answering(
        status: impl Fn(&RecordedRequest) -> u16 + Send + Sync + 'static,
    ) -> RecordingApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        RecordingApp::serve(listener, Arc::new(status))
    }

    /// An app answering 200 on a chosen port (one that was refusing connections until now).
    pub async fn ok_on(addr: SocketAddr) -> RecordingApp {
        let listener = TcpListener::bind(addr).await.expect("bind app");
        RecordingApp::serve(listener, Arc::new(|_: &RecordedRequest| 200))
    }

    fn serve(listener: TcpListener, answerer: Arc<Answerer>) -> RecordingApp {
        let recording = Recording::default();
        let answerer = Arc::new(Mutex::new(answerer));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (rec, ans, del) = (recording.clone(), answerer.clone(), delay_ms.clone());
        let handler = move |req: Request<Incoming>| {
            let (rec, ans, del) = (rec.clone(), ans.clone(), del.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let request = RecordedRequest {
                    method: parts.method,
                    path: parts.uri.path().to_owned(),
                    headers: parts.headers,
                    body,
                    at: Instant::now(),
                };
                let answer = ans.lock().unwrap().clone();
                let status = answer(&request);
                rec.push(request);
                let pause = del.load(Ordering::SeqCst);
                if pause > 0 {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                resp
            }
        };
        let server = serve_on(listener, Http::Auto, handler);
        RecordingApp {
            addr: server.addr,
            recording,
            answerer,
            delay_ms,
            _server: server,
        }
    }

    /// From now on, answers with `status(request)`.
    pub fn answer_with(&self, status: impl Fn(&RecordedRequest) -> u16 + Send + Sync + 'static) {
        *self.answerer.lock().unwrap() = Arc::new(status);
    }

    /// Every answer waits this long (the app is slow).
    pub fn slow(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.recording.all()
    }

    pub fn count(&self) -> usize {
        self.recording.count()
    }
}
