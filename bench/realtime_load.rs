//! The realtime hub's load client, driven by `bench/realtime` (docs/performance.md,
//! "Realtime"). One binary, two roles:
//!
//! - `run`: the coordinator. It plays the app (POSTs `/v1/broadcast` with a send
//!   timestamp in each payload), spawns worker processes of itself that hold the
//!   WebSocket clients, reads the meshlets' RSS from `/proc/PID/status`, and writes
//!   `results.json` and `report.md`.
//! - `worker`: holds a share of the clients (kept small so each process stays inside its
//!   fd and port limits), joins them to the bench room, and records each broadcast's
//!   latency (receive time minus the timestamp in the payload) in an HDR histogram.
//!
//! - `peer`: the same latency phases against a peer hub (Socket.IO 4 with
//!   `@socket.io/redis-adapter`, bench/peers/socketio), whose workers speak Engine.IO v4 /
//!   Socket.IO v5 framing over the same WebSocket client, so the client side costs the
//!   same for both; it prints the side-by-side table against the meshlet run's results.
//!
//! Workers talk to the coordinator in lines: commands on stdin (`reset`, `report`,
//! `quit`), answers as JSON on stdout. Every phase is bounded in count and in time.
//!
//! Without a subcommand (as `cargo test --all-targets` runs it) it prints its usage and
//! exits.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The room every bench client joins.
const ROOM: &str = "bench";
/// Connections opened at once by one worker.
const CONNECT_CONCURRENCY: usize = 64;
/// How long any one step (a connect, a join, a worker's answer) may take.
const STEP: Duration = Duration::from_secs(30);
/// Engine.IO v4 ping (server → client) and its answer.
const EIO_PING: &str = "2";
const EIO_PONG: &str = "3";
/// Histogram range: 1 µs .. 60 s, 3 significant digits.
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    #[error("histogram: {0}")]
    Histogram(String),
    #[error("{0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

type Result<T> = std::result::Result<T, LoadError>;

#[derive(Parser)]
#[command(about = "Load client of the realtime hub (see bench/realtime)")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Role {
    /// Coordinate one full run.
    Run(RunArgs),
    /// Hold a share of the clients (spawned by `run`).
    Worker(WorkerArgs),
    /// The latency phases against a peer hub (Socket.IO), then the side-by-side table.
    Peer(PeerArgs),
}

/// The protocol a worker's clients speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    /// meshlet's hub (docs/realtime.md): a token in the URL, `welcome`, `join` → `joined`.
    Meshlet,
    /// Socket.IO v5 over Engine.IO v4, WebSocket transport: `0{..}` open, `40` connect,
    /// `420["join","bench"]` acked by `430[..]`; pings `2` answered with `3`.
    Socketio,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// WebSocket URL of each meshlet (`ws://127.0.0.1:P/ws`), in the order of --api/--pid.
    #[arg(long, required = true)]
    ws: Vec<String>,
    /// Local API address (`127.0.0.1:P`) of each meshlet.
    #[arg(long, required = true)]
    api: Vec<SocketAddr>,
    /// Process id of each meshlet (for VmRSS).
    #[arg(long, required = true)]
    pid: Vec<u32>,
    /// HS256 secret of the meshlets' `realtime.auth`.
    #[arg(long)]
    secret: String,
    /// Clients of the small fan-out (and the RSS step).
    #[arg(long, default_value_t = 1000)]
    small: usize,
    /// Clients of the large fan-out (and of the one-meshlet RSS run).
    #[arg(long, default_value_t = 10_000)]
    large: usize,
    /// Clients per worker process.
    #[arg(long, default_value_t = 2500)]
    per_worker: usize,
    /// Broadcasts per latency phase.
    #[arg(long, default_value_t = 40)]
    broadcasts: u64,
    /// Pause between the broadcasts of a latency phase.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Padding bytes in each payload (besides the timestamp).
    #[arg(long, default_value_t = 100)]
    pad: usize,
    /// Broadcast rates (per second) tried, in order, for the fan-out throughput step.
    #[arg(long, value_delimiter = ',', default_value = "10,20,40,80")]
    rates: Vec<u64>,
    /// Seconds of each throughput step.
    #[arg(long, default_value_t = 3)]
    rate_seconds: u64,
    /// Broadcast rate (per second) while a client stops reading.
    #[arg(long, default_value_t = 20)]
    slow_rate: u64,
    /// Seconds of the slow-client phase.
    #[arg(long, default_value_t = 4)]
    slow_seconds: u64,
    /// Clients of the middle fan-out over every meshlet (0 skips it).
    #[arg(long, default_value_t = 5000)]
    mid: usize,
    /// Where results.json and report.md go.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Clone)]
struct PeerArgs {
    /// Socket.IO WebSocket URL of each peer server
    /// (`ws://127.0.0.1:P/socket.io/?EIO=4&transport=websocket`), in the order of --api/--pid.
    #[arg(long, required = true)]
    ws: Vec<String>,
    /// HTTP address (`127.0.0.1:P`) of each peer server (`POST /broadcast`, `GET /stats`).
    #[arg(long, required = true)]
    api: Vec<SocketAddr>,
    /// Process id of each peer server (for CPU).
    #[arg(long, required = true)]
    pid: Vec<u32>,
    /// Client counts, each spread over every server.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    sizes: Vec<usize>,
    /// Clients per worker process.
    #[arg(long, default_value_t = 2500)]
    per_worker: usize,
    /// Broadcasts per latency phase.
    #[arg(long, default_value_t = 40)]
    broadcasts: u64,
    /// Pause between the broadcasts of a latency phase.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Padding bytes in each payload (besides the timestamp).
    #[arg(long, default_value_t = 100)]
    pad: usize,
    /// The peer's name in the table.
    #[arg(long, default_value = "Socket.IO")]
    name: String,
    /// The servers' protocol (`meshlet` runs these phases alone against meshlets, e.g.
    /// under `perf stat`; then --api is their local API and --secret their token secret).
    #[arg(long, value_enum, default_value_t = Proto::Socketio)]
    proto: Proto,
    /// HS256 secret of the meshlets' `realtime.auth` (with `--proto meshlet`).
    #[arg(long, default_value = "")]
    secret: String,
    /// The meshlet run's results.json, for the side-by-side table.
    #[arg(long)]
    meshlet: Option<PathBuf>,
    /// Where peer.json and compare.md go.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Clone)]
struct WorkerArgs {
    /// WebSocket URLs; client `i` connects to `urls[i % len]`.
    #[arg(long, required = true)]
    ws: Vec<String>,
    #[arg(long)]
    secret: String,
    /// Clients to hold.
    #[arg(long)]
    clients: usize,
    /// First user number (users are `u{n}`).
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// The protocol the clients speak.
    #[arg(long, value_enum, default_value_t = Proto::Meshlet)]
    proto: Proto,
    /// One client that joins, then stops reading (with a small receive buffer) until
    /// `report`, which reads what is left and reports its close code.
    #[arg(long)]
    slow: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Some(role) = cli.role else {
        println!(
            "realtime_load: run it through `bash bench/realtime` (nothing to do without a role)"
        );
        return std::process::ExitCode::SUCCESS;
    };
    let rt = match role {
        Role::Run(_) | Role::Peer(_) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build(),
        Role::Worker(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("realtime_load: no runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match role {
            Role::Run(args) => coordinate(args).await,
            Role::Worker(args) => work(args).await,
            Role::Peer(args) => peer(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("realtime_load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| LoadError::Histogram(e.to_string()))
}

fn token(secret: &str, user: &str) -> Result<String> {
    let exp = now_us() / 1_000_000 + 24 * 3600;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())?,
    )?)
}

// ------------------------------------------------------------------------------- worker

type Ws = WebSocketStream<TcpStream>;

/// What a worker's clients saw, shared by their reader tasks.
struct Seen {
    latency: Mutex<Histogram<u64>>,
    received: AtomicU64,
    /// Close codes (0 = closed without a code) of clients that were closed.
    closes: Mutex<BTreeMap<u16, u64>>,
}

async fn work(args: WorkerArgs) -> Result<()> {
    let mut out = std::io::stdout();
    let mut commands = commands();
    if args.slow {
        return work_slow(args, &mut commands).await;
    }
    let seen = Arc::new(Seen {
        latency: Mutex::new(histogram()?),
        received: AtomicU64::new(0),
        closes: Mutex::new(BTreeMap::new()),
    });
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut connecting = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let url = args.ws[i % args.ws.len()].clone();
        let user = format!("u{}", args.first + i);
        let secret = args.secret.clone();
        let gate = gate.clone();
        let proto = args.proto;
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            timeout(STEP, connect_and_join(proto, &url, &secret, &user, None))
                .await
                .map_err(|_| LoadError::Timeout("connect and join"))?
        }));
    }
    let mut clients = Vec::with_capacity(args.clients);
    let mut failed = 0usize;
    let mut first_error = None;
    for c in connecting {
        match c.await {
            Ok(Ok(ws)) => clients.push(ws),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let connected = clients.len();
    for ws in clients {
        tokio::spawn(read_forever(ws, seen.clone()));
    }
    answer(
        &mut out,
        &json!({"ready": connected, "failed": failed, "error": first_error,
                "seconds": started.elapsed().as_secs_f64()}),
    )?;
    while let Some(line) = commands.recv().await {
        match line.trim() {
            "reset" => {
                lock(&seen.latency).reset();
                seen.received.store(0, Ordering::Relaxed);
                answer(&mut out, &json!({"reset": true}))?;
            }
            "report" => {
                let h = lock(&seen.latency).clone();
                let counts: Vec<[u64; 2]> = h
                    .iter_recorded()
                    .map(|v| [v.value_iterated_to(), v.count_at_value()])
                    .collect();
                let closes: BTreeMap<String, u64> = lock(&seen.closes)
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect();
                answer(
                    &mut out,
                    &json!({"received": seen.received.load(Ordering::Relaxed),
                            "counts": counts, "closes": closes}),
                )?;
            }
            _ => break,
        }
    }
    Ok(())
}

/// The coordinator's commands, one a line on stdin, read by a thread of their own (the
/// worker's runtime is single-threaded and has no async stdin).
fn commands() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The bench's own data; a panicked reader leaves a histogram that is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn answer(out: &mut std::io::Stdout, v: &Value) -> Result<()> {
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// Connects one client and joins [`ROOM`]: on meshlet it reads the welcome, joins and
/// reads `joined`; on Socket.IO it connects to the main namespace and joins with an ack.
async fn connect_and_join(
    proto: Proto,
    url: &str,
    secret: &str,
    user: &str,
    recv_buffer: Option<u32>,
) -> Result<Ws> {
    let url = match proto {
        Proto::Meshlet => format!("{url}?token={}", token(secret, user)?),
        Proto::Socketio => url.to_owned(),
    };
    let req = url.as_str().into_client_request()?;
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| LoadError::Protocol(format!("no host in {url}")))?;
    let addr: SocketAddr = host
        .parse()
        .map_err(|_| LoadError::Protocol(format!("{host} is not ip:port")))?;
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    if proto == Proto::Socketio {
        join_socketio(&mut ws).await?;
        return Ok(ws);
    }
    expect_frame(&mut ws, "welcome").await?;
    ws.send(Message::text(
        json!({"type": "join", "room": ROOM}).to_string(),
    ))
    .await?;
    expect_frame(&mut ws, "joined").await?;
    Ok(ws)
}

async fn expect_frame(ws: &mut Ws, kind: &str) -> Result<()> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] == kind {
                    return Ok(());
                }
                return Err(LoadError::Protocol(format!("expected {kind}, got {v}")));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(LoadError::Protocol(format!("closed before {kind}"))),
        }
    }
}

/// Engine.IO v4 open (`0{..}`), Socket.IO connect to the main namespace (`40` → `40{..}`),
/// then `join` with ack id 0 (`420["join","bench"]` → `430[..]`).
async fn join_socketio(ws: &mut Ws) -> Result<()> {
    expect_packet(ws, "0{").await?;
    ws.send(Message::text("40")).await?;
    expect_packet(ws, "40").await?;
    ws.send(Message::text(format!("420[\"join\",\"{ROOM}\"]")))
        .await?;
    expect_packet(ws, "430").await
}

/// Reads up to the next Socket.IO packet, which must start with `prefix`; answers pings.
async fn expect_packet(ws: &mut Ws, prefix: &str) -> Result<()> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == EIO_PING => {
                ws.send(Message::text(EIO_PONG)).await?;
            }
            Some(Ok(Message::Text(t))) if t.as_str().starts_with(prefix) => return Ok(()),
            Some(Ok(Message::Text(t))) => {
                return Err(LoadError::Protocol(format!(
                    "expected a packet {prefix}.., got {}",
                    t.as_str()
                )))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(LoadError::Protocol(format!(
                    "closed before the packet {prefix}.."
                )))
            }
        }
    }
}

/// Reads broadcasts until the socket closes, recording each one's latency. A text frame
/// that is exactly [`EIO_PING`] is an Engine.IO ping (meshlet never sends one): answered.
async fn read_forever(mut ws: Ws, seen: Arc<Seen>) {
    let code = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == EIO_PING => {
                if ws.send(Message::text(EIO_PONG)).await.is_err() {
                    break 0;
                }
            }
            Some(Ok(Message::Text(t))) => {
                let now = now_us();
                if let Some(sent) = sent_at(t.as_str()) {
                    let _ = lock(&seen.latency).record(now.saturating_sub(sent).max(1));
                    seen.received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.map_or(0, |f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break 0,
        }
    };
    *lock(&seen.closes).entry(code).or_default() += 1;
}

/// The send timestamp of a bench broadcast: the number after `"t":` in its payload
/// (`"type":` does not match). Cheaper than parsing every frame.
fn sent_at(frame: &str) -> Option<u64> {
    let at = frame.find("\"t\":")? + 4;
    let digits = frame[at..].bytes().take_while(u8::is_ascii_digit).count();
    frame[at..at + digits].parse().ok()
}

/// The slow client: joins, stops reading; at `report`, reads what is left and reports how
/// the hub closed it.
async fn work_slow(
    args: WorkerArgs,
    commands: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> Result<()> {
    let mut out = std::io::stdout();
    let url = &args.ws[0];
    let mut ws = connect_and_join(args.proto, url, &args.secret, "slow", Some(4096)).await?;
    answer(&mut out, &json!({"ready": 1, "failed": 0}))?;
    while let Some(line) = commands.recv().await {
        match line.trim() {
            "reset" => answer(&mut out, &json!({"reset": true}))?,
            "report" => {
                let mut received = 0u64;
                let code = timeout(Duration::from_secs(10), async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(_))) => received += 1,
                            Some(Ok(Message::Close(f))) => {
                                break Some(f.map_or(0, |f| u16::from(f.code)))
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break Some(0),
                        }
                    }
                })
                .await
                .unwrap_or(None);
                let closes: BTreeMap<String, u64> =
                    code.map(|c| (c.to_string(), 1)).into_iter().collect();
                answer(
                    &mut out,
                    &json!({"received": received, "counts": [], "closes": closes}),
                )?;
            }
            _ => break,
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------- coordinator

/// What every worker of a run is started with.
struct Spawn {
    secret: String,
    per_worker: usize,
    proto: Proto,
}

impl Spawn {
    fn meshlet(args: &RunArgs) -> Spawn {
        Spawn {
            secret: args.secret.clone(),
            per_worker: args.per_worker,
            proto: Proto::Meshlet,
        }
    }
}

/// A worker process and its line channel.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    fn spawn(
        args: &Spawn,
        ws: &[String],
        clients: usize,
        first: usize,
        slow: bool,
    ) -> Result<Worker> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .arg("--secret")
            .arg(&args.secret)
            .arg("--clients")
            .arg(clients.to_string())
            .arg("--first")
            .arg(first.to_string())
            .arg("--proto")
            .arg(match args.proto {
                Proto::Meshlet => "meshlet",
                Proto::Socketio => "socketio",
            });
        for url in ws {
            cmd.arg("--ws").arg(url);
        }
        if slow {
            cmd.arg("--slow");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or(LoadError::Protocol("worker without stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or(LoadError::Protocol("worker without stdout".into()))?;
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    async fn read(&mut self, within: Duration) -> Result<Value> {
        let line = timeout(within, self.stdout.next_line())
            .await
            .map_err(|_| LoadError::Timeout("worker answer"))??
            .ok_or(LoadError::Protocol("worker exited".into()))?;
        Ok(serde_json::from_str(&line)?)
    }

    async fn ask(&mut self, command: &str) -> Result<Value> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        self.read(STEP).await
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// A group of workers holding clients.
struct Fleet {
    workers: Vec<Worker>,
    clients: usize,
}

impl Fleet {
    /// Starts workers for `clients` clients spread over `ws`, waits until all joined.
    async fn start(args: &Spawn, ws: &[String], clients: usize, first: usize) -> Result<Fleet> {
        let mut workers = Vec::new();
        let mut left = clients;
        let mut next = first;
        while left > 0 {
            let n = left.min(args.per_worker);
            // Each worker spreads over all URLs, starting with a different one.
            let mut urls = ws.to_vec();
            urls.rotate_left(workers.len() % ws.len());
            workers.push(Worker::spawn(args, &urls, n, next, false)?);
            left -= n;
            next += n;
        }
        let mut ready = 0usize;
        for w in &mut workers {
            let v = w.read(Duration::from_secs(300)).await?;
            ready += v["ready"].as_u64().unwrap_or(0) as usize;
            if v["failed"].as_u64().unwrap_or(0) > 0 {
                eprintln!("[realtime_load] worker: {v}");
            }
        }
        if ready < clients {
            return Err(LoadError::Protocol(format!(
                "only {ready} of {clients} clients connected and joined"
            )));
        }
        Ok(Fleet { workers, clients })
    }

    async fn reset(&mut self) -> Result<()> {
        for w in &mut self.workers {
            w.ask("reset").await?;
        }
        Ok(())
    }

    /// Merged latency histogram, frames received and close codes since the last reset.
    async fn report(&mut self) -> Result<(Histogram<u64>, u64, BTreeMap<String, u64>)> {
        let mut h = histogram()?;
        let mut received = 0;
        let mut closes = BTreeMap::new();
        for w in &mut self.workers {
            let v = w.ask("report").await?;
            received += v["received"].as_u64().unwrap_or(0);
            for pair in v["counts"].as_array().into_iter().flatten() {
                let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                    continue;
                };
                h.record_n(value.clamp(1, MAX_LATENCY_US), count)
                    .map_err(|e| LoadError::Histogram(e.to_string()))?;
            }
            for (code, n) in v["closes"].as_object().into_iter().flatten() {
                *closes.entry(code.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
            }
        }
        Ok((h, received, closes))
    }

    async fn stop(self) {
        for w in self.workers {
            w.quit().await;
        }
    }
}

/// A keep-alive HTTP/1.1 connection to a meshlet's local API (or to a peer server's
/// `POST /broadcast` and `GET /stats`, which take and give the same shapes).
struct Api {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    proto: Proto,
    addr: SocketAddr,
}

impl Api {
    async fn connect(addr: SocketAddr) -> Result<Api> {
        Api::connect_to(addr, Proto::Meshlet).await
    }

    async fn connect_to(addr: SocketAddr, proto: Proto) -> Result<Api> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Api {
            sender,
            proto,
            addr,
        })
    }

    async fn call(
        &mut self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, Value)> {
        // A server may close an idle keep-alive connection (node does after 5 s by
        // default): open a new one rather than fail the run.
        if self.sender.is_closed() {
            *self = Api::connect_to(self.addr, self.proto).await?;
        }
        self.sender.ready().await?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// One room broadcast stamped with the current time.
    async fn broadcast(&mut self, seq: u64, pad: &str) -> Result<()> {
        let body = json!({"to": {"room": ROOM}, "event": "bench",
                          "data": {"t": now_us(), "s": seq, "pad": pad}});
        let (status, v) = self
            .call(
                http::Method::POST,
                match self.proto {
                    Proto::Meshlet => "/v1/broadcast",
                    Proto::Socketio => "/broadcast",
                },
                Bytes::from(body.to_string()),
            )
            .await?;
        if status != 202 {
            return Err(LoadError::Protocol(format!(
                "broadcast answered {status}: {v}"
            )));
        }
        Ok(())
    }

    async fn stats(&mut self) -> Result<Value> {
        let path = match self.proto {
            Proto::Meshlet => "/v1/realtime",
            Proto::Socketio => "/stats",
        };
        Ok(self.call(http::Method::GET, path, Bytes::new()).await?.1)
    }
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Latency figures of one phase, in milliseconds.
fn summary(
    h: &Histogram<u64>,
    received: u64,
    expected: u64,
    closes: &BTreeMap<String, u64>,
) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": h.max() as f64 / 1000.0,
        "received": received, "expected": expected, "closes": closes,
    })
}

/// Waits until every meshlet holds `want` connections (at most 30 s).
async fn settle(apis: &mut [Api], want: &[u64]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ok = true;
        for (api, want) in apis.iter_mut().zip(want) {
            ok &= api.stats().await?["connections"].as_u64() == Some(*want);
        }
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LoadError::Timeout(
                "meshlets to settle on a connection count",
            ));
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// `count` broadcasts from `api`, one every `every`; then the fleet's figures.
async fn latency_phase(
    fleet: &mut Fleet,
    api: &mut Api,
    count: u64,
    every: Duration,
    pad: &str,
) -> Result<Value> {
    fleet.reset().await?;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    for seq in 0..count {
        tick.tick().await;
        api.broadcast(seq, pad).await?;
    }
    let expected = count * fleet.clients as u64;
    let sent_for = started.elapsed();
    // Bounded wait for the last deliveries.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (h, received, closes) = loop {
        sleep(Duration::from_millis(300)).await;
        let (h, received, closes) = fleet.report().await?;
        if received >= expected || Instant::now() > deadline {
            break (h, received, closes);
        }
    };
    let mut s = summary(&h, received, expected, &closes);
    s["clients"] = json!(fleet.clients);
    s["broadcasts"] = json!(count);
    s["rate_per_s"] = json!(count as f64 / sent_for.as_secs_f64());
    Ok(s)
}

async fn coordinate(args: RunArgs) -> Result<()> {
    if args.ws.len() != args.api.len() || args.ws.len() != args.pid.len() || args.ws.is_empty() {
        return Err(LoadError::Protocol(
            "give one --ws, --api and --pid per meshlet".into(),
        ));
    }
    let pad = "x".repeat(args.pad);
    let spawn = Spawn::meshlet(&args);
    let mut apis = Vec::new();
    for a in &args.api {
        apis.push(Api::connect(*a).await?);
    }
    let n_meshlets = args.ws.len();
    let mut results = json!({"machine": machine(), "args": {
        "small": args.small, "large": args.large, "per_worker": args.per_worker,
        "broadcasts": args.broadcasts, "interval_ms": args.interval_ms, "pad": args.pad,
        "rates": args.rates, "rate_seconds": args.rate_seconds,
        "slow_rate": args.slow_rate, "slow_seconds": args.slow_seconds, "mid": args.mid,
        "meshlets": n_meshlets}});
    let log = |m: &str| eprintln!("[realtime_load] {m}");
    let every = Duration::from_millis(args.interval_ms);
    let zero = vec![0u64; n_meshlets];

    // 1. Memory: idle, small, large clients on the first meshlet alone.
    let pid = args.pid[0];
    let idle = vm_rss_kib(pid);
    log(&format!("meshlet 1 idle: VmRSS {idle} KiB"));
    let one = &args.ws[..1];
    let t = Instant::now();
    let mut fleet = Fleet::start(&spawn, one, args.small, 0).await?;
    let connect_small_s = t.elapsed().as_secs_f64();
    let mut want = zero.clone();
    want[0] = args.small as u64;
    settle(&mut apis, &want).await?;
    sleep(Duration::from_millis(500)).await;
    let rss_small = vm_rss_kib(pid);
    log(&format!(
        "{} clients on meshlet 1: VmRSS {rss_small} KiB",
        args.small
    ));
    let t = Instant::now();
    let more = Fleet::start(&spawn, one, args.large - args.small, args.small).await?;
    let connect_more_s = t.elapsed().as_secs_f64();
    fleet.clients += more.clients;
    fleet.workers.extend(more.workers);
    want[0] = args.large as u64;
    settle(&mut apis, &want).await?;
    sleep(Duration::from_millis(500)).await;
    let rss_large = vm_rss_kib(pid);
    log(&format!(
        "{} clients on meshlet 1: VmRSS {rss_large} KiB",
        args.large
    ));
    let one_meshlet = latency_phase(&mut fleet, &mut apis[0], args.broadcasts, every, &pad).await?;
    log(&format!(
        "one meshlet, {} clients: {one_meshlet}",
        args.large
    ));
    let rss_after = vm_rss_kib(pid);
    results["memory"] = json!({
        "idle_kib": idle, "small_kib": rss_small, "large_kib": rss_large,
        "after_broadcasts_kib": rss_after,
        "per_1000_kib": (rss_large.saturating_sub(idle)) as f64 * 1000.0 / args.large as f64,
        "connect_per_s": (args.large as f64) / (connect_small_s + connect_more_s),
    });
    results["one_meshlet_large"] = one_meshlet;
    fleet.stop().await;
    settle(&mut apis, &zero).await?;

    // 2. Small fan-out over every meshlet; broadcasts enter at the last one.
    let mut fleet = Fleet::start(&spawn, &args.ws, args.small, 100_000).await?;
    settle(&mut apis, &split(args.small, n_meshlets)).await?;
    let last = apis.len() - 1;
    let small = measured_phase(
        &mut fleet,
        &mut apis[last],
        &args.pid,
        args.broadcasts,
        every,
        &pad,
    )
    .await?;
    log(&format!(
        "{} clients over {n_meshlets} meshlets: {small}",
        args.small
    ));
    results["small"] = small;

    // 3. The same at the slow-client rate, without and then with a client that stops
    //    reading (on the first meshlet, the one the broadcasts do not enter at).
    let slow_every = Duration::from_micros(1_000_000 / args.slow_rate.max(1));
    let slow_count = args.slow_rate * args.slow_seconds;
    let baseline = latency_phase(&mut fleet, &mut apis[last], slow_count, slow_every, &pad).await?;
    log(&format!("baseline at {}/s: {baseline}", args.slow_rate));
    let mut slow = Worker::spawn(&spawn, &args.ws[..1], 1, 0, true)?;
    slow.read(STEP).await?;
    let dropped_before = apis[0].stats().await?["slow_clients_dropped"]
        .as_u64()
        .unwrap_or(0);
    // Watch the first meshlet's drop counter beside the broadcasts; once it moves (or the
    // phase is over), the stuck client reads again: what was buffered, then the close.
    let watch_addr = args.api[0];
    let limit = Duration::from_secs(args.slow_seconds + 5);
    let watcher = tokio::spawn(async move {
        let mut api = Api::connect(watch_addr).await?;
        let t0 = Instant::now();
        let mut cut = None;
        while t0.elapsed() < limit {
            let n = api.stats().await?["slow_clients_dropped"]
                .as_u64()
                .unwrap_or(0);
            if n > dropped_before {
                cut = Some(t0.elapsed());
                break;
            }
            sleep(Duration::from_millis(5)).await;
        }
        let seen = slow.ask("report").await?;
        slow.quit().await;
        Ok::<_, LoadError>((cut, seen))
    });
    let with_slow =
        latency_phase(&mut fleet, &mut apis[last], slow_count, slow_every, &pad).await?;
    let (cut_after, slow_seen) = watcher
        .await
        .map_err(|e| LoadError::Protocol(e.to_string()))??;
    log(&format!(
        "with a slow client: {with_slow}; cut after {cut_after:?}; slow client: {slow_seen}"
    ));
    let p99 = |v: &Value| v["p99_ms"].as_f64().unwrap_or(0.0);
    results["slow_client"] = json!({
        "rate_per_s": args.slow_rate,
        "baseline": baseline,
        "with_slow": with_slow,
        "cut_after_ms": cut_after.map(|d| d.as_secs_f64() * 1000.0),
        "slow_close": slow_seen["closes"],
        "slow_received": slow_seen["received"],
    });
    let b = p99(&results["slow_client"]["baseline"]);
    let w = p99(&results["slow_client"]["with_slow"]);
    results["slow_client"]["p99_change"] = json!(if b > 0.0 { (w - b) / b } else { 0.0 });
    fleet.stop().await;
    settle(&mut apis, &zero).await?;

    // 3b. The middle fan-out over every meshlet (the side-by-side table's middle row).
    if args.mid > 0 {
        let mut fleet = Fleet::start(&spawn, &args.ws, args.mid, 300_000).await?;
        settle(&mut apis, &split(args.mid, n_meshlets)).await?;
        let mid = measured_phase(
            &mut fleet,
            &mut apis[last],
            &args.pid,
            args.broadcasts,
            every,
            &pad,
        )
        .await?;
        log(&format!(
            "{} clients over {n_meshlets} meshlets: {mid}",
            args.mid
        ));
        results["mid"] = mid;
        fleet.stop().await;
        settle(&mut apis, &zero).await?;
    }

    // 4. Large fan-out over every meshlet, then the throughput ladder.
    let mut fleet = Fleet::start(&spawn, &args.ws, args.large, 200_000).await?;
    settle(&mut apis, &split(args.large, n_meshlets)).await?;
    let large = measured_phase(
        &mut fleet,
        &mut apis[last],
        &args.pid,
        args.broadcasts,
        every,
        &pad,
    )
    .await?;
    log(&format!(
        "{} clients over {n_meshlets} meshlets: {large}",
        args.large
    ));
    results["large"] = large;
    let mut ladder = Vec::new();
    for &rate in &args.rates {
        let every = Duration::from_micros(1_000_000 / rate.max(1));
        let count = rate * args.rate_seconds;
        let step = latency_phase(&mut fleet, &mut apis[last], count, every, &pad).await?;
        let delivered = step["received"].as_u64().unwrap_or(0);
        let complete = delivered >= step["expected"].as_u64().unwrap_or(u64::MAX);
        let mut step = step;
        // Frames delivered per second of sending.
        let sending_s = count as f64 / step["rate_per_s"].as_f64().unwrap_or(1.0).max(0.001);
        step["frames_per_s"] = json!(delivered as f64 / sending_s);
        step["complete"] = json!(complete);
        log(&format!("throughput at {rate}/s: {step}"));
        ladder.push(step);
        if !complete || fleet_lost(&ladder) {
            break;
        }
    }
    results["throughput"] = json!(ladder);
    let mut rss = Vec::new();
    for p in &args.pid {
        rss.push(vm_rss_kib(*p));
    }
    results["large_rss_kib"] = json!(rss);
    fleet.stop().await;

    let report = render(&results);
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    std::fs::write(args.out.join("report.md"), &report)?;
    print!("{report}");
    Ok(())
}

/// [`latency_phase`] with the servers' CPU per frame delivered (utime + stime of every
/// server process over the phase, ÷ frames the clients received) and how busy the whole
/// machine (both cores: servers, load processes, redis, anything else) was meanwhile.
/// Measured the same way for meshlet and for the peer.
async fn measured_phase(
    fleet: &mut Fleet,
    api: &mut Api,
    pids: &[u32],
    count: u64,
    every: Duration,
    pad: &str,
) -> Result<Value> {
    let (cpu0, busy0) = (cpu_ticks(pids), machine_ticks());
    let mut phase = latency_phase(fleet, api, count, every, pad).await?;
    let (cpu1, busy1) = (cpu_ticks(pids), machine_ticks());
    let frames = phase["received"].as_u64().unwrap_or(0).max(1) as f64;
    let (user, sys) = (cpu1.0.saturating_sub(cpu0.0), cpu1.1.saturating_sub(cpu0.1));
    let us_per_frame = |ticks: u64| ticks as f64 * 1e6 / ticks_per_s() / frames;
    phase["server_cpu_us_per_frame"] = json!(us_per_frame(user + sys));
    // Where it went: user space (the server's own code) or the kernel (mostly the
    // loopback TCP send, which on loopback includes the receiver's side).
    phase["server_user_us_per_frame"] = json!(us_per_frame(user));
    phase["server_sys_us_per_frame"] = json!(us_per_frame(sys));
    // The resolution of the figures above: /proc counts CPU in whole ticks.
    phase["server_cpu_ticks"] = json!(user + sys);
    phase["machine_busy_pct"] = json!(busy_pct(busy0, busy1));
    Ok(phase)
}

/// (utime, stime) of `pids`, summed, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command (which may hold spaces) closed by ')'.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some((
                rest.get(11)?.parse::<u64>().ok()?,
                rest.get(12)?.parse::<u64>().ok()?,
            ))
        })
        .fold((0, 0), |(u, k), (pu, pk)| (u + pu, k + pk))
}

/// USER_HZ: Linux reports 100 ticks a second to user space on every common build.
fn ticks_per_s() -> f64 {
    100.0
}

/// (busy, total) ticks of the whole machine, from the first line of /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let line = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = line
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn busy_pct(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1).max(1) as f64;
    b.0.saturating_sub(a.0) as f64 * 100.0 / total
}

/// Whether the last throughput step lost clients (slow-consumer closes).
fn fleet_lost(ladder: &[Value]) -> bool {
    ladder
        .last()
        .and_then(|s| s["closes"].as_object())
        .is_some_and(|c| !c.is_empty())
}

/// How many of `n` clients each of `m` meshlets holds (workers spread round-robin).
fn split(n: usize, m: usize) -> Vec<u64> {
    (0..m).map(|i| ((n + m - 1 - i) / m) as u64).collect()
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({"cpu": cpu, "cores": cores})
}

/// The markdown table of a run.
fn render(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().map_or("–".to_owned(), |x| format!("{x:.2}"));
    let mib = |v: &Value| {
        v.as_f64()
            .map_or("–".to_owned(), |x| format!("{:.1}", x / 1024.0))
    };
    let mark = |ok: bool| if ok { "yes" } else { "**no**" };
    let a = &r["args"];
    let m = &r["memory"];
    let mut s = String::new();
    s.push_str(&format!(
        "Machine: {} ({} cores). Clients: {} / {}, {} per worker process; {} broadcasts every {} ms per latency phase, {} B of padding.\n\n",
        r["machine"]["cpu"].as_str().unwrap_or("?"), r["machine"]["cores"], a["small"], a["large"],
        a["per_worker"], a["broadcasts"], a["interval_ms"], a["pad"]
    ));
    s.push_str("| measure | value | target | met |\n|---|---|---|---|\n");
    let large_mib = m["large_kib"].as_f64().unwrap_or(f64::MAX) / 1024.0;
    s.push_str(&format!(
        "| meshlet VmRSS idle | {} MiB | | |\n",
        mib(&m["idle_kib"])
    ));
    s.push_str(&format!(
        "| VmRSS with {} clients (one meshlet) | {} MiB | | |\n",
        a["small"],
        mib(&m["small_kib"])
    ));
    s.push_str(&format!(
        "| VmRSS with {} clients (one meshlet) | {} MiB | < 64 MiB | {} |\n",
        a["large"],
        mib(&m["large_kib"]),
        mark(large_mib < 64.0)
    ));
    s.push_str(&format!(
        "| RSS per 1,000 connections | {} KiB | | |\n",
        f(&m["per_1000_kib"])
    ));
    s.push_str(&format!(
        "| connects + joins per second (one meshlet) | {} | | |\n",
        f(&m["connect_per_s"])
    ));
    let lat = |name: &str, v: &Value| {
        format!(
            "| {name}: p50 / p99 / max | {} / {} / {} ms ({} of {} frames) |",
            f(&v["p50_ms"]),
            f(&v["p99_ms"]),
            f(&v["max_ms"]),
            v["received"],
            v["expected"]
        )
    };
    let one = &r["one_meshlet_large"];
    s.push_str(&format!(
        "{} | |\n",
        lat(
            &format!("broadcast to {} clients, one meshlet", a["large"]),
            one
        )
    ));
    let small = &r["small"];
    let small_ok = small["p99_ms"].as_f64().is_some_and(|p| p < 10.0);
    s.push_str(&format!(
        "{} < 10 ms | {} |\n",
        lat(
            &format!(
                "broadcast to {} clients, {} meshlets",
                a["small"], a["meshlets"]
            ),
            small
        ),
        mark(small_ok)
    ));
    let large = &r["large"];
    s.push_str(&format!(
        "| meshlets' CPU per frame delivered, machine busy (broadcast to {} clients) | {} µs, {} % | | |\n",
        a["large"],
        f(&large["server_cpu_us_per_frame"]),
        f(&large["machine_busy_pct"])
    ));
    let large_ok = large["p99_ms"].as_f64().is_some_and(|p| p <= 20.0);
    s.push_str(&format!(
        "{} ≤ 20 ms | {} |\n",
        lat(
            &format!(
                "broadcast to {} clients, {} meshlets",
                a["large"], a["meshlets"]
            ),
            large
        ),
        mark(large_ok)
    ));
    let best = r["throughput"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["complete"].as_bool() == Some(true))
        .max_by(|x, y| {
            let fx = x["frames_per_s"].as_f64().unwrap_or(0.0);
            let fy = y["frames_per_s"].as_f64().unwrap_or(0.0);
            fx.total_cmp(&fy)
        });
    for step in r["throughput"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} broadcasts/s to {} clients: frames/s, p99 | {} frames/s, p99 {} ms{} | | |\n",
            f(&step["rate_per_s"]),
            step["clients"],
            f(&step["frames_per_s"]),
            f(&step["p99_ms"]),
            if step["complete"].as_bool() == Some(true) {
                ""
            } else {
                " (incomplete)"
            }
        ));
    }
    if let Some(best) = best {
        s.push_str(&format!(
            "| messages/s fanned out (best complete step) | {} | | |\n",
            f(&best["frames_per_s"])
        ));
    }
    let sc = &r["slow_client"];
    let cut = sc["cut_after_ms"].as_f64();
    let code = sc["slow_close"]
        .as_object()
        .and_then(|c| c.keys().next().cloned())
        .unwrap_or_default();
    s.push_str(&format!(
        "| client that stops reading ({} broadcasts/s to {} clients): cut after | {} ms, close {} | ≤ 1000 ms, 4408 | {} |\n",
        sc["rate_per_s"], a["small"],
        cut.map_or("not cut".to_owned(), |c| format!("{c:.0}")), if code.is_empty() { "–" } else { &code },
        mark(cut.is_some_and(|c| c <= 1000.0) && code == "4408")
    ));
    let change = sc["p99_change"].as_f64().unwrap_or(0.0);
    s.push_str(&format!(
        "| others' p99 without / with it | {} / {} ms ({:+.0}%) | ≤ +10% | {} |\n",
        f(&sc["baseline"]["p99_ms"]),
        f(&sc["with_slow"]["p99_ms"]),
        change * 100.0,
        mark(change <= 0.10)
    ));
    s
}

// ------------------------------------------------------------------------------- peer

/// The peer's latency phases: for each size, that many clients spread over every server,
/// `broadcasts` broadcasts entering at the last server (as the meshlet run's do), CPU
/// measured as for meshlet; then peer.json, and the side-by-side table when the meshlet
/// run's results are given.
async fn peer(args: PeerArgs) -> Result<()> {
    if args.ws.len() != args.api.len() || args.ws.len() != args.pid.len() || args.ws.is_empty() {
        return Err(LoadError::Protocol(
            "give one --ws, --api and --pid per peer server".into(),
        ));
    }
    let pad = "x".repeat(args.pad);
    let spawn = Spawn {
        secret: args.secret.clone(),
        per_worker: args.per_worker,
        proto: args.proto,
    };
    let mut apis = Vec::new();
    for a in &args.api {
        apis.push(Api::connect_to(*a, args.proto).await?);
    }
    let n = args.ws.len();
    let zero = vec![0u64; n];
    let last = n - 1;
    let every = Duration::from_millis(args.interval_ms);
    let mut phases = Vec::new();
    for &size in &args.sizes {
        let mut fleet = Fleet::start(&spawn, &args.ws, size, 0).await?;
        settle(&mut apis, &split(size, n)).await?;
        let phase = measured_phase(
            &mut fleet,
            &mut apis[last],
            &args.pid,
            args.broadcasts,
            every,
            &pad,
        )
        .await?;
        eprintln!(
            "[realtime_load] {}: {size} clients over {n} servers: {phase}",
            args.name
        );
        phases.push(phase);
        fleet.stop().await;
        settle(&mut apis, &zero).await?;
    }
    let results = json!({"machine": machine(), "peer": args.name, "args": {
        "sizes": args.sizes, "per_worker": args.per_worker, "broadcasts": args.broadcasts,
        "interval_ms": args.interval_ms, "pad": args.pad, "servers": n}, "phases": phases});
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("peer.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    if let Some(path) = &args.meshlet {
        let meshlet: Value = serde_json::from_slice(&std::fs::read(path)?)?;
        let table = render_compare(&meshlet, &results);
        std::fs::write(args.out.join("compare.md"), &table)?;
        print!("{table}");
    }
    Ok(())
}

/// The meshlet run's over-every-meshlet phases (small, mid, large) that have CPU figures.
fn meshlet_phases(meshlet: &Value) -> Vec<&Value> {
    ["small", "mid", "large"]
        .iter()
        .map(|k| &meshlet[*k])
        .filter(|p| p["server_cpu_us_per_frame"].is_number())
        .collect()
}

/// The side-by-side table: each client count both ran, latency and server CPU per frame,
/// with meshlet ÷ peer (issue 18's goal: ≤ 0.5 for p99 and for CPU).
fn render_compare(meshlet: &Value, peer: &Value) -> String {
    let name = peer["peer"].as_str().unwrap_or("peer");
    let f = |v: &Value| v.as_f64().map_or("–".to_owned(), |x| format!("{x:.1}"));
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            format!("{r:.2}{}", if r <= 0.5 { "" } else { " **>0.5**" })
        }
        _ => "–".to_owned(),
    };
    let frames = |p: &Value| format!("{}/{}", p["received"], p["expected"]);
    let cpu = |p: &Value| {
        format!(
            "{} ({} user + {} sys)",
            f(&p["server_cpu_us_per_frame"]),
            f(&p["server_user_us_per_frame"]),
            f(&p["server_sys_us_per_frame"])
        )
    };
    let a = &peer["args"];
    let mut s = format!(
        "\nHub fan-out, meshlet against {name} ({} servers each on one redis-server; {} broadcasts every {} ms to one room, {} B of padding; ratio = meshlet ÷ {name}, goal ≤ 0.5):\n\n",
        a["servers"], a["broadcasts"], a["interval_ms"], a["pad"]
    );
    s.push_str(&format!(
        "| clients | meshlet p50 / p99 ms | {name} p50 / p99 ms | p99 ratio | meshlet CPU µs/frame | {name} CPU µs/frame | CPU ratio | frames meshlet / {name} | machine busy % |\n|---|---|---|---|---|---|---|---|---|\n"
    ));
    let ours = meshlet_phases(meshlet);
    for p in peer["phases"].as_array().into_iter().flatten() {
        let m = ours.iter().find(|m| m["clients"] == p["clients"]);
        let null = Value::Null;
        let m = m.copied().unwrap_or(&null);
        s.push_str(&format!(
            "| {} | {} / {} | {} / {} | {} | {} | {} | {} | {} / {} | {} / {} |\n",
            p["clients"],
            f(&m["p50_ms"]),
            f(&m["p99_ms"]),
            f(&p["p50_ms"]),
            f(&p["p99_ms"]),
            ratio(&m["p99_ms"], &p["p99_ms"]),
            cpu(m),
            cpu(p),
            ratio(&m["server_cpu_us_per_frame"], &p["server_cpu_us_per_frame"]),
            if m.is_null() {
                "–".to_owned()
            } else {
                frames(m)
            },
            frames(p),
            f(&m["machine_busy_pct"]),
            f(&p["machine_busy_pct"]),
        ));
    }
    s.push_str(&format!(
        "\nCPU per frame = utime + stime of both servers (/proc/PID/stat, {} ms ticks) over the phase ÷ frames the clients received; below ~100 ticks a phase's figure is coarse. Latency = receive time at the client − send time in the payload, on the same machine as the servers.\n",
        1000.0 / ticks_per_s()
    ));
    s
}
