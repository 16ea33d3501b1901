//! Idle HTTP/1.1 client connections, parked without hyper's buffers.
//!
//! hyper's HTTP/1.1 server keeps its read buffer (8 KiB at least), its write buffer and
//! the connection's state for as long as the connection lives, busy or idle: ~14 KiB per
//! keep-alive connection, most of meshlet's memory when thousands of app connections sit in
//! client pools. nginx frees a connection's buffers when it goes idle; meshlet does the
//! same by *parking*: a plain HTTP/1.1 connection whose exchanges are all finished and
//! which moved no byte for a [`PARK_AFTER`] tick is stopped with hyper's graceful shutdown
//! (on an idle connection that ends at once and writes nothing), its socket is taken back
//! (the socket's own shutdown is skipped, see [`ParkableStream`]) and hyper's state is
//! dropped. The connection's task then waits for the socket to turn readable and serves it
//! with a fresh hyper connection, bytes hyper had already read handed back first.
//!
//! Parking is decided on the connection's own tick, never per request: a busy connection
//! does not park, and the price on the request path is a counter per read, write and
//! response.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::headers::{connection_hints, ConnectionHints};
use super::response_body::{BodyError, ResponseBody};

/// How long a finished connection stays quiet before it is parked: long enough that a
/// client in a request loop never sees it, short enough that pools of idle connections
/// cost little soon after a burst.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// What a connection's task reads to decide whether the connection is idle; written by
/// its socket wrapper and its responses.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Reads and writes that moved bytes.
    activity: AtomicU64,
    /// Requests handed to the handler whose response body hyper still holds.
    open_exchanges: AtomicU32,
    /// Response bodies hyper has let go of (written whole, or given up).
    finished_exchanges: AtomicU64,
    /// The last write found the socket full: hyper still holds bytes to send.
    write_blocked: AtomicBool,
    /// Set while a park is tried: hyper's shutdown of the socket is then skipped.
    parking: AtomicBool,
    /// An exchange ended keep-alive (`connection: close`, HTTP/1.0, an upgrade, CONNECT):
    /// hyper closes the connection once the request body is in, and until then its
    /// graceful shutdown would stop it mid-body. Such a connection is never parked.
    closing: AtomicBool,
    /// The latest request came with `transfer-encoding`: when it also had a
    /// `content-length`, hyper removed that header and ends keep-alive without a sign the
    /// handler can see, so it counts as closing until the next request head shows that
    /// hyper read the body whole and kept the connection.
    body_unsure: AtomicBool,
}

impl ConnState {
    /// The activity count, to compare with the one a tick earlier.
    pub fn activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    /// Requests whose response body hyper still holds.
    pub fn open_exchanges(&self) -> u32 {
        self.open_exchanges.load(Ordering::Relaxed)
    }

    /// Responses finished so far.
    pub fn finished(&self) -> u64 {
        self.finished_exchanges.load(Ordering::Relaxed)
    }

    /// Whether hyper is waiting for a next request with nothing left to send: every
    /// exchange is finished, at least one since `finished_before` (a fresh hyper connection
    /// counts as busy until its first exchange ends) and no write is pending.
    pub fn between_requests(&self, finished_before: u64) -> bool {
        self.open_exchanges.load(Ordering::Relaxed) == 0
            && self.finished() > finished_before
            && !self.write_blocked.load(Ordering::Relaxed)
            && !self.closing.load(Ordering::Relaxed)
            && !self.body_unsure.load(Ordering::Relaxed)
    }

    /// While set, hyper's shutdown of the socket does nothing (the socket is kept).
    pub fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }

    fn note_activity(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request between the handler's call and hyper dropping its response body.
#[derive(Debug)]
pub struct OpenExchange(Arc<ConnState>);

impl OpenExchange {
    /// Counts `request` in (the tests' form; the server reads the hints once itself).
    #[cfg(test)]
    pub fn start<B>(conn: &Arc<ConnState>, request: &Request<B>) -> Self {
        OpenExchange::start_with(conn, request, connection_hints(request.headers()))
    }

    /// Counts `request`, whose [`ConnectionHints`] were read already, in.
    pub fn start_with<B>(
        conn: &Arc<ConnState>,
        request: &Request<B>,
        hints: ConnectionHints,
    ) -> Self {
        conn.open_exchanges.fetch_add(1, Ordering::Relaxed);
        let keeps_alive = request.version() == Version::HTTP_11
            && request.method() != Method::CONNECT
            && !hints.close;
        if !keeps_alive {
            conn.closing.store(true, Ordering::Relaxed);
        }
        conn.body_unsure
            .store(hints.transfer_encoding, Ordering::Relaxed);
        OpenExchange(conn.clone())
    }

    /// Notes the answer: one that ends keep-alive marks the connection closing.
    pub fn answered<B>(&self, response: &Response<B>) {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            || connection_hints(response.headers()).close
        {
            self.0.closing.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for OpenExchange {
    fn drop(&mut self) {
        self.0.open_exchanges.fetch_sub(1, Ordering::Relaxed);
        self.0.finished_exchanges.fetch_add(1, Ordering::Relaxed);
    }
}

/// The body hyper sends a client: the response's, plus the exchange it ends (HTTP/1.1
/// over plain TCP only; `None` elsewhere).
#[derive(Debug)]
pub struct ServedBody {
    body: ResponseBody,
    _exchange: Option<OpenExchange>,
}

impl ServedBody {
    /// `body`, ending `exchange` when hyper drops it.
    pub fn new(body: ResponseBody, exchange: Option<OpenExchange>) -> Self {
        ServedBody {
            body,
            _exchange: exchange,
        }
    }
}

impl Body for ServedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client socket as hyper sees it: counts the bytes' comings and goings for
/// [`ConnState`], replays what a parked hyper connection had read, and skips hyper's
/// shutdown while a park is tried (so the socket stays open to be served again).
#[derive(Debug)]
pub struct ParkableStream {
    stream: TcpStream,
    /// Read by the previous hyper connection and not yet parsed.
    unread: Bytes,
    state: Arc<ConnState>,
}

impl ParkableStream {
    /// `stream`, reporting to `state`.
    pub fn new(stream: TcpStream, state: Arc<ConnState>) -> Self {
        ParkableStream {
            stream,
            unread: Bytes::new(),
            state,
        }
    }

    /// Hands `bytes` (read by a parked hyper connection) to the next one first.
    pub fn replay_first(&mut self, bytes: Bytes) {
        // hyper's leftover is a view into its whole read buffer, which it would keep
        // alive even when empty: copied, and only when there is something.
        if bytes.is_empty() {
            return;
        }
        self.unread = if self.unread.is_empty() {
            Bytes::copy_from_slice(&bytes)
        } else {
            [&self.unread[..], &bytes[..]].concat().into()
        };
    }

    /// Whether bytes are already waiting for the next hyper connection.
    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// The socket, to wait on while parked.
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for ParkableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() != before {
            this.state.note_activity();
        }
        polled
    }
}

impl ParkableStream {
    fn note_write(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) => {
                self.state.write_blocked.store(false, Ordering::Relaxed);
                if *n > 0 {
                    self.state.note_activity();
                }
            }
            Poll::Ready(Err(_)) => {}
            Poll::Pending => self.state.write_blocked.store(true, Ordering::Relaxed),
        }
    }
}

impl AsyncWrite for ParkableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_write_into_a_full_socket_keeps_the_connection_from_parking() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let state = Arc::new(ConnState::default());
        let mut socket = ParkableStream::new(server, state.clone());
        let exchange = OpenExchange::start(&state, &Request::new(()));
        assert!(!state.between_requests(0), "an exchange is open");
        drop(exchange);
        assert!(state.between_requests(0));
        assert!(!state.between_requests(1), "none finished since the 1st");

        // The client reads nothing: writes go through until the socket is full.
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        let full = std::future::poll_fn(|cx| {
            for _ in 0..10_000 {
                match Pin::new(&mut socket).poll_write(cx, &chunk) {
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Ready(Ok(true)),
                }
            }
            Poll::Ready(Ok(false))
        })
        .await
        .unwrap();
        assert!(full, "the socket filled up after {written} bytes");
        assert!(state.activity() > 0);
        assert!(!state.between_requests(0), "bytes still to send");

        // Once the client reads, the next write goes through and the flag clears.
        let mut client = client;
        let mut sink = vec![0u8; 1 << 20];
        let mut drained = 0;
        while drained < written {
            drained += client.read(&mut sink).await.unwrap();
        }
        tokio::io::AsyncWriteExt::write_all(&mut socket, b"x")
            .await
            .unwrap();
        assert!(state.between_requests(0));
    }

    #[test]
    fn an_exchange_that_ends_keep_alive_keeps_the_connection_from_parking() {
        let get = || Request::get("/").body(()).unwrap();
        let finished = |request: Request<()>, response: Response<()>| {
            let state = Arc::new(ConnState::default());
            let exchange = OpenExchange::start(&state, &request);
            exchange.answered(&response);
            drop(exchange);
            state.between_requests(0)
        };
        assert!(finished(get(), Response::new(())));
        let close = Request::get("/")
            .header("connection", "keep-alive, Close")
            .body(())
            .unwrap();
        assert!(!finished(close, Response::new(())));
        let http10 = Request::get("/")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        assert!(!finished(http10, Response::new(())));
        let connect = Request::connect("example:443").body(()).unwrap();
        assert!(!finished(connect, Response::new(())));
        let chunked = || {
            Request::post("/")
                .header("transfer-encoding", "chunked")
                .body(())
                .unwrap()
        };
        assert!(!finished(chunked(), Response::new(())));
        let switching = Response::builder().status(101).body(()).unwrap();
        assert!(!finished(get(), switching));
        let closing = Response::builder()
            .header("connection", "close")
            .body(())
            .unwrap();
        assert!(!finished(get(), closing));

        // A chunked request is judged by the next request head: once hyper parsed one,
        // the body before it was read whole on a kept connection.
        let state = Arc::new(ConnState::default());
        drop(OpenExchange::start(&state, &chunked()));
        assert!(!state.between_requests(0));
        drop(OpenExchange::start(&state, &get()));
        assert!(state.between_requests(1));
    }
}
