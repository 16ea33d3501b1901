//! The control plane's small HTTP server, behind the telemetry listener (`/metrics`,
//! `/healthz/live`, `/healthz/ready`) and the local API (`/v1/...`). It serves a plain
//! router; the routes live with what they show (the sidecar, events, the hub). It never
//! touches the request path.
//!
//! Each listener holds at most [`MAX_CONNECTIONS`] connections, bounds a request head by
//! `limits.max_header_bytes` and times connections out as the data plane does
//! (docs/config.md, `limits`): a client that sends nothing for
//! `header_read_timeout` is disconnected, an HTTP/1.1 connection waiting for its next
//! request head longer than that is closed by hyper, and any connection (h2 included) with
//! no request in flight for `keepalive_timeout` is told to stop (h2: GOAWAY). The
//! connection cap ([`ConnectionCap`]) and the pause after a failed accept
//! ([`ACCEPT_PAUSE`]) are the data plane's too.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Limits;
use crate::control::Shutdown;
use crate::wire::AnswerBody;

/// A boxed response future (the local API's event and realtime routes talk to Redis).
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<AnswerBody>> + Send>>;

/// A router: request in, response future out.
pub type Router = Arc<dyn Fn(Request<Incoming>) -> ResponseFuture + Send + Sync>;

/// Connections open at once on the local API and on the telemetry listener, each.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long an accept loop waits after a failed accept (out of file descriptors, say)
/// before it tries again: open connections go on being served, and once descriptors are
/// free again the listener accepts again, without spinning meanwhile.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// How often a listener that keeps failing to accept says so.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(5);

/// A listener's accept failures (out of descriptors and the like): each pauses the accept
/// loop for [`ACCEPT_PAUSE`] instead of spinning, and they are logged at most once per
/// [`ACCEPT_WARN_EVERY`] with the count since the last line (without this, descriptors
/// used up for 4 s wrote 191 identical warnings).
#[derive(Debug, Default)]
pub struct AcceptFailures {
    warned_at: Option<std::time::Instant>,
    unreported: u64,
}

impl AcceptFailures {
    /// Notes `error`, logs when due, and waits out the pause.
    pub async fn pause(&mut self, error: &std::io::Error) {
        self.unreported += 1;
        let due = self
            .warned_at
            .is_none_or(|at| at.elapsed() >= ACCEPT_WARN_EVERY);
        if due {
            tracing::warn!(%error, failures = self.unreported, "accept failed; pausing the listener's accepts");
            self.warned_at = Some(std::time::Instant::now());
            self.unreported = 0;
        }
        tokio::time::sleep(ACCEPT_PAUSE).await;
    }
}

/// An h2 connection with no frame from the client for this long is sent a PING.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// An h2 connection whose PING is not answered within this long is closed.
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// At most `max` connections at once on one listener (for a data-plane listener, all its
/// workers' copies): one atomic add per accepted connection and one subtract when it
/// closes, nothing per request.
#[derive(Clone, Debug)]
pub struct ConnectionCap {
    open: Arc<AtomicUsize>,
    max: usize,
    /// Connections closed at accept because `max` were open.
    refused: IntCounter,
}

impl ConnectionCap {
    /// A cap of `max` open connections; refusals counted in `refused`.
    pub fn new(max: usize, refused: IntCounter) -> Self {
        ConnectionCap {
            open: Arc::new(AtomicUsize::new(0)),
            max,
            refused,
        }
    }

    /// A slot for one more connection, held until the connection closes; `None` (and
    /// counted) when `max` are open: the caller drops the socket, which closes it.
    pub fn admit(&self) -> Option<ConnectionSlot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.inc();
            tracing::debug!(
                max = self.max,
                "connection refused: the listener's limit is open"
            );
            return None;
        }
        Some(ConnectionSlot(self.open.clone()))
    }
}

/// One admitted connection: gives its slot back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How one control-plane listener serves its connections.
#[derive(Clone)]
pub struct Listener {
    builder: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    keepalive_timeout: Duration,
    cap: ConnectionCap,
    /// `meshlet_open_connections{listener}`.
    open: IntGauge,
}

impl Listener {
    /// The data plane's timeouts from `limits`, at most [`MAX_CONNECTIONS`] connections;
    /// `open` and `refused` are the listener's series of the connection families.
    pub fn new(limits: &Limits, open: IntGauge, refused: IntCounter) -> Self {
        // `limits.max_header_bytes` bounds a request head here as on the data plane (hyper's
        // own default read buffer is 400 KiB).
        let header_bytes = limits.max_header_bytes.as_usize();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout.get())
            .max_buf_size(header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        Listener {
            builder,
            header_read_timeout: limits.header_read_timeout.get(),
            keepalive_timeout: limits.keepalive_timeout.get(),
            cap: ConnectionCap::new(MAX_CONNECTIONS, refused),
            open,
        }
    }
}

/// Serves `router` on `listener` until shutdown begins.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Listener,
    mut shutdown: Shutdown,
) {
    let settings = Arc::new(settings);
    let mut failures = AcceptFailures::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        failures.pause(&e).await;
                        continue;
                    }
                };
                let Some(slot) = settings.cap.admit() else { continue };
                tokio::spawn(serve_connection(stream, router.clone(), settings.clone(), slot));
            }
            () = shutdown.started() => return,
        }
    }
}

/// Requests of one connection: in flight, and done so far.
#[derive(Default)]
struct Requests {
    in_flight: AtomicU32,
    done: AtomicU64,
}

/// Counts a request done when dropped (answered, or given up by hyper).
struct InFlight(Arc<Requests>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    settings: Arc<Listener>,
    _slot: ConnectionSlot,
) {
    settings.open.inc();
    let _ = stream.set_nodelay(true);
    // hyper-util reads the first bytes to tell HTTP/1.1 from h2 without a clock of its
    // own: a client that sends nothing is cut here after `header_read_timeout`.
    let mut first = [0u8; 1];
    let first = tokio::time::timeout(settings.header_read_timeout, stream.peek(&mut first));
    if matches!(first.await, Ok(Ok(1..))) {
        let requests = Arc::new(Requests::default());
        let counted = requests.clone();
        let service = hyper::service::service_fn(move |req| {
            counted.in_flight.fetch_add(1, Ordering::Relaxed);
            let in_flight = InFlight(counted.clone());
            let resp = router(req);
            async move {
                let resp = resp.await;
                drop(in_flight);
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = settings
            .builder
            .serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = idle(&requests, settings.keepalive_timeout) => {
                tracing::debug!("control-plane connection idle past keepalive_timeout; closing");
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
    settings.open.dec();
}

/// Resolves once `requests` has had nothing in flight for `keepalive` (looked at every
/// eighth of it).
async fn idle(requests: &Requests, keepalive: Duration) {
    let tick = (keepalive / 8).max(Duration::from_millis(5));
    let mut done_seen = requests.done.load(Ordering::Relaxed);
    let mut idle_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = tokio::time::Instant::now();
        let done = requests.done.load(Ordering::Relaxed);
        if requests.in_flight.load(Ordering::Relaxed) > 0 || done != done_seen {
            done_seen = done;
            idle_since = now;
        } else if now.duration_since(idle_since) >= keepalive {
            return;
        }
    }
}
