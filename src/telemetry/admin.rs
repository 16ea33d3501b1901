//! The control plane's small HTTP servers: the telemetry listener (`/metrics`,
//! `/healthz/live`, `/healthz/ready`) and the local API (`/v1/config`, `/v1/registry`).
//! Both are plain routers; they never touch the request path.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::body::ResponseBody;

/// A boxed response future (the local API's event and realtime routes talk to Redis).
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>;

/// A router: request in, response future out.
pub type Router = Arc<dyn Fn(Request<Incoming>) -> ResponseFuture + Send + Sync>;

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let router = router.clone();
                let service = hyper::service::service_fn(move |req| {
                    let resp = router(req);
                    async move { Ok::<_, Infallible>(resp.await) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut body = value.to_string().into_bytes();
    body.push(b'\n');
    respond(status, "application/json", Bytes::from(body))
}

/// A response with a body and content type.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// 404 for any path (or method) the router does not serve.
pub fn not_found(req: &Request<Incoming>) -> Response<ResponseBody> {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not_found", "message": format!("no {} {}", req.method(), req.uri().path())}),
    )
}

/// Whether `req` is a GET (or HEAD) of exactly `path`.
pub fn is_get(req: &Request<Incoming>, path: &str) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD) && req.uri().path() == path
}
