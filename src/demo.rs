//! The embedded demo: an upstream that answers every request with a small JSON echo, so
//! `meshlet demo` shows a call going through meshlet with nothing else installed.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::wire::answer::{self, AnswerBody};

/// The default config `meshlet demo` runs with: the static registry maps `demo` to the
/// demo upstream.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

/// Where the demo upstream listens (the address `config/demo.yaml` names).
pub const DEMO_UPSTREAM: &str = "127.0.0.1:18080";

/// Serves the echo upstream on `addr` forever.
pub async fn serve_upstream(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                Ok::<_, Infallible>(echo(&req))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn echo(req: &Request<Incoming>) -> Response<AnswerBody> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let body = serde_json::json!({
        "hello": "from the demo upstream, through meshlet",
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "host": header("host"),
        "x-request-id": header("x-request-id"),
    });
    answer::json(http::StatusCode::OK, &body)
}
