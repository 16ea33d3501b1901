//! The origin of `bench/grpc`: a small, fast gRPC server on hyper's HTTP/2 server alone
//! (h2c with prior knowledge, one thread).
//!
//! - `POST /bench.Echo/Unary`: reads the request, answers the fixed `HELLO` message and
//!   `grpc-status: 0` trailers.
//! - `POST /bench.Echo/Stream`: a bidi stream; every whole message that arrives is sent
//!   straight back, and `grpc-status: 0` follows when the client ends its side.
//! - anything else: trailers-only `grpc-status: 12` (UNIMPLEMENTED).
//!
//! `grpc_origin serve 127.0.0.1:PORT` prints `listening ADDR` once bound and serves until
//! killed. Run without `serve` (as `cargo test --all-targets` runs every bench target) it
//! prints its usage and exits 0.

#[path = "grpc_frame.rs"]
mod frame;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = match args.as_slice() {
        [cmd, addr] if cmd == "serve" => match addr.parse() {
            Ok(addr) => addr,
            Err(e) => {
                eprintln!("grpc_origin: bad address {addr}: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => {
            eprintln!("usage: grpc_origin serve 127.0.0.1:PORT   (driven by bench/grpc)");
            return ExitCode::SUCCESS;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("grpc_origin: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grpc_origin: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
        });
    }
}

type OriginBody = Either<Reply, Echo>;

async fn answer(req: Request<Incoming>) -> Result<Response<OriginBody>, Infallible> {
    let body = match req.uri().path() {
        "/bench.Echo/Unary" => {
            // The request is read whole (a unary call is one message) before answering.
            let _ = req.into_body().collect().await;
            Either::Left(Reply {
                data: Some(frame::framed(frame::HELLO)),
                trailers: Some(ok_trailers()),
            })
        }
        "/bench.Echo/Stream" => Either::Right(Echo {
            incoming: req.into_body(),
            pending: BytesMut::new(),
            trailers: Some(ok_trailers()),
        }),
        _ => {
            let mut resp = Response::new(Either::Left(Reply {
                data: None,
                trailers: None,
            }));
            let headers = resp.headers_mut();
            headers.insert("content-type", HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from_static("12"));
            return Ok(resp);
        }
    };
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    Ok(resp)
}

/// The trailers of a successful call: `grpc-status: 0`.
fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

/// A unary answer: one data frame, then the trailers.
struct Reply {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// A bidi echo: each whole message of the request body goes back as soon as it is in.
struct Echo {
    incoming: Incoming,
    /// Bytes of a message not yet complete.
    pending: BytesMut,
    trailers: Option<HeaderMap>,
}

impl Body for Echo {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            if let Some(message) = frame::take_message(&mut self.pending) {
                return Poll::Ready(Some(Ok(Frame::data(message))));
            }
            match ready!(Pin::new(&mut self.incoming).poll_frame(cx)) {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                // The client ended its side: end ours with the status.
                None => return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t)))),
            }
        }
    }
}
