//! A small HTTP server on 127.0.0.1 for the tests' apps and peers: one handler, served over
//! HTTP/1.1, h2c or either, one task per connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// The HTTP a [`serve`]d connection speaks.
#[derive(Clone, Copy, Debug)]
pub enum Http {
    /// HTTP/1.1 only.
    H1,
    /// h2c only (prior knowledge).
    H2,
    /// h2c with RFC 8441 extended CONNECT enabled.
    H2Connect,
    /// HTTP/1.1 or h2c, whichever the client speaks.
    Auto,
}

/// A server started by [`serve`] or [`serve_on`]; its accept loop stops when it is dropped
/// (connections already open go on).
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handler` on a fresh port of 127.0.0.1; the port is bound before this returns.
pub async fn serve<F, Fut, B>(http: Http, handler: F) -> Server
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a test server");
    serve_on(listener, http, handler)
}

/// Serves `handler` on `listener`.
pub fn serve_on<F, Fut, B>(listener: TcpListener, http: Http, handler: F) -> Server
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = listener.local_addr().expect("server address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(stream, http, handler.clone()));
        }
    });
    Server { addr, task }
}

/// Serves one accepted connection (plain TCP, or TLS a test set up) until it ends.
pub async fn serve_connection<I, F, Fut, B>(io: I, http: Http, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = hyper::service::service_fn(move |req| {
        let answer = handler(req);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let io = TokioIo::new(io);
    // A connection that ends in an error (a client gone mid-request) just ends.
    let _ = match http {
        Http::H1 => hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string()),
        Http::H2 => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string()),
        Http::H2Connect => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .enable_connect_protocol()
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string()),
        Http::Auto => hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string()),
    };
}
