//! The load client of `bench/grpc`: gRPC calls over one h2c connection (hyper's HTTP/2
//! client) at a fixed concurrency, with the latency of every message in an HdrHistogram.
//!
//! ```text
//! grpc_load --addr 127.0.0.1:PORT --authority origin --mode unary|stream
//!           --concurrency N --seconds S [--warmup S]
//! ```
//!
//! - `unary`: N tasks, each calling `/bench.Echo/Unary` in a loop; latency = request sent to
//!   trailers read (`grpc-status: 0` required).
//! - `stream`: N bidi streams on `/bench.Echo/Stream`, each a ping-pong loop; latency = one
//!   message sent to its echo read. Each stream is closed at the end and must finish with
//!   `grpc-status: 0`.
//!
//! Every loop stops at its deadline (warm-up + measured seconds); only messages sent after
//! the warm-up are recorded. One JSON line goes to stdout: counts, req/s over the measured
//! window, p50/p90/p99/p99.9/max in µs, and how many messages took over 1 ms. Run without `--addr` (as `cargo test
//! --all-targets` runs every bench target) it prints its usage and exits 0.

#[path = "grpc_frame.rs"]
mod frame;

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use http::{HeaderMap, HeaderValue, Request};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What stopped a run.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0}")]
    Usage(String),
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("h2: {0}")]
    H2(#[from] hyper::Error),
    #[error("request: {0}")]
    Http(#[from] http::Error),
    #[error("histogram: {0}")]
    Histogram(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Unary,
    Stream,
}

struct Options {
    addr: SocketAddr,
    authority: String,
    mode: Mode,
    concurrency: usize,
    seconds: f64,
    warmup: f64,
}

/// One task's share of the results.
struct Tally {
    latency: Histogram<u64>,
    /// Calls or streams that failed (transport error, non-200, grpc-status not 0).
    errors: u64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--addr") {
        eprintln!(
            "usage: grpc_load --addr 127.0.0.1:PORT --authority NAME --mode unary|stream \
             --concurrency N --seconds S [--warmup S]   (driven by bench/grpc)"
        );
        return ExitCode::SUCCESS;
    }
    let result = parse(&args).and_then(|options| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(run(&options))
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("grpc_load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<Options, LoadError> {
    let value = |name: &str| -> Result<&str, LoadError> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
            .ok_or_else(|| LoadError::Usage(format!("{name} needs a value")))
    };
    let number = |name: &str| -> Result<f64, LoadError> {
        value(name)?
            .parse::<f64>()
            .map_err(|e| LoadError::Usage(format!("{name}: {e}")))
    };
    let mode = match value("--mode")? {
        "unary" => Mode::Unary,
        "stream" => Mode::Stream,
        other => return Err(LoadError::Usage(format!("--mode {other}: unary or stream"))),
    };
    Ok(Options {
        addr: value("--addr")?
            .parse()
            .map_err(|e| LoadError::Usage(format!("--addr: {e}")))?,
        authority: value("--authority").unwrap_or("origin").to_owned(),
        mode,
        concurrency: value("--concurrency")?
            .parse()
            .map_err(|e| LoadError::Usage(format!("--concurrency: {e}")))?,
        seconds: number("--seconds")?,
        warmup: number("--warmup").unwrap_or(0.0),
    })
}

async fn run(o: &Options) -> Result<String, LoadError> {
    let start = Instant::now();
    let measured_from = start + Duration::from_secs_f64(o.warmup);
    let until = measured_from + Duration::from_secs_f64(o.seconds);
    let path = |method: &str| format!("http://{}/bench.Echo/{method}", o.authority);
    let mut tasks = Vec::with_capacity(o.concurrency);
    match o.mode {
        Mode::Unary => {
            let send = connect::<Full<Bytes>>(o.addr).await?;
            for _ in 0..o.concurrency {
                let (send, uri) = (send.clone(), path("Unary"));
                tasks.push(tokio::spawn(async move {
                    unary(send, &uri, measured_from, until).await
                }));
            }
        }
        Mode::Stream => {
            let send = connect::<ChannelBody>(o.addr).await?;
            for _ in 0..o.concurrency {
                let (send, uri) = (send.clone(), path("Stream"));
                tasks.push(tokio::spawn(async move {
                    bidi(send, &uri, measured_from, until).await
                }));
            }
        }
    }
    let mut all = histogram()?;
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(tally)) => {
                all.add(&tally.latency)
                    .map_err(|e| LoadError::Histogram(e.to_string()))?;
                errors += tally.errors;
            }
            Ok(Err(e)) => {
                eprintln!("grpc_load: a task stopped: {e}");
                errors += 1;
            }
            Err(e) => {
                eprintln!("grpc_load: a task panicked: {e}");
                errors += 1;
            }
        }
    }
    let q = |p: f64| all.value_at_quantile(p);
    Ok(serde_json::json!({
        "mode": match o.mode { Mode::Unary => "unary", Mode::Stream => "stream" },
        "concurrency": o.concurrency,
        "messages": all.len(),
        "errors": errors,
        "seconds": o.seconds,
        "rps": all.len() as f64 / o.seconds,
        "p50_us": q(0.5),
        "p90_us": q(0.9),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": all.max(),
        // Stalls: a proxy hop is tens of µs, so a message over 1 ms waited for a CPU.
        "over_1ms": all.count_between(1_000, u64::MAX),
    })
    .to_string())
}

/// One h2c connection (prior knowledge); every task multiplexes its calls over it.
async fn connect<B>(addr: SocketAddr) -> Result<SendRequest<B>, LoadError>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(conn);
    Ok(send)
}

fn histogram() -> Result<Histogram<u64>, LoadError> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| LoadError::Histogram(e.to_string()))
}

fn grpc_request<B>(uri: &str, body: B) -> Result<Request<B>, LoadError> {
    Ok(Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)?)
}

fn grpc_ok(trailers: Option<&HeaderMap>) -> bool {
    trailers.and_then(|t| t.get("grpc-status")) == Some(&HeaderValue::from_static("0"))
}

/// Unary calls back to back until `until`.
async fn unary(
    mut send: SendRequest<Full<Bytes>>,
    uri: &str,
    measured_from: Instant,
    until: Instant,
) -> Result<Tally, LoadError> {
    let message = frame::framed(frame::HELLO);
    let mut tally = Tally {
        latency: histogram()?,
        errors: 0,
    };
    loop {
        let sent = Instant::now();
        if sent >= until {
            return Ok(tally);
        }
        send.ready().await?;
        let req = grpc_request(uri, Full::new(message.clone()))?;
        let ok = match send.send_request(req).await {
            Ok(resp) if resp.status() == 200 => match resp.into_body().collect().await {
                Ok(body) => {
                    let ok = grpc_ok(body.trailers());
                    ok && body.to_bytes().len() >= 5
                }
                Err(_) => false,
            },
            _ => false,
        };
        if !ok {
            tally.errors += 1;
        } else if sent >= measured_from {
            tally.latency.saturating_record(micros(sent));
        }
    }
}

/// One bidi stream, ping-pong until `until`, then closed by the client.
async fn bidi(
    mut send: SendRequest<ChannelBody>,
    uri: &str,
    measured_from: Instant,
    until: Instant,
) -> Result<Tally, LoadError> {
    let message = frame::framed(frame::HELLO);
    let mut tally = Tally {
        latency: histogram()?,
        errors: 0,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    send.ready().await?;
    // The first message is queued before the call: the response headers may wait for it.
    let mut sent = Instant::now();
    if tx.send(message.clone()).await.is_err() {
        tally.errors += 1;
        return Ok(tally);
    }
    let resp = send
        .send_request(grpc_request(uri, ChannelBody(rx))?)
        .await?;
    if resp.status() != 200 {
        tally.errors += 1;
        return Ok(tally);
    }
    let mut body = resp.into_body();
    let mut pending = BytesMut::new();
    let mut trailers = None;
    loop {
        // Read until one whole echoed message is in; trailers or an error before it fail
        // the stream.
        while frame::take_message(&mut pending).is_none() {
            let Some(Ok(f)) = body.frame().await else {
                tally.errors += 1;
                return Ok(tally);
            };
            match f.into_data() {
                Ok(data) => pending.extend_from_slice(&data),
                Err(_) => {
                    tally.errors += 1;
                    return Ok(tally);
                }
            }
        }
        if sent >= measured_from {
            tally.latency.saturating_record(micros(sent));
        }
        sent = Instant::now();
        if sent >= until {
            break;
        }
        if tx.send(message.clone()).await.is_err() {
            tally.errors += 1;
            return Ok(tally);
        }
    }
    // Half-close, then the status must be OK.
    drop(tx);
    while trailers.is_none() {
        match body.frame().await {
            Some(Ok(f)) => trailers = f.into_trailers().ok(),
            _ => break,
        }
    }
    if !grpc_ok(trailers.as_ref()) {
        tally.errors += 1;
    }
    Ok(tally)
}

fn micros(since: Instant) -> u64 {
    // A latency is far below u64::MAX µs.
    since.elapsed().as_micros() as u64
}

/// A request body fed message by message; it ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}
