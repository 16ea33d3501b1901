//! Listeners: sockets bound once per worker with `SO_REUSEPORT` (the kernel spreads
//! connections over the workers), an accept loop per worker, HTTP/1.1 and h2c on the same
//! port, and graceful shutdown: stop accepting, let in-flight requests finish, bounded by
//! the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntGauge;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::body::ResponseBody;
use crate::config::Limits;

/// What a listener does with each request.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; errors are already responses.
    fn handle(&self, req: Request<Incoming>)
        -> impl Future<Output = Response<ResponseBody>> + Send;
}

/// Binds `copies` listening sockets on `addr` sharing the port with `SO_REUSEPORT`.
///
/// A plain bind comes first so that a port another process holds is an error, not a
/// silent share; it also resolves port 0 to the port every copy then binds.
pub fn bind(addr: SocketAddr, copies: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let probe = std::net::TcpListener::bind(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    (0..copies.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_tcp_nodelay(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(4096)?;
            Ok(socket.into())
        })
        .collect()
}

/// The HTTP server settings of a data-plane listener.
pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let header_bytes = limits.max_header_bytes.as_usize();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size(header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// Serves `listener` with `handler` (behind TLS when `tls` is set) until `shutdown` turns
/// true, then drains for at most `grace`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    open_connections: IntGauge,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = Conn {
                    handler: handler.clone(),
                    builder: builder.clone(),
                    graceful: graceful.watcher(),
                    gauge: open_connections.clone(),
                };
                match &tls {
                    None => conn.spawn(stream),
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // The handshake runs in the connection's task, never in the
                            // accept loop: a slow client cannot stall the listener.
                            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                            match handshake.await {
                                Ok(Ok(tls_stream)) => conn.spawn(tls_stream),
                                Ok(Err(e)) => tracing::debug!(error = %e, "inbound TLS handshake refused"),
                                Err(_) => tracing::debug!("inbound TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown grace period over; closing the connections left");
        }
    }
}

/// What one accepted connection needs.
struct Conn<H> {
    handler: Arc<H>,
    builder: auto::Builder<TokioExecutor>,
    graceful: hyper_util::server::graceful::Watcher,
    gauge: IntGauge,
}

impl<H: Handler> Conn<H> {
    fn spawn<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let handler = self.handler;
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            // Boxed: hyper's h2 server spawns each stream as a task that holds this future,
            // and spawning moves it by value several times. The call's future is large:
            // unboxed, those moves were ~80k instructions of memcpy per h2 request
            // (callgrind, bench/grpc), 40 % of all meshlet did for a unary gRPC call. The
            // box is allocated before the future is made so that it can be built in place:
            // `Box::pin(future)` built it on the stack and copied all of it (+10k per
            // HTTP/1 request).
            let slot = Box::new_uninit();
            Box::into_pin(Box::write(slot, async move {
                Ok::<_, Infallible>(handler.handle(req).await)
            }))
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let conn = self.graceful.watch(conn);
        let gauge = self.gauge;
        tokio::spawn(async move {
            gauge.inc();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            gauge.dec();
        });
    }
}
