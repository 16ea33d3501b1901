//! Listeners: sockets bound once per worker with `SO_REUSEPORT` (the kernel spreads
//! connections over the workers), an accept loop per worker, HTTP/1.1 and h2c on the same
//! port, and graceful shutdown: stop accepting, let in-flight requests finish, bounded by
//! the grace period.
//!
//! A plain-TCP connection's protocol is told by *peeking* at its first bytes (the h2 client
//! preface, or not) and the socket then goes to hyper's HTTP/1.1 or h2 server directly.
//! hyper-util's auto-detection reads the first bytes instead and replays them through a
//! wrapper; the short first read that results makes hyper double every HTTP/1.1
//! connection's read buffer (8 → 16 KiB, held for the connection's life) and every later
//! read passes through the wrapper. TLS connections, which cannot be peeked, keep it.
//!
//! Plain HTTP/1.1 connections that go quiet between requests are parked without hyper's
//! buffers ([`super::park`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::header::UPGRADE;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::headers::connection_hints;
use super::listen::HttpSettings;
use super::park::{ConnState, OpenExchange, ParkableStream, ServedBody, PARK_AFTER};
use super::response_body::ResponseBody;
use crate::control::admin::{AcceptFailures, ConnectionCap, ConnectionSlot};
use crate::control::shutdown::Stopping;
use crate::control::Shutdown;
use crate::identity::PeerIdentity;

/// The address of the client connection a request came in on, in the request's
/// extensions (`req.extensions().get::<PeerAddr>()`) for a handler that asks
/// ([`Handler::PEER_ADDR`]): the TCP peer, before any TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// What a listener does with each request.
pub trait Handler: Send + Sync + 'static {
    /// Whether each request carries its connection's [`PeerAddr`]. The first extension
    /// costs a request allocations: only a handler that reads it asks (the inbound side,
    /// for `x-forwarded-for`), never the measured outbound path.
    const PEER_ADDR: bool = false;

    /// Answers one request; errors are already responses.
    fn handle(&self, req: Request<Incoming>)
        -> impl Future<Output = Response<ResponseBody>> + Send;
}

/// Serves `listener` with `handler` (behind TLS when `tls` is set) until shutdown begins,
/// then drains for at most `grace`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: HttpSettings,
    tls: Option<TlsAcceptor>,
    mut shutdown: Shutdown,
    grace: Duration,
    gauges: ListenerGauges,
) {
    let settings = Arc::new(settings);
    // Every connection holds a sender; once they are all gone, `drained` yields None.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    let mut failures = AcceptFailures::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        failures.pause(&e).await;
                        continue;
                    }
                };
                // Over `limits.max_connections`: closed at once (dropped), and counted.
                let Some(slot) = gauges.cap.admit() else { continue };
                let _ = stream.set_nodelay(true);
                let conn = Conn {
                    handler: handler.clone(),
                    peer: PeerAddr(peer),
                    settings: settings.clone(),
                    shutdown: shutdown.clone(),
                    gauges: gauges.clone(),
                    slot: Arc::new(slot),
                    _alive: alive.clone(),
                };
                match &tls {
                    None => {
                        tokio::spawn(conn.serve_tcp(stream));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // The handshake runs in the connection's task, never in the
                            // accept loop: a slow client cannot stall the listener.
                            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                            match handshake.await {
                                Ok(Ok(tls_stream)) => conn.serve_tls(tls_stream).await,
                                Ok(Err(e)) => tracing::debug!(error = %e, "inbound TLS handshake refused"),
                                Err(_) => tracing::debug!("inbound TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            () = shutdown.started() => break,
        }
    }
    drop(listener);
    drop(alive);
    tokio::select! {
        _ = drained.recv() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown grace period over; closing the connections left");
        }
    }
}

/// A listener's connection gauges and its connection cap.
#[derive(Clone, Debug)]
pub struct ListenerGauges {
    /// Client connections open.
    pub open: IntGauge,
    /// Of those, HTTP/1.1 connections parked between requests.
    pub parked: IntGauge,
    /// `limits.max_connections`, shared by every worker's copy of the listener.
    pub cap: ConnectionCap,
}

/// The h2 client preface: a connection that starts with it speaks h2c (prior knowledge).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection speaks h2c, told from its first bytes without reading them.
/// `None` when it sends nothing (or closes) within `limit`.
async fn speaks_h2(stream: &TcpStream, limit: Duration) -> Option<bool> {
    let sniff = async {
        let mut first = [0u8; 24];
        loop {
            let n = stream.peek(&mut first).await.ok()?;
            if n == 0 {
                return None;
            }
            if first[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            // Part of the preface so far (it is one write for every real client): peek
            // returns at once while nothing new arrived, so wait a moment between looks.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(limit, sniff).await.ok().flatten()
}

/// hyper's connection types, told to finish their in-flight requests and stop.
trait Drain {
    fn drain(self: Pin<&mut Self>);
}

impl<I, S> Drain for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S> Drain for http2::Connection<I, S, TokioExecutor>
where
    S: HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S> Drain for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<ServedBody>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    TokioExecutor: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, ServedBody>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// A listener's handler as a hyper service, for one client connection.
struct Service<H> {
    handler: Arc<H>,
    /// The connection's client, given to every request as an extension.
    peer: PeerAddr,
    /// The state parking (plain HTTP/1.1) and the idle timer (h2c, TLS) read.
    parkable: Option<Arc<ConnState>>,
    /// The connection's place under `limits.max_connections`.
    slot: Arc<ConnectionSlot>,
}

/// A connection's place under `limits.max_connections`, given to a request that may switch
/// protocols (`Upgrade`, `CONNECT`): the socket spliced or served by the hub after the
/// switch keeps counting until it closes, though hyper's connection (and its [`Conn`])
/// ends at the switch.
#[derive(Clone)]
pub struct ConnectionHold {
    _slot: Arc<ConnectionSlot>,
}

impl<H: Handler> hyper::service::Service<Request<Incoming>> for Service<H> {
    type Response = Response<ServedBody>;
    type Error = Infallible;
    /// Boxed while in flight: the handler's future is ~4 KiB (the whole policy stack inline;
    /// ~9 KiB before the dial paths were boxed). Unboxed, hyper's HTTP/1.1 server keeps a
    /// slot that size per connection for the connection's whole life, and its h2 server
    /// moves it by value several times while spawning each stream's task.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if H::PEER_ADDR {
            req.extensions_mut().insert(self.peer);
        }
        // One scan of the header names serves parking and this (no hashed lookup).
        let hints = self
            .parkable
            .as_ref()
            .map(|_| connection_hints(req.headers()));
        let may_switch = req.method() == Method::CONNECT
            || hints.map_or_else(|| req.headers().contains_key(UPGRADE), |h| h.upgrade);
        if may_switch {
            req.extensions_mut().insert(ConnectionHold {
                _slot: self.slot.clone(),
            });
        }
        let handler = self.handler.clone();
        let exchange = self
            .parkable
            .as_ref()
            .zip(hints)
            .map(|(conn, hints)| OpenExchange::start_with(conn, &req, hints));
        // Allocated first, then written: the future is built in the box. `Box::pin(fut)`
        // builds it on the stack and copies all of it.
        let slot: Box<std::mem::MaybeUninit<_>> = Box::new_uninit();
        let handling: Pin<Box<_>> = Box::into_pin(Box::write(slot, async move {
            let response = handler.handle(req).await;
            if let Some(exchange) = &exchange {
                exchange.answered(&response);
            }
            Ok(response.map(|body| ServedBody::new(body, exchange)))
        }));
        handling
    }
}

/// A TLS connection's service: each request also carries the client certificate's
/// [`PeerIdentity`] as an extension (an `Arc` cloned; plain connections never come here).
struct PeerService<H> {
    inner: Service<H>,
    peer: Option<PeerIdentity>,
}

impl<H: Handler> hyper::service::Service<Request<Incoming>> for PeerService<H> {
    type Response = Response<ServedBody>;
    type Error = Infallible;
    type Future = <Service<H> as hyper::service::Service<Request<Incoming>>>::Future;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(peer.clone());
        }
        self.inner.call(req)
    }
}

/// hyper's HTTP/1.1 connection over a parkable socket.
type Http1Conn<H> = http1::UpgradeableConnection<TokioIo<ParkableStream>, Service<H>>;

/// Why a connection was not parked.
enum ParkRefused<H: Handler> {
    /// hyper was not idle: it finishes its exchange, then closes.
    Busy(Pin<Box<Http1Conn<H>>>),
    /// The connection ended (an error, or already upgraded): nothing to keep.
    Ended,
}

/// Stops an idle hyper connection and takes its socket back. On an idle connection
/// hyper's graceful shutdown ends at the first poll without a byte written; one that does
/// not end there was busy and is handed back.
async fn try_park<H: Handler>(
    mut conn: Pin<Box<Http1Conn<H>>>,
    state: &ConnState,
) -> Result<ParkableStream, ParkRefused<H>> {
    let before = state.activity();
    state.set_parking(true);
    conn.as_mut().drain();
    let polled = std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await;
    state.set_parking(false);
    match polled {
        Poll::Pending => Err(ParkRefused::Busy(conn)),
        Poll::Ready(Ok(())) if state.activity() == before => {
            let parts = Pin::into_inner(conn)
                .into_parts()
                .ok_or(ParkRefused::Ended)?;
            let mut socket = parts.io.into_inner();
            socket.replay_first(parts.read_buf);
            Ok(socket)
        }
        Poll::Ready(_) => Err(ParkRefused::Ended),
    }
}

/// What one accepted connection needs.
struct Conn<H> {
    handler: Arc<H>,
    peer: PeerAddr,
    settings: Arc<HttpSettings>,
    shutdown: Shutdown,
    gauges: ListenerGauges,
    /// The connection's place under `limits.max_connections` (shared with an upgraded
    /// socket's task through [`ConnectionHold`]).
    slot: Arc<ConnectionSlot>,
    /// Dropped with the connection: the listener's drain waits for all of them.
    _alive: mpsc::Sender<()>,
}

impl<H: Handler> Conn<H> {
    fn service(&self, parkable: Option<&Arc<ConnState>>) -> Service<H> {
        Service {
            handler: self.handler.clone(),
            peer: self.peer,
            parkable: parkable.cloned(),
            slot: self.slot.clone(),
        }
    }

    /// A plain connection: HTTP/1.1 (with upgrades) or h2c, by its first bytes.
    async fn serve_tcp(self, stream: TcpStream) {
        self.gauges.open.inc();
        match speaks_h2(&stream, self.settings.header_read_timeout).await {
            // Boxed: hyper's h2 connection is large, and inline it would set the size of
            // every connection's task, parked HTTP/1.1 ones included.
            Some(true) => Box::pin(self.serve_h2(stream)).await,
            Some(false) => self.serve_http1(stream).await,
            None => tracing::debug!("client sent nothing; connection closed"),
        }
        self.gauges.open.dec();
    }

    /// A TLS connection: hyper-util tells HTTP/1.1 from h2. The service the verified
    /// client certificate names is read once here and given to each request.
    async fn serve_tls<I>(self, io: tokio_rustls::server::TlsStream<I>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.gauges.open.inc();
        let state = Arc::new(ConnState::default());
        let peer = PeerIdentity::from_certificates(io.get_ref().1.peer_certificates())
            .inspect_err(|e| tracing::debug!(error = %e, "TLS client names no service"))
            .ok();
        let service = PeerService {
            inner: self.service(Some(&state)),
            peer,
        };
        let settings = self.settings.clone();
        let conn = settings
            .auto
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        self.run(conn, Some(&state)).await;
        self.gauges.open.dec();
    }

    /// An h2c connection.
    async fn serve_h2(&self, stream: TcpStream) {
        let state = Arc::new(ConnState::default());
        let conn = self
            .settings
            .http2
            .serve_connection(TokioIo::new(stream), self.service(Some(&state)));
        self.run(conn, Some(&state)).await;
    }

    /// A plain HTTP/1.1 connection, parked between requests when it goes quiet.
    async fn serve_http1(&self, stream: TcpStream) {
        let state = Arc::new(ConnState::default());
        let mut socket = ParkableStream::new(stream, state.clone());
        // When hyper began waiting for the next request head (the head clock's start).
        let mut head_from = tokio::time::Instant::now();
        loop {
            let conn = self
                .settings
                .http1
                .serve_connection(TokioIo::new(socket), self.service(Some(&state)))
                .with_upgrades();
            // Boxed so that a parked connection's task does not keep room for it.
            let parked = self.run_parkable(Box::pin(conn), &state, head_from).await;
            let idle_since;
            (socket, idle_since) = match parked {
                Some(parked) => parked,
                None => return,
            };
            if socket.has_unread() {
                // Part of a head came in before the park: `header_read_timeout` still
                // runs from the end of the last exchange, not again from the next hyper
                // connection's start.
                head_from = idle_since;
                continue;
            }
            // Nothing of a next request yet: the keep-alive limit applies while parked;
            // once bytes arrive, the head clock starts again.
            self.gauges.parked.inc();
            let deadline = idle_since + self.settings.keepalive_timeout;
            let woken = self.wait_parked(&socket, deadline).await;
            self.gauges.parked.dec();
            if !woken {
                return; // dropping the socket closes it
            }
            head_from = tokio::time::Instant::now();
        }
    }

    /// Drives `conn` like [`Self::run`]; returns its socket instead when it was parked,
    /// with about when its last exchange ended (to a tick).
    ///
    /// `header_read_timeout` is kept here, not by hyper (whose clock arms a timer for every
    /// request head: [`http_builder`](super::listen::http_builder)): while no exchange is
    /// open hyper is waiting for a head, and a connection still waiting
    /// `header_read_timeout` after its last exchange ended (after `head_from` before its
    /// first) is closed, at the first tick past it.
    async fn run_parkable(
        &self,
        mut conn: Pin<Box<Http1Conn<H>>>,
        state: &ConnState,
        head_from: tokio::time::Instant,
    ) -> Option<(ParkableStream, tokio::time::Instant)> {
        let mut stopping = std::pin::pin!(self.stopping());
        let tick = tokio::time::sleep(PARK_AFTER);
        let mut tick = std::pin::pin!(tick);
        let finished_before = state.finished();
        let mut finished_seen = finished_before;
        let mut idle_since = head_from;
        let mut seen = state.activity();
        let mut may_park = true;
        let ended = loop {
            tokio::select! {
                ended = conn.as_mut() => break ended,
                () = &mut stopping => {
                    conn.as_mut().drain();
                    break conn.as_mut().await;
                }
                () = tick.as_mut(), if may_park => {
                    let at = tokio::time::Instant::now();
                    // An exchange ending shows as activity, so this tick never parks:
                    // the next one does at the earliest, with this time as the idle start.
                    if state.finished() != finished_seen {
                        finished_seen = state.finished();
                        idle_since = at;
                    }
                    let head_late = at >= idle_since + self.settings.header_read_timeout;
                    if head_late && state.open_exchanges() == 0 {
                        tracing::debug!("no request head within header_read_timeout; closing");
                        return None;
                    }
                    let now = state.activity();
                    if now == seen && state.between_requests(finished_before) {
                        match try_park(conn, state).await {
                            Ok(socket) => return Some((socket, idle_since)),
                            Err(ParkRefused::Busy(busy)) => {
                                // Not idle after all: it now closes after its exchange.
                                conn = busy;
                                may_park = false;
                            }
                            Err(ParkRefused::Ended) => return None,
                        }
                    } else {
                        seen = now;
                        tick.as_mut().reset(at + PARK_AFTER);
                    }
                }
            }
        };
        note_end(ended);
        None
    }

    /// Waits, without hyper, for a parked connection's next bytes; false when it should
    /// close instead (quiet until `deadline`, or shutting down).
    async fn wait_parked(&self, socket: &ParkableStream, deadline: tokio::time::Instant) -> bool {
        tokio::select! {
            readable = socket.socket().readable() => readable.is_ok(),
            () = tokio::time::sleep_until(deadline) => false,
            () = self.stopping() => false,
        }
    }

    /// Resolves once the listener is told to shut down.
    fn stopping(&self) -> Stopping {
        self.shutdown.stopping()
    }

    /// Drives `conn` to its end; on shutdown lets its in-flight requests finish first.
    /// With `idle`, a connection with no request open for `keepalive_timeout` is told to
    /// stop the same way (h2: GOAWAY; requests already open still finish).
    async fn run<C, E>(&self, conn: C, idle: Option<&ConnState>)
    where
        C: Future<Output = Result<(), E>> + Drain,
        E: std::fmt::Display,
    {
        let mut conn = std::pin::pin!(conn);
        let mut stopping = std::pin::pin!(self.stopping());
        let keepalive = self.settings.keepalive_timeout;
        let mut idle_timer = idle.map(|state| IdleTimer::new(state, keepalive));
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            () = &mut stopping => {
                conn.as_mut().drain();
                conn.await
            }
            () = idle_next(idle_timer.as_mut()) => {
                tracing::debug!(?keepalive, "connection idle past keepalive_timeout; closing");
                conn.as_mut().drain();
                conn.await
            }
        };
        note_end(ended);
    }
}

/// Watches a connection that is never parked (h2c, TLS) for `keepalive_timeout` with no
/// request open. It looks every eighth of that (not per request): a connection is told to
/// stop between `keepalive_timeout` and a quarter more after its last request ended.
struct IdleTimer<'a> {
    state: &'a ConnState,
    keepalive: Duration,
    tick: Duration,
    finished_seen: u64,
    idle_since: tokio::time::Instant,
}

impl<'a> IdleTimer<'a> {
    fn new(state: &'a ConnState, keepalive: Duration) -> Self {
        IdleTimer {
            state,
            keepalive,
            tick: (keepalive / 8).max(Duration::from_millis(5)),
            finished_seen: state.finished(),
            idle_since: tokio::time::Instant::now(),
        }
    }

    /// Resolves once the connection has had no request open for `keepalive`.
    async fn expired(&mut self) {
        loop {
            tokio::time::sleep(self.tick).await;
            let now = tokio::time::Instant::now();
            let finished = self.state.finished();
            if self.state.open_exchanges() > 0 || finished != self.finished_seen {
                self.finished_seen = finished;
                self.idle_since = now;
            } else if now.duration_since(self.idle_since) >= self.keepalive {
                return;
            }
        }
    }
}

/// `timer`'s expiry, or never without one.
async fn idle_next(timer: Option<&mut IdleTimer<'_>>) {
    match timer {
        Some(timer) => timer.expired().await,
        None => std::future::pending().await,
    }
}

/// Logs how a client connection ended, when with an error.
fn note_end<E: std::fmt::Display>(ended: Result<(), E>) {
    if let Err(e) = ended {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}
