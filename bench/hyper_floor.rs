//! The "floor" target of `bench/run`: the least an HTTP/1.1 reverse proxy built on hyper 1.x
//! can do, so the tables show where hyper and tokio themselves set the cost and what meshlet
//! adds above it (docs/performance.md, "Round two: the floor").
//!
//! One current_thread runtime, an accept loop, hyper's http1 server per connection, and for
//! each accepted connection its own hyper http1 client connection to the origin (no pool, no
//! policy, no logging, no metrics). Requests and responses pass through unchanged apart from
//! the hop-by-hop headers (RFC 9110 §7.6.1), which a proxy must not forward.
//!
//! `hyper_floor serve 127.0.0.1:PORT 127.0.0.1:ORIGIN_PORT` prints `listening ADDR` once bound
//! and serves until killed. Run without `serve` (as `cargo test --all-targets` runs every bench
//! target) it prints its usage and exits 0.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, origin) = match args.as_slice() {
        [cmd, listen, origin] if cmd == "serve" => match (listen.parse(), origin.parse()) {
            (Ok(listen), Ok(origin)) => (listen, origin),
            _ => {
                eprintln!("hyper_floor: bad address in {listen} {origin}");
                return ExitCode::FAILURE;
            }
        },
        _ => {
            eprintln!(
                "usage: hyper_floor serve 127.0.0.1:PORT 127.0.0.1:ORIGIN   (driven by bench/run)"
            );
            return ExitCode::SUCCESS;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hyper_floor: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A LocalSet: the per-connection state is Rc/RefCell, nothing crosses threads.
    match LocalSet::new().block_on(&runtime, serve(listen, origin)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, origin: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::task::spawn_local(connection(stream, origin));
    }
}

/// One client connection: dial the origin, then serve every request over that one upstream.
async fn connection(client: TcpStream, origin: SocketAddr) {
    // Both sides answer small requests: without TCP_NODELAY a response could wait on Nagle.
    if client.set_nodelay(true).is_err() {
        return;
    }
    let upstream = match dial(origin).await {
        Ok(upstream) => upstream,
        Err(e) => {
            eprintln!("hyper_floor: origin {origin}: {e}");
            return;
        }
    };
    let upstream = Rc::new(RefCell::new(upstream));
    // service_fn rather than a Service impl: its future is the closure's own type, not a box.
    let service = service_fn(move |req| forward(Rc::clone(&upstream), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

async fn dial(origin: SocketAddr) -> Result<SendRequest<Incoming>, DialError> {
    let stream = TcpStream::connect(origin).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The client connection's I/O runs as its own task; it ends when `sender` is dropped.
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Http(#[from] hyper::Error),
}

type ProxyBody = Either<Incoming, Empty<Bytes>>;

/// Forwards one request over the connection's upstream. HTTP/1 serves one request at a
/// time per connection, so the sender is never wanted by two requests at once; the borrow
/// lasts one poll at a time, never across an await.
async fn forward(
    upstream: Rc<RefCell<SendRequest<Incoming>>>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    strip_hop_by_hop(req.headers_mut());
    if poll_fn(|cx| upstream.borrow_mut().poll_ready(cx))
        .await
        .is_err()
    {
        return Ok(bad_gateway());
    }
    let sent = upstream.borrow_mut().send_request(req);
    match sent.await {
        Ok(mut resp) => {
            strip_hop_by_hop(resp.headers_mut());
            Ok(resp.map(Either::Left))
        }
        Err(_) => Ok(bad_gateway()),
    }
}

fn bad_gateway() -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Empty::new()));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

/// Removes the hop-by-hop headers. One pass over the names first: the common request has
/// none, and then nothing is hashed or removed.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let any = headers.keys().any(|name| {
        matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
        )
    });
    if !any {
        return;
    }
    // Headers that `Connection` names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}
