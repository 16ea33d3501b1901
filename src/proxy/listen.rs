//! A data-plane listener before it serves: its `SO_REUSEPORT` sockets, one per worker, and
//! the HTTP settings (hyper's HTTP/1.1 and h2 builders, from `limits`) that
//! [`super::server`] serves its connections with.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Limits;
use crate::control::admin::{H2_PING_INTERVAL, H2_PING_TIMEOUT};

/// Binds `copies` listening sockets on `addr` sharing the port with `SO_REUSEPORT`.
///
/// A fixed port is first bound plainly, so that a port another process holds is an error,
/// not a silent share. Port 0 is left to the kernel by the first copy, whose port the
/// others then join: a port picked by a throwaway bind could be taken by someone else
/// before the copies bind it (seen as `AddrInUse` in parallel tests).
pub fn bind(addr: SocketAddr, copies: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let first = reuse_port_listener(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..copies.max(1) {
        listeners.push(reuse_port_listener(addr)?);
    }
    Ok(listeners)
}

fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// The HTTP server settings of a data-plane listener, for each way a connection is served.
#[derive(Clone)]
pub struct HttpSettings {
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
    /// Both of the above behind hyper-util's detection, for TLS connections.
    pub(super) auto: auto::Builder<TokioExecutor>,
    /// `limits.header_read_timeout`: a client that sends no first byte, or no whole request
    /// head, for this long is disconnected.
    pub(super) header_read_timeout: Duration,
    /// A parked connection with no new request for this long is closed.
    pub(super) keepalive_timeout: Duration,
}

/// The HTTP server settings of a data-plane listener.
pub fn http_builder(limits: &Limits) -> HttpSettings {
    let header_bytes = limits.max_header_bytes.as_usize();
    let header_list = u32::try_from(header_bytes).unwrap_or(u32::MAX);
    // hyper's builders and hyper-util's wrappers of them are different types with the same
    // setters (one cannot be made from the other): one list of settings applied to both.
    macro_rules! http1_settings {
        ($builder:expr) => {
            $builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout.get())
                .max_buf_size(header_bytes.max(8192))
        };
    }
    macro_rules! http2_settings {
        ($builder:expr) => {
            $builder
                .timer(TokioTimer::new())
                .max_header_list_size(header_list)
                .max_concurrent_streams(256)
                // A peer that is gone (or stuck) shows by a missed PING answer.
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                // RFC 8441: WebSocket (and other protocols) over an h2 stream.
                .enable_connect_protocol()
        };
    }
    let mut http1 = http1::Builder::new();
    http1_settings!(http1);
    // Plain HTTP/1.1 connections keep `header_read_timeout` on the ticks that park them
    // (`server::Conn::run_parkable`): hyper's own clock boxes and arms a timer for every
    // request head, about 1,100 instructions per request (docs/performance.md).
    http1.header_read_timeout(None);
    // The read buffer's limit alone let a 100 KiB head through a 64 KiB limit (a read may
    // fill the buffer's whole spare room; tests/hostile/h1.rs): the head's own size is
    // checked too. hyper-util's auto builder (TLS) has no such setter: there the bound is
    // the read buffer's.
    http1.max_header_size(header_bytes.max(8192));
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2_settings!(http2);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    http1_settings!(auto.http1());
    http2_settings!(auto.http2());
    HttpSettings {
        http1,
        http2,
        auto,
        header_read_timeout: limits.header_read_timeout.get(),
        keepalive_timeout: limits.keepalive_timeout.get(),
    }
}
