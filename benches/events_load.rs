//! The load side of `bench/events` (not a Criterion benchmark: `harness = false`, run by the
//! script with a subcommand). Each subcommand prints one JSON line on stdout:
//!
//! - `redis-loop`: the bare Redis figure. XADD at a fixed rate on one connection, a
//!   consumer group read with `XREADGROUP ... BLOCK` and XACK on another; latency from
//!   just before the XADD to the reader having the entry.
//! - `deliver`: publish → deliver through two meshlets. Publishes at a fixed rate to the
//!   publisher meshlet's local API (one POST an event, the send time in the payload) and
//!   serves the subscriber meshlet's app, which takes the receive time of each delivery.
//! - `memory`: Redis memory per stored event, through meshlet (stream entry + dedupe key,
//!   ndjson batches) and as bare XADDs of the same fields (stream entry alone).
//!
//! One process holds both ends of every latency, so both timestamps come from the same
//! monotonic clock. Without a subcommand (`cargo test --all-targets` runs bench targets
//! that way) it does nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use redis::Value;
use tokio::net::{TcpListener, TcpStream};

/// The origin of every timestamp in this process.
static ANCHOR: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since [`ANCHOR`].
fn now_ns() -> u64 {
    ANCHOR.elapsed().as_nanos() as u64
}

/// Errors a run can end with; the script prints them and fails the run.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("usage: {0}")]
    Usage(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(String),
    #[error("{0}")]
    Failed(String),
}

/// `--name value` options of a subcommand.
struct Options(Vec<(String, String)>);

impl Options {
    fn parse(args: &[String]) -> Result<Options, BenchError> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(name) = it.next() {
            let Some(key) = name.strip_prefix("--") else {
                return Err(BenchError::Usage(format!("unexpected argument `{name}`")));
            };
            let value = it
                .next()
                .ok_or_else(|| BenchError::Usage(format!("--{key} needs a value")))?;
            pairs.push((key.to_owned(), value.clone()));
        }
        Ok(Options(pairs))
    }

    fn text(&self, key: &str) -> Result<&str, BenchError> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| BenchError::Usage(format!("--{key} is required")))
    }

    fn number<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, BenchError> {
        match self.0.iter().rev().find(|(k, _)| k == key) {
            None => Ok(default),
            Some((_, v)) => v
                .parse()
                .map_err(|_| BenchError::Usage(format!("--{key} `{v}` is not a number"))),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first().filter(|a| !a.starts_with('-')) else {
        eprintln!("events_load: run by bench/events (subcommands: redis-loop, deliver, memory)");
        return;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("events_load: cannot start tokio: {e}");
            std::process::exit(2);
        }
    };
    LazyLock::force(&ANCHOR);
    let run = async {
        let options = Options::parse(&args[1..])?;
        match command.as_str() {
            "redis-loop" => redis_loop(&options).await,
            "deliver" => deliver(&options).await,
            "memory" => memory(&options).await,
            other => Err(BenchError::Usage(format!("unknown subcommand `{other}`"))),
        }
    };
    match runtime.block_on(run) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("events_load {command}: {e}");
            std::process::exit(1);
        }
    }
}

/// Percentiles of a run, in microseconds.
fn summary(mut ns: Vec<u64>) -> serde_json::Value {
    ns.sort_unstable();
    let at = |q: f64| -> f64 {
        if ns.is_empty() {
            return 0.0;
        }
        let i = ((ns.len() as f64 * q).ceil() as usize).clamp(1, ns.len()) - 1;
        ns[i] as f64 / 1000.0
    };
    serde_json::json!({
        "samples": ns.len(),
        "p50_us": at(0.50),
        "p90_us": at(0.90),
        "p99_us": at(0.99),
        "p999_us": at(0.999),
        "max_us": at(1.0),
    })
}

/// A payload of exactly `size` bytes carrying the send time and a sequence number.
fn payload(sent_ns: u64, seq: u64, size: usize) -> String {
    let head = format!("{{\"t\":{sent_ns},\"n\":{seq},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut p = String::with_capacity(size);
    p.push_str(&head);
    p.extend(std::iter::repeat_n('x', pad));
    p.push_str("\"}");
    p
}

/// `"t"` and `"n"` back out of a payload (or of an envelope that embeds one).
fn stamp(text: &[u8]) -> Option<(u64, u64)> {
    let number_after = |key: &[u8]| -> Option<u64> {
        let at = text.windows(key.len()).position(|w| w == key)? + key.len();
        let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&text[at..at + digits])
            .ok()?
            .parse()
            .ok()
    };
    Some((number_after(b"{\"t\":")?, number_after(b",\"n\":")?))
}

/// A fixed-rate schedule: event `n` is due at `start + n / rate`.
struct Pace {
    start: tokio::time::Instant,
    interval_ns: u64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            start: tokio::time::Instant::now() + Duration::from_millis(20),
            interval_ns: 1_000_000_000 / rate.max(1),
        }
    }
    async fn wait(&self, n: u64) {
        let due = Duration::from_nanos(self.interval_ns.saturating_mul(n));
        tokio::time::sleep_until(self.start + due).await;
    }
}

async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection, BenchError> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Entry ids and the values of one field from an XREADGROUP reply (RESP2).
fn read_reply(reply: &Value, field: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.get(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(e) = entry else { continue };
            let (Some(Value::BulkString(id)), Some(Value::Array(kv))) = (e.first(), e.get(1))
            else {
                continue;
            };
            let value = kv.chunks(2).find_map(|pair| match pair {
                [Value::BulkString(k), Value::BulkString(v)] if k == field => Some(v.clone()),
                _ => None,
            });
            out.push((id.clone(), value));
        }
    }
    out
}

/// `redis-loop --redis URL [--rate 1000] [--seconds 10] [--warmup 500] [--payload 200]`
async fn redis_loop(o: &Options) -> Result<String, BenchError> {
    let url = o.text("redis")?;
    let rate: u64 = o.number("rate", 1000)?;
    let seconds: u64 = o.number("seconds", 10)?;
    let warmup: u64 = o.number("warmup", 500)?;
    let size: usize = o.number("payload", 200)?;
    let total = warmup + rate * seconds;
    let stream = "bench:loop";
    let mut writer = redis_conn(url).await?;
    let mut reader = redis_conn(url).await?;
    let _: Value = redis::cmd("DEL")
        .arg(stream)
        .query_async(&mut writer)
        .await?;
    let _: Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut writer)
        .await?;

    let consumer = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total as usize);
        let mut seen = 0u64;
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        while seen < total && Instant::now() < deadline {
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(100)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(stream)
                .arg(">")
                .query_async(&mut reader)
                .await?;
            let got = now_ns();
            let entries = read_reply(&reply, b"t");
            if entries.is_empty() {
                continue;
            }
            let mut ack = redis::cmd("XACK");
            ack.arg(stream).arg("g");
            for (id, t) in &entries {
                ack.arg(id);
                seen += 1;
                let sent = t
                    .as_deref()
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(sent) = sent {
                    if seen > warmup {
                        latencies.push(got.saturating_sub(sent));
                    }
                }
            }
            let _: Value = ack.query_async(&mut reader).await?;
        }
        Ok::<_, BenchError>((seen, latencies))
    });

    let pace = Pace::new(rate);
    let body = "x".repeat(size);
    for n in 0..total {
        pace.wait(n).await;
        let t = now_ns();
        let _: Value = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("t")
            .arg(t)
            .arg("payload")
            .arg(&body)
            .query_async(&mut writer)
            .await?;
    }
    let elapsed = pace.start.elapsed().as_secs_f64();
    let (seen, latencies) = consumer
        .await
        .map_err(|e| BenchError::Failed(format!("reader task: {e}")))??;
    if seen < total {
        return Err(BenchError::Failed(format!(
            "read {seen} of {total} entries"
        )));
    }
    let mut line = summary(latencies);
    line["kind"] = "redis_loop".into();
    line["events"] = (total - warmup).into();
    line["rate"] = ((total as f64 / elapsed).round()).into();
    Ok(line.to_string())
}

/// One keep-alive HTTP/1.1 connection.
struct Http {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Result<Http, BenchError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| BenchError::Http(e.to_string()))?;
        tokio::spawn(conn);
        Ok(Http { sender })
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), BenchError> {
        self.sender
            .ready()
            .await
            .map_err(|e| BenchError::Http(e.to_string()))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| BenchError::Http(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| BenchError::Http(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

/// What the app has seen: publish→deliver latency of every measured event.
#[derive(Default)]
struct Seen {
    latencies: Mutex<Vec<u64>>,
    count: AtomicU64,
    measured: AtomicU64,
}

/// The subscriber's app: answers every POST 200 and records when it arrived.
async fn serve_app(listener: TcpListener, seen: Arc<Seen>, warmup: u64) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let got = now_ns();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    if let Some((sent, n)) = body.ok().as_deref().and_then(stamp) {
                        seen.count.fetch_add(1, Ordering::SeqCst);
                        if n >= warmup {
                            seen.measured.fetch_add(1, Ordering::SeqCst);
                            seen.latencies
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(got.saturating_sub(sent));
                        }
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Waits (at most 10 s) until consumer group `group` of `stream` exists.
async fn group_ready(url: &str, stream: &str, group: &str) -> Result<(), BenchError> {
    let mut conn = redis_conn(url).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let groups: Result<Value, _> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut conn)
            .await;
        if format!("{groups:?}").contains(group) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BenchError::Failed(format!(
        "group {group} of {stream} did not appear within 10 s"
    )))
}

/// `deliver --api ADDR --app ADDR --redis URL --stream KEY --group NAME --type T
///  [--rate 1000] [--seconds 10] [--warmup 500] [--payload 200] [--conns 4]`
async fn deliver(o: &Options) -> Result<String, BenchError> {
    let api: SocketAddr = o
        .text("api")?
        .parse()
        .map_err(|_| BenchError::Usage("--api is not an address".into()))?;
    let app: SocketAddr = o
        .text("app")?
        .parse()
        .map_err(|_| BenchError::Usage("--app is not an address".into()))?;
    let url = o.text("redis")?;
    let event_type = o.text("type")?.to_owned();
    let rate: u64 = o.number("rate", 1000)?;
    let seconds: u64 = o.number("seconds", 10)?;
    let warmup: u64 = o.number("warmup", 500)?;
    let size: usize = o.number("payload", 200)?;
    let conns: u64 = o.number("conns", 4)?;
    let total = warmup + rate * seconds;

    let seen = Arc::new(Seen::default());
    let listener = TcpListener::bind(app).await?;
    let server = tokio::spawn(serve_app(listener, seen.clone(), warmup));
    group_ready(url, o.text("stream")?, o.text("group")?).await?;

    // Connection i sends events i, i + conns, ...: an open loop, so a slow answer on one
    // connection does not hold back the schedule of the others.
    let pace = Arc::new(Pace::new(rate));
    let mut senders = Vec::new();
    for i in 0..conns {
        let mut http = Http::connect(api).await?;
        let (pace, event_type) = (pace.clone(), event_type.clone());
        senders.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = i;
            while n < total {
                pace.wait(n).await;
                let t = now_ns();
                let req = Request::post(format!("/v1/events/{event_type}"))
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(payload(t, n, size))))
                    .map_err(|e| BenchError::Http(e.to_string()))?;
                let (status, body) = http.send(req).await?;
                if status != StatusCode::ACCEPTED {
                    return Err(BenchError::Failed(format!(
                        "publish answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    )));
                }
                if n >= warmup {
                    answers.push(now_ns().saturating_sub(t));
                }
                n += conns;
            }
            Ok::<_, BenchError>(answers)
        }));
    }
    let mut publish = Vec::new();
    for s in senders {
        publish.extend(
            s.await
                .map_err(|e| BenchError::Failed(format!("sender: {e}")))??,
        );
    }
    let elapsed = pace.start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.count.load(Ordering::SeqCst) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.abort();
    let delivered = seen.count.load(Ordering::SeqCst);
    if delivered < total {
        return Err(BenchError::Failed(format!(
            "{delivered} of {total} events delivered within 30 s of the last publish"
        )));
    }
    let latencies = std::mem::take(&mut *seen.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    let mut line = summary(latencies);
    line["kind"] = "deliver".into();
    line["events"] = (total - warmup).into();
    line["delivered"] = delivered.into();
    line["rate"] = ((total as f64 / elapsed).round()).into();
    line["publish"] = summary(publish);
    Ok(line.to_string())
}

/// `INFO memory` → `used_memory`.
async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> Result<i64, BenchError> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| BenchError::Failed("no used_memory in INFO memory".into()))
}

/// `memory --redis URL --api ADDR [--events 20000] [--payload 200]`
async fn memory(o: &Options) -> Result<String, BenchError> {
    let url = o.text("redis")?;
    let api: SocketAddr = o
        .text("api")?
        .parse()
        .map_err(|_| BenchError::Usage("--api is not an address".into()))?;
    let n: u64 = o.number("events", 20_000)?;
    let size: usize = o.number("payload", 200)?;
    let mut conn = redis_conn(url).await?;

    // Through meshlet: ndjson batches of 1000, ids made by meshlet (UUIDv7, 36 bytes).
    let before = used_memory(&mut conn).await?;
    let mut http = Http::connect(api).await?;
    let mut sent = 0;
    while sent < n {
        let count = (n - sent).min(1000);
        let mut body = String::with_capacity(count as usize * (size + 1));
        for i in sent..sent + count {
            body.push_str(&payload(0, i, size));
            body.push('\n');
        }
        let req = Request::post("/v1/events/bench.memory")
            .header("host", "localhost")
            .header("content-type", "application/x-ndjson")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| BenchError::Http(e.to_string()))?;
        let (status, body) = http.send(req).await?;
        if status != StatusCode::OK {
            return Err(BenchError::Failed(format!(
                "batch publish answered {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        sent += count;
    }
    let after = used_memory(&mut conn).await?;
    let stored: u64 = redis::cmd("XLEN")
        .arg("mesh:events:{bench.memory}")
        .query_async(&mut conn)
        .await?;

    // Bare XADDs of the same seven fields (no dedupe key), pipelined.
    let bare_before = used_memory(&mut conn).await?;
    let timestamp = "2026-01-01T00:00:00.000Z";
    let mut done = 0;
    while done < n {
        let count = (n - done).min(1000);
        let mut pipe = redis::pipe();
        for i in done..done + count {
            pipe.cmd("XADD")
                .arg("bench:memory:bare")
                .arg("*")
                .arg("event_id")
                .arg(uuid::Uuid::now_v7().to_string())
                .arg("event_type")
                .arg("bench.memory")
                .arg("timestamp")
                .arg(timestamp)
                .arg("source")
                .arg("bench-pub")
                .arg("version")
                .arg(1)
                .arg("payload")
                .arg(payload(0, i, size))
                .arg("traceparent")
                .arg("")
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
        done += count;
    }
    let bare_after = used_memory(&mut conn).await?;
    if stored != n {
        return Err(BenchError::Failed(format!("{stored} of {n} events stored")));
    }
    Ok(serde_json::json!({
        "kind": "memory",
        "events": n,
        "payload_bytes": size,
        "meshlet_bytes_per_event": (after - before) as f64 / n as f64,
        "bare_bytes_per_event": (bare_after - bare_before) as f64 / n as f64,
    })
    .to_string())
}
