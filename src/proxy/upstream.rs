//! Upstream connections: a connection pool per worker thread, on hyper's low-level client
//! API. Each worker owns its pool (no lock, no cross-thread wakeups); connections are keyed
//! by the endpoint's process-unique `key`, so a checkout is one integer hash, not a hash of
//! the authority string. HTTP/1.1 connections are reused one request at a time; an h2
//! connection is shared by every request to its endpoint.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::request_body::RequestBody;
use crate::config::Protocol;
use crate::policy::balance::Endpoint;
use crate::telemetry::metrics::TableMap;

/// Idle HTTP/1.1 connections kept per endpoint and worker: enough for every connection a
/// busy worker holds at once (closing released ones only to dial again costs more).
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// An idle connection older than this is closed rather than reused. Below the default
/// `limits.keepalive_timeout` (60 s) of the meshlet on the other end, so that this side
/// lets go first and never reuses a connection just as the peer closes it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Why a request did not get a response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed: the request was never sent (safe to retry for any method).
    #[error("connect to {authority} failed: {source}")]
    Connect {
        /// Endpoint.
        authority: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TCP connect did not finish in time: the request was never sent.
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    /// The HTTP handshake (h2 preface) failed: the request was never sent.
    #[error("handshake with {authority} failed: {source}")]
    Handshake {
        /// Endpoint.
        authority: String,
        /// Cause.
        source: hyper::Error,
    },
    /// The TLS handshake failed (bad certificate, wrong name): the request was never sent.
    #[error("TLS with {authority} failed: {source}")]
    Tls {
        /// Endpoint.
        authority: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The connection broke after the request was (possibly) sent.
    #[error("request to {authority} failed: {source}")]
    Reset {
        /// Endpoint.
        authority: String,
        /// Cause.
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// The request never left meshlet.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout(_)
                | UpstreamError::Handshake { .. }
                | UpstreamError::Tls { .. }
        )
    }
}

/// The pool's maps, keyed by endpoint key.
type KeyMap<V> = TableMap<u64, V>;

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    http1: KeyMap<Vec<Idle>>,
    h2: KeyMap<http2::SendRequest<RequestBody>>,
    /// One connect at a time per h2 endpoint: concurrent first requests share it.
    h2_connecting: KeyMap<Arc<tokio::sync::Mutex<()>>>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A checked-out HTTP/1.1 connection; put back with [`release`] once its response ended.
pub struct Http1Lease {
    key: u64,
    sender: http1::SendRequest<RequestBody>,
}

impl std::fmt::Debug for Http1Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Lease")
            .field("key", &self.key)
            .finish()
    }
}

/// Returns a connection whose response has been read to the end.
pub fn release(lease: Http1Lease) {
    if lease.sender.is_closed() {
        return;
    }
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let idle = pool.http1.entry(lease.key).or_default();
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle {
                sender: lease.sender,
                since: Instant::now(),
            });
        }
    });
}

fn checkout_http1(key: u64) -> Option<http1::SendRequest<RequestBody>> {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let idle = pool.http1.get_mut(&key)?;
        let now = Instant::now();
        // Oldest release first: a connection goes back at the end of its response body,
        // a moment before hyper marks it ready, so the newest one is often not ready yet.
        // Skip those (they stay) rather than dial: dialling under load churns connections.
        let mut i = 0;
        while i < idle.len() {
            let entry = &idle[i];
            if entry.sender.is_closed() || now - entry.since > IDLE_TIMEOUT {
                idle.swap_remove(i);
                continue;
            }
            if entry.sender.is_ready() {
                return Some(idle.swap_remove(i).sender);
            }
            i += 1;
        }
        None
    })
}

/// Drops closed and expired idle connections of this worker (run periodically).
pub fn sweep() {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let now = Instant::now();
        pool.http1.retain(|_, idle| {
            idle.retain(|e| !e.sender.is_closed() && now - e.since <= IDLE_TIMEOUT);
            !idle.is_empty()
        });
        pool.h2.retain(|_, s| !s.is_closed());
        // A gate someone holds or waits on is a connect in progress: dropping it would let
        // the next request dial a second connection beside it. Any other gate is dropped;
        // the next first request to its endpoint makes a new one.
        pool.h2_connecting
            .retain(|_, gate| Arc::strong_count(gate) > 1);
    });
}

/// The lock every first request to an h2 endpoint takes, so that they share one connect.
fn h2_connect_gate(key: u64) -> Arc<tokio::sync::Mutex<()>> {
    POOL.with(|p| p.borrow_mut().h2_connecting.entry(key).or_default().clone())
}

fn pooled_h2(key: u64) -> Option<http2::SendRequest<RequestBody>> {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        match pool.h2.get(&key) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                pool.h2.remove(&key);
                None
            }
            None => None,
        }
    })
}

async fn connect_h2(
    endpoint: &Endpoint,
    connect_timeout: Duration,
) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
    let stream = tcp(endpoint, connect_timeout).await?;
    let sender = match &endpoint.tls {
        None => handshake_h2(endpoint, TokioIo::new(stream)).await?,
        Some(tls) => {
            let authority = endpoint.authority.to_string();
            let tls_stream = tokio::time::timeout(connect_timeout, tls.connect(stream))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout(authority.clone()))?
                .map_err(|source| UpstreamError::Tls { authority, source })?;
            handshake_h2(endpoint, TokioIo::new(tls_stream)).await?
        }
    };
    POOL.with(|p| p.borrow_mut().h2.insert(endpoint.key, sender.clone()));
    Ok(sender)
}

async fn handshake_h2<T>(
    endpoint: &Endpoint,
    io: T,
) -> Result<http2::SendRequest<RequestBody>, UpstreamError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(io)
        .await
        .map_err(|source| UpstreamError::Handshake {
            authority: endpoint.authority.to_string(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream h2 connection closed with an error");
        }
    });
    Ok(sender)
}

/// A connection ready to take one request.
pub enum Conn {
    /// An HTTP/1.1 connection, pooled or new.
    Http1(http1::SendRequest<RequestBody>),
    /// A shared h2 connection with a stream slot free.
    H2(http2::SendRequest<RequestBody>),
}

/// Gets a connection to `endpoint`: a pooled one, else a new one. The request is not
/// built yet, so a failure here leaves its body untouched and any method may retry.
pub async fn connect(
    endpoint: &Endpoint,
    connect_timeout: Duration,
) -> Result<Conn, UpstreamError> {
    match endpoint.protocol {
        Protocol::Http1 => match checkout_http1(endpoint.key) {
            Some(sender) => Ok(Conn::Http1(sender)),
            // Dialling is the cold path under keep-alive, and its future (connect, TLS,
            // handshake) is large: boxed, so every request's future stays small.
            None => Box::pin(connect_http1(endpoint, connect_timeout))
                .await
                .map(Conn::Http1),
        },
        Protocol::H2 => {
            let mut sender = match pooled_h2(endpoint.key) {
                Some(s) => s,
                None => {
                    let gate = h2_connect_gate(endpoint.key);
                    let _connecting = gate.lock().await;
                    match pooled_h2(endpoint.key) {
                        Some(s) => s,
                        None => Box::pin(connect_h2(endpoint, connect_timeout)).await?,
                    }
                }
            };
            sender
                .ready()
                .await
                .map_err(|source| UpstreamError::Handshake {
                    authority: endpoint.authority.to_string(),
                    source,
                })?;
            Ok(Conn::H2(sender))
        }
    }
}

/// Sends `req` on `conn`. For HTTP/1.1 the lease comes back with the response and must be
/// released after the body is read, so the connection can be reused.
pub async fn send(
    endpoint: &Endpoint,
    conn: Conn,
    req: Request<RequestBody>,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Option<Http1Lease>), UpstreamError> {
    let reset = |source| UpstreamError::Reset {
        authority: endpoint.authority.to_string(),
        source,
    };
    match conn {
        Conn::H2(mut sender) => sender
            .send_request(req)
            .await
            .map(|r| (r, None))
            .map_err(reset),
        Conn::Http1(mut sender) => {
            // A pooled connection may have been closed by the peer a moment ago; hyper hands
            // the request back untouched when it could not be written, and a new one takes it.
            let req = match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok((
                        resp,
                        Some(Http1Lease {
                            key: endpoint.key,
                            sender,
                        }),
                    ))
                }
                Err(mut e) => match e.take_message() {
                    Some(back) => back,
                    None => return Err(reset(e.into_error())),
                },
            };
            let mut sender = Box::pin(connect_http1(endpoint, connect_timeout)).await?;
            let resp = sender.send_request(req).await.map_err(reset)?;
            Ok((
                resp,
                Some(Http1Lease {
                    key: endpoint.key,
                    sender,
                }),
            ))
        }
    }
}

async fn tcp(endpoint: &Endpoint, connect_timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let authority = endpoint.authority.as_str();
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(authority.to_owned()))?
        .map_err(|source| UpstreamError::Connect {
            authority: authority.to_owned(),
            source,
        })?;
    // Small requests and responses must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect_http1(
    endpoint: &Endpoint,
    connect_timeout: Duration,
) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
    let stream = tcp(endpoint, connect_timeout).await?;
    match &endpoint.tls {
        None => handshake_http1(endpoint, TokioIo::new(stream)).await,
        Some(tls) => {
            let authority = endpoint.authority.to_string();
            let tls_stream = tokio::time::timeout(connect_timeout, tls.connect(stream))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout(authority.clone()))?
                .map_err(|source| UpstreamError::Tls { authority, source })?;
            handshake_http1(endpoint, TokioIo::new(tls_stream)).await
        }
    }
}

async fn handshake_http1<T>(
    endpoint: &Endpoint,
    io: T,
) -> Result<http1::SendRequest<RequestBody>, UpstreamError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| UpstreamError::Handshake {
            authority: endpoint.authority.to_string(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection closed with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate_of(key: u64) -> Option<Arc<tokio::sync::Mutex<()>>> {
        POOL.with(|p| p.borrow().h2_connecting.get(&key).cloned())
    }

    #[test]
    fn a_sweep_keeps_the_gate_of_a_connect_in_progress_and_drops_an_unused_one() {
        let connecting = h2_connect_gate(7);
        sweep();
        let kept = gate_of(7).expect("the gate of a connect in progress stays");
        assert!(
            Arc::ptr_eq(&kept, &connecting),
            "later requests wait on the same connect"
        );
        drop((kept, connecting));
        sweep();
        assert!(
            gate_of(7).is_none(),
            "no connection, nobody waiting: dropped"
        );
    }
}
