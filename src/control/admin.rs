//! The control plane's small HTTP server, behind the telemetry listener (`/metrics`,
//! `/healthz/live`, `/healthz/ready`) and the local API (`/v1/...`). It serves a plain
//! router; the routes live with what they show (the sidecar, events, the hub). It never
//! touches the request path.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::control::Shutdown;
use crate::wire::AnswerBody;

/// A boxed response future (the local API's event and realtime routes talk to Redis).
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<AnswerBody>> + Send>>;

/// A router: request in, response future out.
pub type Router = Arc<dyn Fn(Request<Incoming>) -> ResponseFuture + Send + Sync>;

/// Serves `router` on `listener` until shutdown begins.
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: Shutdown) {
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
            () = shutdown.started() => return,
        }
    }
}
