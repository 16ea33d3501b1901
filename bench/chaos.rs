//! The chaos suite behind `bash bench/chaos` (docs/reliability.md, "Chaos"): steady
//! fixed-rate traffic (HTTP/1.1 GET and POST, h2c GET, gRPC unary) through two caller
//! meshlets to three callee instances, events published and delivered, WebSocket hub
//! clients receiving room broadcasts, while faults are injected one at a time. For each
//! fault it prints one table row (requests, failures, p99 before / during / after, seconds
//! to recover, events lost or duplicated, hub clients dropped and messages missed) and
//! writes the table to `bench/out/chaos-<stamp>.md`.
//!
//! One binary, two roles:
//! - `chaos --bench` (what `bench/chaos` runs): the driver. It starts every process itself
//!   (redis-server, the meshlets from `MESHLET_BIN`, the callee apps), generates the load,
//!   injects the faults and kills every child at the end, also on failure (`kill_on_drop`,
//!   and `PR_SET_PDEATHSIG` should the driver itself die).
//! - `chaos app NAME PORT`: one callee app, a child process so a fault can SIGKILL or
//!   SIGSTOP it: HTTP/1.1 and h2c on one port, gRPC unary, `GET /health` answering what
//!   the driver last wrote on its stdin (`health up` / `health down`), and every event
//!   delivery written to stdout as `E <event id>` before it is answered 200.
//!
//! Knobs: `CHAOS_SMOKE=1` (three faults, a few seconds per phase), `MESHLET_BIN` (the
//! meshlet binary), `CHAOS_STAMP` (the output file's stamp), `CHAOS_FAULTS` (a comma list
//! of fault names to run, in the given order). Everything listens on 127.0.0.1, or in
//! network namespaces this driver creates and removes (the partition). Every phase is
//! bounded in time.
//!
//! Run bare (as `cargo test --all-targets` runs bench targets) it prints its usage.

#[path = "grpc_frame.rs"]
#[allow(dead_code)] // the stream half (`take_message`) is the gRPC load client's
mod frame;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;

/// The hub room every client joins and every broadcast goes to.
const ROOM: &str = "chaos";
/// The event type published and subscribed.
const EVENT_TYPE: &str = "chaos.tick";
/// The longest a request of the load may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one control call (publish, broadcast, readiness probe) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// Registry settings of every meshlet (docs/registry.md): short, so recovery is quick.
const REGISTRY_TTL: Duration = Duration::from_secs(6);
/// The callers' `breaker.open_for` toward the callees.
const OPEN_FOR: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
enum ChaosError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
}

type Result<T> = std::result::Result<T, ChaosError>;

fn setup(message: impl Into<String>) -> ChaosError {
    ChaosError::Setup(message.into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("app") {
        return app::main(&args[1..]);
    }
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("chaos: the chaos suite; run it with `bash bench/chaos` (CHAOS_SMOKE=1 for the short mode)");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chaos: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(driver::run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos: FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The callee app (`chaos app NAME PORT`), run as a child process of the driver.
mod app {
    use super::*;

    type AppBody = StreamBody<
        futures_util::stream::Iter<
            std::vec::IntoIter<std::result::Result<Frame<Bytes>, Infallible>>,
        >,
    >;

    pub fn main(args: &[String]) -> ExitCode {
        let (name, port) = match args {
            [name, port] => match port.parse::<u16>() {
                Ok(port) => (name.clone(), port),
                Err(e) => {
                    eprintln!("chaos app: bad port {port}: {e}");
                    return ExitCode::FAILURE;
                }
            },
            _ => {
                eprintln!("usage: chaos app NAME PORT");
                return ExitCode::FAILURE;
            }
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("chaos app: runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(serve(name, port)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chaos app: {e}");
                ExitCode::FAILURE
            }
        }
    }

    async fn serve(name: String, port: u16) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        // The driver flips the health answer over stdin (a plain thread: tokio's stdin is
        // not in this build's features); its end closing ends nothing.
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                match line.trim() {
                    "health up" => flag.store(true, Ordering::SeqCst),
                    "health down" => flag.store(false, Ordering::SeqCst),
                    _ => {}
                }
            }
        });
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready {}", listener.local_addr()?.port())?;
            out.flush()?;
        }
        let name: Arc<str> = name.into();
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (healthy, name) = (healthy.clone(), name.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    answer(req, healthy.clone(), name.clone())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    fn body(frames: Vec<Frame<Bytes>>) -> AppBody {
        StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    async fn answer(
        req: Request<Incoming>,
        healthy: Arc<AtomicBool>,
        name: Arc<str>,
    ) -> std::result::Result<Response<AppBody>, Infallible> {
        let path = req.uri().path().to_owned();
        if path == "/health" {
            let up = healthy.load(Ordering::SeqCst);
            let mut resp = Response::new(body(vec![Frame::data(Bytes::from_static(b"{}"))]));
            if !up {
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            return Ok(resp);
        }
        if path == "/bench.Echo/Unary" {
            let _ = req.into_body().collect().await;
            let mut trailers = HeaderMap::with_capacity(1);
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let mut resp = Response::new(body(vec![
                Frame::data(frame::framed(frame::HELLO)),
                Frame::trailers(trailers),
            ]));
            resp.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            return Ok(resp);
        }
        let event_id = req
            .headers()
            .get("x-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let read = req.into_body().collect().await;
        if path.starts_with("/events/") {
            if read.is_err() {
                // A body cut short is not a delivery: answer 500 so it comes again.
                let mut resp = Response::new(body(vec![]));
                *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return Ok(resp);
            }
            if let Some(id) = event_id {
                // Written (and flushed into the pipe) before the 200: a delivery the
                // meshlet saw answered is always in the driver's count.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "E {id}");
                let _ = out.flush();
            }
        }
        Ok(Response::new(body(vec![Frame::data(Bytes::from(
            format!("ok {name}"),
        ))])))
    }
}

/// The driver: processes, load, faults, the table.
mod driver {
    use super::*;

    /// The run's shape: the full mode or the CI smoke.
    pub struct Settings {
        pub smoke: bool,
        pub before: Duration,
        pub during: Duration,
        /// How long inside `during` a fault with an end (a restart, SIGCONT, a fix) lasts.
        pub hold: Duration,
        pub after: Duration,
        /// Requests per second of each kind through each caller.
        pub rate: u32,
        pub events_rate: u32,
        pub broadcast_rate: u32,
        pub hub_clients: usize,
        pub meshlet: PathBuf,
        pub out_dir: PathBuf,
        pub stamp: String,
        pub faults: Vec<Fault>,
    }

    impl Settings {
        fn from_env() -> Result<Settings> {
            let smoke = std::env::var("CHAOS_SMOKE").is_ok_and(|v| v == "1");
            let meshlet = std::env::var_os("MESHLET_BIN")
                .map(PathBuf::from)
                .ok_or_else(|| setup("MESHLET_BIN is not set (bash bench/chaos sets it)"))?;
            if !meshlet.is_file() {
                return Err(setup(format!(
                    "MESHLET_BIN={} is not a file",
                    meshlet.display()
                )));
            }
            let stamp = std::env::var("CHAOS_STAMP").unwrap_or_else(|_| {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                secs.to_string()
            });
            let faults = match std::env::var("CHAOS_FAULTS") {
                Ok(list) if !list.trim().is_empty() => list
                    .split(',')
                    .map(|name| {
                        Fault::ALL
                            .iter()
                            .copied()
                            .find(|f| f.name() == name.trim())
                            .ok_or_else(|| setup(format!("CHAOS_FAULTS: unknown fault `{name}`")))
                    })
                    .collect::<Result<Vec<_>>>()?,
                _ if smoke => vec![Fault::CalleeKill, Fault::CalleeHang, Fault::RedisKill],
                _ => Fault::ALL.to_vec(),
            };
            let out_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/out"));
            let s = |n| Duration::from_secs(n);
            Ok(if smoke {
                Settings {
                    smoke,
                    before: s(2),
                    during: s(4),
                    hold: s(2),
                    after: s(4),
                    rate: 10,
                    events_rate: 20,
                    broadcast_rate: 5,
                    hub_clients: 3,
                    meshlet,
                    out_dir,
                    stamp,
                    faults,
                }
            } else {
                Settings {
                    smoke,
                    before: s(4),
                    during: s(8),
                    hold: s(4),
                    after: s(8),
                    rate: 25,
                    events_rate: 40,
                    broadcast_rate: 10,
                    hub_clients: 6,
                    meshlet,
                    out_dir,
                    stamp,
                    faults,
                }
            })
        }
    }

    /// The faults, in the order the full mode runs them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fault {
        CalleeKill,
        CalleeHang,
        CalleeMove,
        CalleeMeshletKill,
        RedisKill,
        RedisDebugSleep,
        RedisClientPause,
        HealthFlap,
        ConfigGarbage,
        FdExhaustion,
        Partition,
    }

    impl Fault {
        pub const ALL: [Fault; 11] = [
            Fault::CalleeKill,
            Fault::CalleeHang,
            Fault::CalleeMove,
            Fault::CalleeMeshletKill,
            Fault::RedisKill,
            Fault::RedisDebugSleep,
            Fault::RedisClientPause,
            Fault::HealthFlap,
            Fault::ConfigGarbage,
            Fault::FdExhaustion,
            Fault::Partition,
        ];

        pub fn name(self) -> &'static str {
            match self {
                Fault::CalleeKill => "callee-kill",
                Fault::CalleeHang => "callee-hang",
                Fault::CalleeMove => "callee-move",
                Fault::CalleeMeshletKill => "callee-meshlet-kill",
                Fault::RedisKill => "redis-kill",
                Fault::RedisDebugSleep => "redis-debug-sleep",
                Fault::RedisClientPause => "redis-client-pause",
                Fault::HealthFlap => "health-flap",
                Fault::ConfigGarbage => "config-garbage",
                Fault::FdExhaustion => "fd-exhaustion",
                Fault::Partition => "partition",
            }
        }

        fn describe(self, hold: Duration) -> String {
            let h = hold.as_secs();
            match self {
                Fault::CalleeKill => format!("callee 1 (app + meshlet) SIGKILLed; back on the same ports after {h} s"),
                Fault::CalleeHang => format!("callee 2 (app + meshlet) SIGSTOPped for {h} s, then SIGCONT"),
                Fault::CalleeMove => "callee 3 (app + meshlet) SIGKILLed and replaced at once on new ports".into(),
                Fault::CalleeMeshletKill => format!("callee 1's meshlet SIGKILLed (its app stays); restarted after {h} s"),
                Fault::RedisKill => format!("redis-server SIGKILLed; restarted empty after {h} s"),
                Fault::RedisDebugSleep => format!("`DEBUG SLEEP {h}`: Redis answers nothing for {h} s"),
                Fault::RedisClientPause => format!("`CLIENT PAUSE {}000 ALL`", h),
                Fault::HealthFlap => "callee 2's health check answers 503 / 200, flipping every second".into(),
                Fault::ConfigGarbage => format!("caller 1's and callee 1's config files rewritten with garbage; fixed after {h} s"),
                Fault::FdExhaustion => format!("caller 2's RLIMIT_NOFILE lowered to its open fds + 64 and its outbound flooded with idle connections; freed after {h} s"),
                Fault::Partition => format!("callee 3 moved into a network namespace (veth); the veth cut for {h} s"),
            }
        }
    }

    // ------------------------------------------------------------------ processes

    /// A child process, SIGKILLed when dropped (and when the driver dies: PDEATHSIG).
    pub struct Proc {
        pub name: String,
        child: Child,
    }

    impl Proc {
        fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
            cmd.kill_on_drop(true);
            // SAFETY: the closure runs in the forked child before exec and only calls
            // prctl(PR_SET_PDEATHSIG), which is async-signal-safe and touches no memory
            // of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                        .map_err(std::io::Error::from)
                });
            }
            let child = cmd
                .spawn()
                .map_err(|e| setup(format!("cannot start {name}: {e}")))?;
            Ok(Proc {
                name: name.to_owned(),
                child,
            })
        }

        pub fn pid(&self) -> Option<Pid> {
            self.child.id().and_then(|id| Pid::from_raw(id as i32))
        }

        pub fn signal(&self, signal: Signal) {
            if let Some(pid) = self.pid() {
                let _ = kill_process(pid, signal);
            }
        }

        /// SIGKILL, and reaped.
        pub async fn kill(&mut self) {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }

        pub fn alive(&mut self) -> bool {
            matches!(self.child.try_wait(), Ok(None))
        }
    }

    fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))?)
    }

    fn free_port() -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn local(port: u16) -> SocketAddr {
        SocketAddr::new(LOOPBACK, port)
    }

    /// redis-server of the run's own: a free port, no persistence, `DEBUG` allowed from
    /// loopback (Redis 7 refuses it otherwise).
    struct Redis {
        port: u16,
        dir: PathBuf,
        logs: PathBuf,
        proc: Option<Proc>,
    }

    impl Redis {
        async fn start(&mut self) -> Result<()> {
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--enable-debug-command",
                    "local",
                ])
                .arg("--dir")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(log_file(&self.logs, "redis")?)
                .stderr(log_file(&self.logs, "redis")?);
            self.proc = Some(Proc::spawn("redis-server", cmd)?);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.cli(&["ping"]).await.as_deref() == Some("PONG") {
                    return Ok(());
                }
                sleep(Duration::from_millis(50)).await;
            }
            Err(setup(format!(
                "redis-server did not answer on port {}",
                self.port
            )))
        }

        /// One redis-cli command; its trimmed output, None when it failed.
        async fn cli(&self, args: &[&str]) -> Option<String> {
            let out = timeout(
                Duration::from_secs(30),
                Command::new("redis-cli")
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .args(args)
                    .kill_on_drop(true)
                    .stdin(Stdio::null())
                    .output(),
            )
            .await
            .ok()?
            .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    #[derive(Clone, Copy)]
    struct MeshPorts {
        outbound: u16,
        inbound: u16,
        api: u16,
        telemetry: u16,
    }

    impl MeshPorts {
        fn free() -> Result<MeshPorts> {
            // Held open together so the four differ.
            let hold: Vec<std::net::TcpListener> = (0..4)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<std::io::Result<_>>()?;
            let port = |i: usize| hold[i].local_addr().map(|a| a.port());
            Ok(MeshPorts {
                outbound: port(0)?,
                inbound: port(1)?,
                api: port(2)?,
                telemetry: port(3)?,
            })
        }
    }

    fn callee_config(name: &str, app_port: u16, p: MeshPorts, redis: &str, host: IpAddr) -> String {
        format!(
            r#"# {name}: a callee instance's meshlet (bench/chaos): the app speaks h2c (gRPC), health-checked;
# delivers chaos.tick events; holds hub clients.
service: {{name: callee, app: "http://127.0.0.1:{app_port}", protocol: h2, health: /health, health_interval: 500ms, advertise: "{host}:{inb}"}}
listen: {{outbound: "127.0.0.1:{out}", inbound: "{host}:{inb}", api: "{host}:{api}", telemetry: "{host}:{tel}"}}
workers: 1
shutdown_grace: 1s
registry: {{redis: "{redis}", ttl: 6s, heartbeat: 2s, resync: 1s, allow_loopback: true}}
events:
  subscriptions:
    - {{type: {EVENT_TYPE}, path: /events/tick, backoff: 100ms, max_backoff: 1s, timeout: 1s, concurrency: 4, max_attempts: 100, start: earliest}}
realtime:
  path: /ws
  allow_anonymous: true
  history: {{size: 5000, ttl: 10m}}
"#,
            out = p.outbound,
            inb = p.inbound,
            api = p.api,
            tel = p.telemetry,
        )
    }

    fn caller_config(p: MeshPorts, redis: &str) -> String {
        format!(
            r#"# A caller's meshlet (bench/chaos): discovery only (no app); the policy toward callee.
service: {{name: caller}}
listen: {{outbound: "127.0.0.1:{out}", inbound: "127.0.0.1:{inb}", api: "127.0.0.1:{api}", telemetry: "127.0.0.1:{tel}"}}
workers: 1
shutdown_grace: 1s
registry: {{redis: "{redis}", ttl: 6s, heartbeat: 2s, resync: 1s, allow_loopback: true}}
services:
  callee:
    timeout: 3s
    connect_timeout: 200ms
    retry: {{attempts: 3, per_try_timeout: 500ms, backoff: 20ms, max_backoff: 200ms, on: [connect-failure, reset, 502, 503, 504, unavailable], budget: {{percent: 50, per_second: 100}}}}
    breaker: {{failures: 5, open_for: {open_for}s, half_open_probes: 1}}
"#,
            out = p.outbound,
            inb = p.inbound,
            api = p.api,
            tel = p.telemetry,
            open_for = OPEN_FOR.as_secs(),
        )
    }

    /// `meshlet run` for one pod; inside network namespace `netns` when given (`ip netns
    /// exec` execs in place, so the process is the meshlet itself).
    fn meshlet_command(
        meshlet: &Path,
        config: &Path,
        pod: &str,
        logs: &Path,
        netns: Option<&str>,
    ) -> Result<Command> {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(meshlet);
                c
            }
            None => Command::new(meshlet),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .env("POD_NAME", pod)
            .env_remove("POD_IP")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("MESHLET_CONFIG")
            .stdin(Stdio::null())
            .stdout(log_file(logs, pod)?)
            .stderr(log_file(logs, pod)?);
        Ok(cmd)
    }

    /// One callee app process with its stdin (health commands).
    struct App {
        proc: Proc,
        stdin: ChildStdin,
    }

    /// One callee instance: its app and its meshlet.
    struct Callee {
        pod: String,
        app_port: u16,
        ports: MeshPorts,
        /// Where its meshlet's inbound, API and telemetry listen (127.0.0.1, or the
        /// partition's namespace address).
        host: IpAddr,
        config: PathBuf,
        app: Option<App>,
        meshlet: Option<Proc>,
        /// Runs the meshlet inside this network namespace (the partition fault).
        netns: Option<String>,
    }

    struct Caller {
        ports: MeshPorts,
        config: PathBuf,
        text: String,
        meshlet: Proc,
    }

    // ------------------------------------------------------------------ shared records

    #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
    enum Kind {
        H1Get,
        H1Post,
        H2Get,
        Grpc,
    }

    impl Kind {
        const ALL: [Kind; 4] = [Kind::H1Get, Kind::H1Post, Kind::H2Get, Kind::Grpc];

        /// POST without `Idempotency-Key` is the one kind meshlet may not repeat; gRPC is
        /// replayable because the callers' `retry.on` names `unavailable` (docs/policy.md).
        fn idempotent(self) -> bool {
            self != Kind::H1Post
        }
    }

    struct Sample {
        sent: Instant,
        done: Instant,
        kind: Kind,
        ok: bool,
        error: Option<String>,
    }

    #[derive(Default)]
    struct Events {
        /// Acknowledged publishes: event id and when its first attempt was sent.
        acked: Mutex<Vec<(String, Instant)>>,
        /// Publishes given up after every attempt failed (never stored: not "lost"), by
        /// when the first attempt was sent.
        refused: Mutex<Vec<Instant>>,
        /// Deliveries the apps answered, by event id.
        delivered: Mutex<HashMap<String, u32>>,
    }

    #[derive(Default)]
    struct HubClient {
        received: Mutex<HashSet<u64>>,
        drops: Mutex<Vec<Instant>>,
        /// Joins with `since` answered `recovered: false`.
        unrecovered: Mutex<Vec<Instant>>,
    }

    #[derive(Default)]
    struct Hub {
        /// Broadcasts answered 202: sequence number and when.
        acked: Mutex<Vec<(u64, Instant)>>,
        /// Broadcasts no callee meshlet answered 202 (not sent: not "missed").
        refused: Mutex<Vec<Instant>>,
        clients: Vec<Arc<HubClient>>,
    }

    struct Shared {
        samples: Mutex<Vec<Sample>>,
        events: Events,
        hub: Hub,
        stop: AtomicBool,
        /// Callee meshlets' inbound (hub) and API addresses, as instances come and go.
        hub_addrs: RwLock<Vec<SocketAddr>>,
        api_addrs: RwLock<Vec<SocketAddr>>,
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ------------------------------------------------------------------ the world

    struct World {
        settings: Settings,
        logs: PathBuf,
        redis: Redis,
        callees: Vec<Callee>,
        callers: Vec<Caller>,
        shared: Arc<Shared>,
        exe: PathBuf,
        notes: Vec<String>,
    }

    impl World {
        async fn spawn_app(&self, pod: &str, port: u16, netns: Option<&str>) -> Result<App> {
            let mut cmd = match netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns]).arg(&self.exe);
                    c
                }
                None => Command::new(&self.exe),
            };
            cmd.args(["app", pod, &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log_file(&self.logs, &format!("{pod}-app"))?);
            let mut proc = Proc::spawn(&format!("{pod}-app"), cmd)?;
            let stdin = proc.child.stdin.take().ok_or_else(|| setup("app stdin"))?;
            let stdout = proc
                .child
                .stdout
                .take()
                .ok_or_else(|| setup("app stdout"))?;
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(id) = line.strip_prefix("E ") {
                        *lock(&shared.events.delivered)
                            .entry(id.to_owned())
                            .or_insert(0) += 1;
                    } else if line.starts_with("ready ") {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            });
            match timeout(Duration::from_secs(10), ready_rx).await {
                Ok(Ok(())) => Ok(App { proc, stdin }),
                _ => Err(setup(format!("{pod}'s app did not start (see its log)"))),
            }
        }

        fn spawn_callee_meshlet(&self, c: &Callee) -> Result<Proc> {
            let cmd = meshlet_command(
                &self.settings.meshlet,
                &c.config,
                &c.pod,
                &self.logs,
                c.netns.as_deref(),
            )?;
            Proc::spawn(&c.pod, cmd)
        }

        /// A new callee instance on fresh ports (its app and meshlet started, not yet ready).
        async fn new_callee(
            &self,
            pod: &str,
            netns: Option<String>,
            host: IpAddr,
            redis_url: &str,
        ) -> Result<Callee> {
            let app_port = free_port()?;
            let ports = MeshPorts::free()?;
            let config = self.logs.join(format!("{pod}.yaml"));
            std::fs::write(
                &config,
                callee_config(pod, app_port, ports, redis_url, host),
            )?;
            let mut callee = Callee {
                pod: pod.to_owned(),
                app_port,
                ports,
                host,
                config,
                app: None,
                meshlet: None,
                netns,
            };
            callee.app = Some(
                self.spawn_app(pod, app_port, callee.netns.as_deref())
                    .await?,
            );
            callee.meshlet = Some(self.spawn_callee_meshlet(&callee)?);
            Ok(callee)
        }

        fn publish_callee_addrs(&self) {
            let hub: Vec<SocketAddr> = self
                .callees
                .iter()
                .map(|c| SocketAddr::new(c.host, c.ports.inbound))
                .collect();
            let api: Vec<SocketAddr> = self
                .callees
                .iter()
                .map(|c| SocketAddr::new(c.host, c.ports.api))
                .collect();
            *self
                .shared
                .hub_addrs
                .write()
                .unwrap_or_else(|p| p.into_inner()) = hub;
            *self
                .shared
                .api_addrs
                .write()
                .unwrap_or_else(|p| p.into_inner()) = api;
        }

        async fn kill_callee(&mut self, i: usize) {
            if let Some(mut m) = self.callees[i].meshlet.take() {
                m.kill().await;
            }
            if let Some(mut a) = self.callees[i].app.take() {
                a.proc.kill().await;
            }
        }

        async fn restart_callee_in_place(&mut self, i: usize) -> Result<()> {
            let (pod, port, netns) = {
                let c = &self.callees[i];
                (c.pod.clone(), c.app_port, c.netns.clone())
            };
            let app = self.spawn_app(&pod, port, netns.as_deref()).await?;
            self.callees[i].app = Some(app);
            let m = self.spawn_callee_meshlet(&self.callees[i])?;
            self.callees[i].meshlet = Some(m);
            Ok(())
        }

        async fn set_health(&mut self, i: usize, up: bool) {
            if let Some(app) = self.callees[i].app.as_mut() {
                let line: &[u8] = if up { b"health up\n" } else { b"health down\n" };
                let _ = app.stdin.write_all(line).await;
                let _ = app.stdin.flush().await;
            }
        }
    }

    // ------------------------------------------------------------------ HTTP helpers

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        trailers: Option<HeaderMap>,
        body: Bytes,
    }

    async fn connect_h1(
        addr: SocketAddr,
    ) -> std::result::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn read_answer(resp: Response<Incoming>) -> std::result::Result<Answer, String> {
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.map_err(|e| format!("body: {e}"))?;
        let trailers = collected.trailers().cloned();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            trailers,
            body: collected.to_bytes(),
        })
    }

    /// One request on a fresh HTTP/1.1 connection, bounded by [`CONTROL_TIMEOUT`].
    async fn once(
        addr: SocketAddr,
        req: Request<Full<Bytes>>,
    ) -> std::result::Result<Answer, String> {
        timeout(CONTROL_TIMEOUT, async {
            let mut sender = connect_h1(addr).await?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            read_answer(resp).await
        })
        .await
        .map_err(|_| "timed out".to_owned())?
    }

    async fn get(addr: SocketAddr, path: &str) -> std::result::Result<Answer, String> {
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        once(addr, req).await
    }

    /// HTTP/1.1 connections to one caller, reused (a connection idle for 20 s is dropped
    /// rather than risk the meshlet's keep-alive closing it under a request).
    struct H1Pool {
        addr: SocketAddr,
        idle: Mutex<
            Vec<(
                hyper::client::conn::http1::SendRequest<Full<Bytes>>,
                Instant,
            )>,
        >,
    }

    impl H1Pool {
        async fn request(&self, req: Request<Full<Bytes>>) -> std::result::Result<Answer, String> {
            let pooled = {
                let mut idle = lock(&self.idle);
                let mut found = None;
                while let Some((sender, at)) = idle.pop() {
                    if at.elapsed() < Duration::from_secs(20) && !sender.is_closed() {
                        found = Some(sender);
                        break;
                    }
                }
                found
            };
            let mut sender = match pooled {
                Some(s) => s,
                None => connect_h1(self.addr).await?,
            };
            sender
                .ready()
                .await
                .map_err(|e| format!("connection: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let answer = read_answer(resp).await?;
            lock(&self.idle).push((sender, Instant::now()));
            Ok(answer)
        }
    }

    /// One multiplexed h2c connection to one caller, made again when it closes.
    struct H2Conn {
        addr: SocketAddr,
        sender: tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>>,
    }

    impl H2Conn {
        async fn request(&self, req: Request<Full<Bytes>>) -> std::result::Result<Answer, String> {
            let mut sender = {
                let mut slot = self.sender.lock().await;
                match slot.as_ref() {
                    Some(s) if !s.is_closed() => s.clone(),
                    _ => {
                        let stream = TcpStream::connect(self.addr)
                            .await
                            .map_err(|e| format!("connect: {e}"))?;
                        let _ = stream.set_nodelay(true);
                        let (s, conn) = hyper::client::conn::http2::handshake(
                            TokioExecutor::new(),
                            TokioIo::new(stream),
                        )
                        .await
                        .map_err(|e| format!("h2 handshake: {e}"))?;
                        tokio::spawn(conn);
                        *slot = Some(s.clone());
                        s
                    }
                }
            };
            sender
                .ready()
                .await
                .map_err(|e| format!("h2 connection: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            read_answer(resp).await
        }
    }

    struct CallerClients {
        h1: H1Pool,
        h2: H2Conn,
    }

    fn load_request(kind: Kind, n: u64) -> std::result::Result<Request<Full<Bytes>>, http::Error> {
        match kind {
            Kind::H1Get | Kind::H2Get => Request::get(format!("http://callee/get/{n}"))
                .header("host", "callee")
                .body(Full::new(Bytes::new())),
            Kind::H1Post => Request::post(format!("http://callee/post/{n}"))
                .header("host", "callee")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!("{{\"n\":{n}}}")))),
            Kind::Grpc => Request::post("http://callee/bench.Echo/Unary")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(frame::framed(frame::HELLO))),
        }
    }

    /// None when the answer is a success; else what went wrong, short.
    fn judge(kind: Kind, a: &Answer) -> Option<String> {
        let mesh_error = a
            .headers
            .get("x-mesh-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if a.status != StatusCode::OK {
            return Some(
                format!("{} {mesh_error}", a.status.as_u16())
                    .trim()
                    .to_owned(),
            );
        }
        if kind == Kind::Grpc {
            let status = a
                .headers
                .get("grpc-status")
                .or_else(|| a.trailers.as_ref().and_then(|t| t.get("grpc-status")))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none");
            if status != "0" {
                return Some(
                    format!("grpc-status {status} {mesh_error}")
                        .trim()
                        .to_owned(),
                );
            }
        } else if !a.body.starts_with(b"ok ") {
            return Some("200 with a foreign body".into());
        }
        None
    }

    async fn one_request(shared: Arc<Shared>, clients: Arc<CallerClients>, kind: Kind, n: u64) {
        let sent = Instant::now();
        let outcome = match load_request(kind, n) {
            Ok(req) => {
                let call = async {
                    match kind {
                        Kind::H1Get | Kind::H1Post => clients.h1.request(req).await,
                        Kind::H2Get | Kind::Grpc => clients.h2.request(req).await,
                    }
                };
                match timeout(REQUEST_TIMEOUT, call).await {
                    Ok(Ok(answer)) => judge(kind, &answer),
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("client timeout (5 s)".into()),
                }
            }
            Err(e) => Some(format!("request: {e}")),
        };
        lock(&shared.samples).push(Sample {
            sent,
            done: Instant::now(),
            kind,
            ok: outcome.is_none(),
            error: outcome,
        });
    }

    /// Fixed-rate load of one kind through one caller until `stop`: every tick sends one
    /// request in a task of its own, so a slow answer never holds the next one back.
    async fn load_stream(shared: Arc<Shared>, clients: Arc<CallerClients>, kind: Kind, rate: u32) {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut n = 0u64;
        while !shared.stop.load(Ordering::SeqCst) {
            tick.tick().await;
            n += 1;
            tokio::spawn(one_request(shared.clone(), clients.clone(), kind, n));
        }
    }

    /// Publishes `ev-N` at a fixed rate through the callers' local APIs, alternating; a
    /// failed publish is sent again with the same id (docs/events.md: a 503 means "not
    /// stored"), up to 5 attempts.
    async fn publisher(shared: Arc<Shared>, apis: Vec<SocketAddr>, rate: u32) {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut n = 0u64;
        while !shared.stop.load(Ordering::SeqCst) {
            tick.tick().await;
            n += 1;
            let (shared, apis) = (shared.clone(), apis.clone());
            tokio::spawn(async move {
                let id = format!("ev-{n}");
                let sent = Instant::now();
                for attempt in 0..5u64 {
                    let api = apis[((n + attempt) % apis.len() as u64) as usize];
                    let req = Request::post(format!("/v1/events/{EVENT_TYPE}"))
                        .header("host", "localhost")
                        .header("content-type", "application/json")
                        .header("x-event-id", &id)
                        .body(Full::new(Bytes::from(format!("{{\"n\":{n}}}"))));
                    let Ok(req) = req else { break };
                    if let Ok(a) = once(api, req).await {
                        if a.status == StatusCode::ACCEPTED || a.status == StatusCode::OK {
                            lock(&shared.events.acked).push((id, sent));
                            return;
                        }
                    }
                    sleep(Duration::from_millis(200)).await;
                }
                lock(&shared.events.refused).push(sent);
            });
        }
    }

    /// Broadcasts `N` to the room at a fixed rate through whichever callee meshlet answers.
    async fn broadcaster(shared: Arc<Shared>, rate: u32) {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut n = 0u64;
        while !shared.stop.load(Ordering::SeqCst) {
            tick.tick().await;
            n += 1;
            let shared = shared.clone();
            tokio::spawn(async move {
                let apis = shared
                    .api_addrs
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                for k in 0..apis.len() {
                    let api = apis[(n as usize + k) % apis.len()];
                    let body = json!({"to": {"room": ROOM}, "event": "tick", "data": n});
                    let Ok(req) = Request::post("/v1/broadcast")
                        .header("host", "localhost")
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))
                    else {
                        return;
                    };
                    if let Ok(a) = once(api, req).await {
                        if a.status == StatusCode::ACCEPTED {
                            lock(&shared.hub.acked).push((n, Instant::now()));
                            return;
                        }
                    }
                }
                lock(&shared.hub.refused).push(Instant::now());
            });
        }
    }

    /// One hub client: joins the room, records every message's number, and after a drop
    /// reconnects (its own meshlet first, then the others) and joins again with `since`.
    async fn hub_client(shared: Arc<Shared>, me: Arc<HubClient>, index: usize) {
        let mut offset: Option<String> = None;
        let mut attempt = 0usize;
        while !shared.stop.load(Ordering::SeqCst) {
            let addr = {
                let addrs = shared.hub_addrs.read().unwrap_or_else(|p| p.into_inner());
                if addrs.is_empty() {
                    None
                } else {
                    Some(addrs[(index + attempt) % addrs.len()])
                }
            };
            attempt += 1;
            let Some(addr) = addr else {
                sleep(Duration::from_millis(100)).await;
                continue;
            };
            let ws = match timeout(
                CONTROL_TIMEOUT,
                tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
            )
            .await
            {
                Ok(Ok((ws, _))) => ws,
                _ => {
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (mut tx, mut rx) = ws.split();
            let mut join = json!({"type": "join", "room": ROOM});
            if let Some(since) = &offset {
                join["since"] = json!(since);
            }
            let asked_since = offset.is_some();
            if tx.send(Message::text(join.to_string())).await.is_err() {
                continue;
            }
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let next = match timeout(Duration::from_millis(500), rx.next()).await {
                    Err(_) => continue, // quiet (or a stopped meshlet): check stop again
                    Ok(next) => next,
                };
                let text = match next {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                match frame["type"].as_str() {
                    Some("joined") => {
                        if asked_since && frame["recovered"] != json!(true) {
                            lock(&me.unrecovered).push(Instant::now());
                            offset = None;
                        }
                        if offset.is_none() {
                            offset = frame["offset"].as_str().map(str::to_owned);
                        }
                    }
                    Some("message") => {
                        if let Some(n) = frame["data"].as_u64() {
                            lock(&me.received).insert(n);
                        }
                        if let Some(o) = frame["offset"].as_str() {
                            offset = Some(o.to_owned());
                        }
                    }
                    _ => {}
                }
            }
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            lock(&me.drops).push(Instant::now());
            // Its own meshlet first on the next try.
            attempt = 0;
            sleep(Duration::from_millis(100)).await;
        }
    }

    // ------------------------------------------------------------------ readiness

    async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if check().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(setup(format!("{what} within {within:?}")));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ready(telemetry: SocketAddr) -> bool {
        get(telemetry, "/healthz/ready")
            .await
            .is_ok_and(|a| a.status == StatusCode::OK)
    }

    /// How many callee instances a caller routes to (`up` ones, from `/v1/registry`).
    async fn callee_instances(api: u16) -> usize {
        let Ok(a) = get(local(api), "/v1/registry").await else {
            return 0;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&a.body) else {
            return 0;
        };
        let s = &v["services"]["callee"];
        let list = s.as_array().or_else(|| s["instances"].as_array());
        list.map_or(0, |l| {
            l.iter()
                .filter(|i| i["status"].as_str().is_none_or(|st| st == "up"))
                .count()
        })
    }

    // ------------------------------------------------------------------ the run

    pub async fn run() -> Result<()> {
        let settings = Settings::from_env()?;
        let started = Instant::now();
        std::fs::create_dir_all(&settings.out_dir)?;
        let logs = settings
            .out_dir
            .join(format!("chaos-{}-logs", settings.stamp));
        std::fs::create_dir_all(&logs)?;
        let redis_dir = logs.join("redis");
        std::fs::create_dir_all(&redis_dir)?;
        // The descriptor flood and every process's sockets: the hard limit, as bench/events.
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: nofile.maximum,
                maximum: nofile.maximum,
            },
        );

        let hub_clients = (0..settings.hub_clients)
            .map(|_| Arc::new(HubClient::default()))
            .collect();
        let shared = Arc::new(Shared {
            samples: Mutex::new(Vec::new()),
            events: Events::default(),
            hub: Hub {
                clients: hub_clients,
                ..Hub::default()
            },
            stop: AtomicBool::new(false),
            hub_addrs: RwLock::new(Vec::new()),
            api_addrs: RwLock::new(Vec::new()),
        });
        let mut world = World {
            redis: Redis {
                port: free_port()?,
                dir: redis_dir,
                logs: logs.clone(),
                proc: None,
            },
            settings,
            logs: logs.clone(),
            callees: Vec::new(),
            callers: Vec::new(),
            shared: shared.clone(),
            exe: std::env::current_exe()?,
            notes: Vec::new(),
        };
        eprintln!("[chaos] logs and configs: {}", logs.display());
        // Every child is killed on drop anyway; the teardown also removes the namespace.
        let result = drive(&mut world, started).await;
        teardown(&mut world).await;
        result
    }

    /// Starts the mesh and the load, runs every fault, prints and writes the table.
    async fn drive(world: &mut World, started: Instant) -> Result<()> {
        let shared = world.shared.clone();
        let logs = world.logs.clone();
        world.redis.start().await?;
        // A namespace left by a run that died would clash with the partition's.
        partition::remove().await;
        let redis_url = world.redis.url();
        for i in 1..=3 {
            let c = world
                .new_callee(&format!("callee-{i}"), None, LOOPBACK, &redis_url)
                .await?;
            world.callees.push(c);
        }
        for i in 1..=2 {
            let ports = MeshPorts::free()?;
            let text = caller_config(ports, &world.redis.url());
            let config = logs.join(format!("caller-{i}.yaml"));
            std::fs::write(&config, &text)?;
            let cmd = meshlet_command(
                &world.settings.meshlet,
                &config,
                &format!("caller-{i}"),
                &logs,
                None,
            )?;
            let meshlet = Proc::spawn(&format!("caller-{i}"), cmd)?;
            world.callers.push(Caller {
                ports,
                config,
                text,
                meshlet,
            });
        }
        for c in &world.callees {
            let tel = SocketAddr::new(c.host, c.ports.telemetry);
            until(Duration::from_secs(20), &format!("{} ready", c.pod), || {
                ready(tel)
            })
            .await?;
        }
        for (i, c) in world.callers.iter().enumerate() {
            let (tel, api) = (local(c.ports.telemetry), c.ports.api);
            until(
                Duration::from_secs(20),
                &format!("caller-{} ready", i + 1),
                || ready(tel),
            )
            .await?;
            until(
                Duration::from_secs(20),
                &format!("caller-{} sees 3 callee instances", i + 1),
                || async move { callee_instances(api).await == 3 },
            )
            .await?;
        }
        world.publish_callee_addrs();
        eprintln!(
            "[chaos] up in {:.1} s: redis, 3 callees, 2 callers",
            started.elapsed().as_secs_f64()
        );

        // The load, the events, the hub.
        let mut tasks = Vec::new();
        for c in &world.callers {
            let clients = Arc::new(CallerClients {
                h1: H1Pool {
                    addr: local(c.ports.outbound),
                    idle: Mutex::new(Vec::new()),
                },
                h2: H2Conn {
                    addr: local(c.ports.outbound),
                    sender: tokio::sync::Mutex::new(None),
                },
            });
            for kind in Kind::ALL {
                tasks.push(tokio::spawn(load_stream(
                    shared.clone(),
                    clients.clone(),
                    kind,
                    world.settings.rate,
                )));
            }
        }
        let caller_apis: Vec<SocketAddr> =
            world.callers.iter().map(|c| local(c.ports.api)).collect();
        tasks.push(tokio::spawn(publisher(
            shared.clone(),
            caller_apis,
            world.settings.events_rate,
        )));
        for (i, client) in shared.hub.clients.iter().enumerate() {
            tasks.push(tokio::spawn(hub_client(shared.clone(), client.clone(), i)));
        }
        // Every client joined before the first broadcast counts.
        sleep(Duration::from_secs(1)).await;
        tasks.push(tokio::spawn(broadcaster(
            shared.clone(),
            world.settings.broadcast_rate,
        )));
        sleep(Duration::from_secs(1)).await;

        let mut windows = Vec::new();
        let faults = world.settings.faults.clone();
        for fault in faults {
            eprintln!(
                "[chaos] {}: {}",
                fault.name(),
                fault.describe(world.settings.hold)
            );
            let window = run_fault(world, fault).await;
            windows.push(window);
        }

        // Stop the load; let events and hub messages still on their way arrive.
        shared.stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = timeout(Duration::from_secs(6), t).await;
        }
        sleep(REQUEST_TIMEOUT).await;
        let drain = Instant::now();
        let all_delivered = || {
            let acked = lock(&shared.events.acked);
            let delivered = lock(&shared.events.delivered);
            acked.iter().all(|(id, _)| delivered.contains_key(id))
        };
        while !all_delivered() && drain.elapsed() < Duration::from_secs(20) {
            sleep(Duration::from_millis(200)).await;
        }
        let drained_in = drain.elapsed();
        note_casualties(world)?;

        let report = report(world, &windows, drained_in, started.elapsed());
        println!("{report}");
        let path = world
            .settings
            .out_dir
            .join(format!("chaos-{}.md", world.settings.stamp));
        std::fs::write(&path, &report)?;
        eprintln!("[chaos] table written to {}", path.display());
        dump(world, &windows, started)?;
        Ok(())
    }

    /// A meshlet that is not running at the end (none is left dead by a fault), and every
    /// log with a panic in it, as notes under the table.
    fn note_casualties(world: &mut World) -> Result<()> {
        let mut dead = Vec::new();
        for c in &mut world.callers {
            if !c.meshlet.alive() {
                dead.push(c.meshlet.name.clone());
            }
        }
        for c in &mut world.callees {
            if !c.meshlet.as_mut().is_some_and(Proc::alive) {
                dead.push(c.pod.clone());
            }
        }
        for name in dead {
            world.notes.push(format!(
                "{name}'s meshlet is not running at the end of the run"
            ));
        }
        for entry in std::fs::read_dir(&world.logs)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "log")
                && std::fs::read_to_string(&path).is_ok_and(|t| t.contains("panicked"))
            {
                world
                    .notes
                    .push(format!("a panic in {} (see it)", path.display()));
            }
        }
        Ok(())
    }

    /// Every request (`samples.csv`) and every fault's phases (`windows.csv`), in ms since
    /// the start, beside the logs: what a row's figures were computed from.
    fn dump(world: &World, windows: &[Window], started: Instant) -> Result<()> {
        let ms = |t: Instant| t.saturating_duration_since(started).as_secs_f64() * 1000.0;
        let mut csv = String::from("sent_ms,latency_ms,kind,ok,error\n");
        for x in lock(&world.shared.samples).iter() {
            let _ = writeln!(
                csv,
                "{:.1},{:.2},{:?},{},{}",
                ms(x.sent),
                (x.done - x.sent).as_secs_f64() * 1000.0,
                x.kind,
                x.ok,
                x.error.as_deref().unwrap_or("").replace(',', ";")
            );
        }
        std::fs::write(world.logs.join("samples.csv"), csv)?;
        let mut csv = String::from("fault,before_ms,during_ms,after_ms,end_ms\n");
        for w in windows {
            let _ = writeln!(
                csv,
                "{},{:.0},{:.0},{:.0},{:.0}",
                w.fault.name(),
                ms(w.t0),
                ms(w.t1),
                ms(w.t2),
                ms(w.t3)
            );
        }
        std::fs::write(world.logs.join("windows.csv"), csv)?;
        // Broadcasts some client never received, and the clients' drops.
        let hub = &world.shared.hub;
        let mut csv = String::from("what,seq_or_client,at_ms,clients_missing\n");
        for (n, at) in lock(&hub.acked).iter() {
            let missing = hub
                .clients
                .iter()
                .filter(|c| !lock(&c.received).contains(n))
                .count();
            if missing > 0 {
                let _ = writeln!(csv, "missed,{n},{:.0},{missing}", ms(*at));
            }
        }
        for (i, c) in hub.clients.iter().enumerate() {
            for at in lock(&c.drops).iter() {
                let _ = writeln!(csv, "drop,{i},{:.0},", ms(*at));
            }
            for at in lock(&c.unrecovered).iter() {
                let _ = writeln!(csv, "unrecovered,{i},{:.0},", ms(*at));
            }
        }
        std::fs::write(world.logs.join("hub.csv"), csv)?;
        Ok(())
    }

    async fn teardown(world: &mut World) {
        for i in 0..world.callees.len() {
            world.kill_callee(i).await;
        }
        for c in &mut world.callers {
            c.meshlet.kill().await;
        }
        if let Some(mut r) = world.redis.proc.take() {
            r.kill().await;
        }
        if world.callees.iter().any(|c| c.netns.is_some()) {
            partition::remove().await;
        }
    }

    /// One fault's timeline: `before`, then the fault at the start of `during` (its end,
    /// if it has one, `hold` later), then `after`.
    struct Window {
        fault: Fault,
        t0: Instant,
        t1: Instant,
        t2: Instant,
        t3: Instant,
        note: Option<String>,
    }

    async fn run_fault(world: &mut World, fault: Fault) -> Window {
        let s = &world.settings;
        let (before, during, hold, after) = (s.before, s.during, s.hold, s.after);
        // The partition first moves callee 3 into a namespace, outside the measured phases.
        if fault == Fault::Partition {
            if let Err(why) = partition::prepare(world).await {
                let t = Instant::now();
                return Window {
                    fault,
                    t0: t,
                    t1: t,
                    t2: t,
                    t3: t,
                    note: Some(format!("skipped ({why})")),
                };
            }
        }
        let t0 = Instant::now();
        let mut note = None;
        sleep_until((t0 + before).into()).await;
        let t1 = Instant::now();
        if let Err(e) = inject(world, fault, hold).await {
            note = Some(format!("fault incomplete: {e}"));
        }
        sleep_until((t1 + during).into()).await;
        let t2 = Instant::now();
        sleep_until((t2 + after).into()).await;
        let t3 = Instant::now();
        if let Err(e) = check_back(world).await {
            let n = format!("not back after the fault: {e}");
            note = Some(match note {
                Some(prev) => format!("{prev}; {n}"),
                None => n,
            });
        }
        Window {
            fault,
            t0,
            t1,
            t2,
            t3,
            note,
        }
    }

    /// Every process is up again and both callers route to three callees.
    async fn check_back(world: &mut World) -> Result<()> {
        for c in &world.callees {
            let tel = SocketAddr::new(c.host, c.ports.telemetry);
            until(Duration::from_secs(10), &format!("{} ready", c.pod), || {
                ready(tel)
            })
            .await?;
        }
        for (i, c) in world.callers.iter().enumerate() {
            let api = c.ports.api;
            until(
                Duration::from_secs(10),
                &format!("caller-{} routing to 3 callees", i + 1),
                || async move { callee_instances(api).await == 3 },
            )
            .await?;
        }
        Ok(())
    }

    async fn inject(world: &mut World, fault: Fault, hold: Duration) -> Result<()> {
        let start = Instant::now();
        let end_of_hold = || sleep_until((start + hold).into());
        match fault {
            Fault::CalleeKill => {
                world.kill_callee(0).await;
                end_of_hold().await;
                world.restart_callee_in_place(0).await?;
            }
            Fault::CalleeHang => {
                let c = &world.callees[1];
                for p in c.meshlet.iter().chain(c.app.as_ref().map(|a| &a.proc)) {
                    p.signal(Signal::STOP);
                }
                end_of_hold().await;
                let c = &world.callees[1];
                for p in c.meshlet.iter().chain(c.app.as_ref().map(|a| &a.proc)) {
                    p.signal(Signal::CONT);
                }
            }
            Fault::CalleeMove => {
                let i = 2;
                world.kill_callee(i).await;
                let pod = format!("{}-moved", world.callees[i].pod);
                let redis_url = world.redis.url();
                let c = world.new_callee(&pod, None, LOOPBACK, &redis_url).await?;
                world.callees[i] = c;
                world.publish_callee_addrs();
            }
            Fault::CalleeMeshletKill => {
                if let Some(mut m) = world.callees[0].meshlet.take() {
                    m.kill().await;
                }
                end_of_hold().await;
                let m = world.spawn_callee_meshlet(&world.callees[0])?;
                world.callees[0].meshlet = Some(m);
            }
            Fault::RedisKill => {
                if let Some(mut r) = world.redis.proc.take() {
                    r.kill().await;
                }
                end_of_hold().await;
                world.redis.start().await?;
            }
            Fault::RedisDebugSleep => {
                let secs = hold.as_secs().to_string();
                world
                    .redis
                    .cli(&["DEBUG", "SLEEP", &secs])
                    .await
                    .ok_or_else(|| setup("DEBUG SLEEP refused"))?;
            }
            Fault::RedisClientPause => {
                let ms = hold.as_millis().to_string();
                world
                    .redis
                    .cli(&["CLIENT", "PAUSE", &ms, "ALL"])
                    .await
                    .ok_or_else(|| setup("CLIENT PAUSE refused"))?;
                end_of_hold().await;
            }
            Fault::HealthFlap => {
                let during = world.settings.during;
                let mut up = false;
                while start.elapsed() + Duration::from_secs(1) < during {
                    world.set_health(1, up).await;
                    up = !up;
                    sleep(Duration::from_secs(1)).await;
                }
                world.set_health(1, true).await;
            }
            Fault::ConfigGarbage => {
                let garbage = "service: {name: [unclosed\n\u{0}\u{1}garbage: ::: %%\n";
                let callee_config = world.callees[0].config.clone();
                let callee_text = std::fs::read_to_string(&callee_config)?;
                std::fs::write(&world.callers[0].config, garbage)?;
                std::fs::write(&callee_config, garbage)?;
                end_of_hold().await;
                std::fs::write(&world.callers[0].config, &world.callers[0].text)?;
                std::fs::write(&callee_config, callee_text)?;
            }
            Fault::FdExhaustion => fd::exhaust(world, hold).await?,
            Fault::Partition => partition::cut(world, hold).await?,
        }
        Ok(())
    }

    /// The descriptor fault: a caller's RLIMIT_NOFILE lowered on the running process, its
    /// outbound listener flooded with idle connections, then both undone.
    mod fd {
        use super::*;

        /// The hard RLIMIT_NOFILE of `pid` (None: unlimited), from `/proc/PID/limits`.
        fn hard_nofile(pid: Pid) -> Result<Option<u64>> {
            let limits = std::fs::read_to_string(format!("/proc/{}/limits", pid.as_raw_nonzero()))?;
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .ok_or_else(|| setup("no `Max open files` in /proc/PID/limits"))?;
            let hard = line
                .trim_start_matches("Max open files")
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| setup("a short `Max open files` line"))?;
            Ok(hard.parse().ok())
        }

        pub async fn exhaust(world: &mut World, hold: Duration) -> Result<()> {
            let start = Instant::now();
            let caller = &world.callers[1];
            let pid = caller
                .meshlet
                .pid()
                .ok_or_else(|| setup("caller-2 is not running"))?;
            let open =
                std::fs::read_dir(format!("/proc/{}/fd", pid.as_raw_nonzero()))?.count() as u64;
            // Only the soft limit: raising a lowered hard limit again would need
            // CAP_SYS_RESOURCE, which a container's root may not have. meshlet raises its
            // soft limit only at start (config.md, `limits.max_connections`), so the
            // lowered one holds for the fault.
            let hard = hard_nofile(pid)?;
            let lowered = rustix::process::Rlimit {
                current: Some(open + 64),
                maximum: hard,
            };
            let before =
                rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, lowered)
                    .map_err(|e| setup(format!("prlimit: {e}")))?;
            let addr = local(caller.ports.outbound);
            let mut flood = Vec::new();
            // Far more than the new limit: the rest wait in the listen backlog.
            for _ in 0..400 {
                match timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => flood.push(s),
                    _ => break,
                }
            }
            eprintln!(
                "[chaos]   caller-2: {open} fds open, limit {}, {} idle connections opened",
                open + 64,
                flood.len()
            );
            // What an app that opens a connection per request meets meanwhile: a GET on a
            // fresh connection every 100 ms, failed when not answered 200 within 1 s
            // (reported in the notes).
            let mut probes = Vec::new();
            while Instant::now() + Duration::from_millis(100) < start + hold {
                let req = Request::get("http://callee/get/probe")
                    .header("host", "callee")
                    .body(Full::new(Bytes::new()));
                if let Ok(req) = req {
                    probes.push(tokio::spawn(async move {
                        matches!(
                            timeout(Duration::from_secs(1), once(addr, req)).await,
                            Ok(Ok(a)) if a.status == StatusCode::OK
                        )
                    }));
                }
                sleep(Duration::from_millis(100)).await;
            }
            let probes_sent = probes.len();
            let mut refused = 0;
            for p in probes {
                if !p.await.unwrap_or(false) {
                    refused += 1;
                }
            }
            sleep_until((start + hold).into()).await;
            drop(flood);
            world.notes.push(format!(
                "fd-exhaustion: {refused} of {probes_sent} GETs on fresh connections to caller-2 failed while its descriptors were exhausted"
            ));
            // Restoring a raised hard limit needs CAP_SYS_RESOURCE: this driver runs as root.
            rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, before)
                .map_err(|e| setup(format!("prlimit restore: {e}")))?;
            Ok(())
        }
    }

    /// The partition: callee 3 runs in a network namespace behind a veth pair (host side
    /// 10.77.0.1, namespace side 10.77.0.2); the cut takes the host's end down.
    mod partition {
        use super::*;

        const NS: &str = "meshlet-chaos";
        const HOST_IF: &str = "mchaos0";
        const NS_IF: &str = "mchaos1";
        const HOST_IP: &str = "10.77.0.1";
        const NS_IP: &str = "10.77.0.2";

        async fn ip(args: &[&str]) -> std::result::Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`ip {}`: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }

        /// Removes the namespace and the veth pair (both ends go with either).
        pub async fn remove() {
            let _ = ip(&["link", "del", HOST_IF]).await;
            let _ = ip(&["netns", "del", NS]).await;
        }

        /// Moves callee 3 into the namespace "host": a veth pair to the machine, Redis
        /// reachable on the host's end, callee 3's app and meshlet started inside it (the
        /// meshlet's inbound, API and telemetry on the namespace's address, registered
        /// there). Runs before the fault's phases. Err: why the machine does not allow it.
        pub async fn prepare(world: &mut World) -> std::result::Result<(), String> {
            if !rustix::process::geteuid().is_root() {
                return Err("needs root for `ip netns` and veth".into());
            }
            remove().await;
            ip(&["netns", "add", NS]).await?;
            ip(&[
                "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF,
            ])
            .await?;
            ip(&["link", "set", NS_IF, "netns", NS]).await?;
            ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", HOST_IF]).await?;
            ip(&["link", "set", HOST_IF, "up"]).await?;
            let in_ns = |args: &[&str]| {
                let mut all = vec!["netns", "exec", NS, "ip"];
                all.extend_from_slice(args);
                all.into_iter().map(str::to_owned).collect::<Vec<String>>()
            };
            for args in [
                in_ns(&["addr", "add", &format!("{NS_IP}/24"), "dev", NS_IF]),
                in_ns(&["link", "set", NS_IF, "up"]),
                in_ns(&["link", "set", "lo", "up"]),
            ] {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                ip(&args).await?;
            }
            // Redis answers on the host's end too; protected mode would refuse a client that
            // is not on loopback (this Redis has no password; it lives as long as the run).
            let bind = format!("127.0.0.1 {HOST_IP}");
            for args in [
                ["CONFIG", "SET", "bind", bind.as_str()],
                ["CONFIG", "SET", "protected-mode", "no"],
            ] {
                if world.redis.cli(&args).await.as_deref() != Some("OK") {
                    return Err(format!("redis `{}` refused", args.join(" ")));
                }
            }
            let i = 2;
            world.kill_callee(i).await;
            let host: IpAddr = NS_IP.parse().map_err(|e| format!("{e}"))?;
            let redis_url = format!("redis://{HOST_IP}:{}/0", world.redis.port);
            let callee = world
                .new_callee("callee-3-netns", Some(NS.to_owned()), host, &redis_url)
                .await
                .map_err(|e| e.to_string())?;
            world.callees[i] = callee;
            world.publish_callee_addrs();
            check_back(world).await.map_err(|e| e.to_string())
        }

        /// The partition: the host's end of the veth down for `hold`, then up again.
        pub async fn cut(_world: &mut World, hold: Duration) -> Result<()> {
            let start = Instant::now();
            ip(&["link", "set", HOST_IF, "down"]).await.map_err(setup)?;
            sleep_until((start + hold).into()).await;
            ip(&["link", "set", HOST_IF, "up"]).await.map_err(setup)?;
            Ok(())
        }
    }

    // ------------------------------------------------------------------ the table

    fn p99_ms(samples: &[&Sample]) -> Option<f64> {
        if samples.is_empty() {
            return None;
        }
        let mut lat: Vec<Duration> = samples.iter().map(|s| s.done - s.sent).collect();
        lat.sort();
        let i = ((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1;
        Some(lat[i].as_secs_f64() * 1000.0)
    }

    fn ms(v: Option<f64>) -> String {
        v.map_or("-".into(), |v| format!("{v:.1}"))
    }

    fn report(world: &World, windows: &[Window], drained_in: Duration, total: Duration) -> String {
        let shared = &world.shared;
        let samples = lock(&shared.samples);
        let acked = lock(&shared.events.acked);
        let delivered = lock(&shared.events.delivered);
        let hub_acked = lock(&shared.hub.acked);
        let s = &world.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## bench/chaos {} ({}), {}",
            s.stamp,
            if s.smoke { "smoke" } else { "full" },
            machine()
        );
        let _ = writeln!(
            out,
            "\nLoad: {} req/s of each of HTTP/1.1 GET, HTTP/1.1 POST, h2c GET, gRPC unary through each of 2 callers to 3 callees ({} req/s in all); {} events/s; {} hub clients, {} broadcasts/s. Phases: {} s before, {} s during (a fault with an end ends {} s in), {} s after. Registry ttl {} s, breaker open_for {} s.\n",
            s.rate,
            s.rate * 8,
            s.events_rate,
            s.hub_clients,
            s.broadcast_rate,
            s.before.as_secs(),
            s.during.as_secs(),
            s.hold.as_secs(),
            s.after.as_secs(),
            REGISTRY_TTL.as_secs(),
            OPEN_FOR.as_secs(),
        );
        out.push_str("| fault | sent | failed idem. | failed non-idem. | p99 ms before / during / after | recover s | events pub / deliv / lost / dup | hub drops / missed |\n");
        out.push_str("|---|---:|---:|---:|---|---:|---|---|\n");
        let mut details = String::new();
        let mut goals = Vec::new();
        for w in windows {
            if let Some(note) = &w.note {
                if w.t0 == w.t3 {
                    let _ = writeln!(out, "| {} | {note} | | | | | | |", w.fault.name());
                    continue;
                }
            }
            let in_window: Vec<&Sample> = samples
                .iter()
                .filter(|x| x.sent >= w.t0 && x.sent < w.t3)
                .collect();
            let phase = |a: Instant, b: Instant| -> Vec<&Sample> {
                in_window
                    .iter()
                    .copied()
                    .filter(|x| x.sent >= a && x.sent < b)
                    .collect()
            };
            let (pb, pd, pa) = (
                p99_ms(&phase(w.t0, w.t1)),
                p99_ms(&phase(w.t1, w.t2)),
                p99_ms(&phase(w.t2, w.t3)),
            );
            let failed_idem = in_window
                .iter()
                .filter(|x| !x.ok && x.kind.idempotent())
                .count();
            let failed_non = in_window
                .iter()
                .filter(|x| !x.ok && !x.kind.idempotent())
                .count();
            // Disturbed: failed, or slower than 5x the p99 before (at least 100 ms).
            let slow = Duration::from_secs_f64((pb.unwrap_or(10.0) * 5.0).max(100.0) / 1000.0);
            let last_disturbed = in_window
                .iter()
                .filter(|x| x.sent >= w.t1 && (!x.ok || x.done - x.sent > slow))
                .map(|x| x.done)
                .max();
            let recover = match last_disturbed {
                None => "0".to_owned(),
                Some(t) if t + Duration::from_secs(1) > w.t3 => "not within the run".to_owned(),
                Some(t) => format!("{:.1}", (t - w.t1).as_secs_f64()),
            };
            let published: Vec<&String> = acked
                .iter()
                .filter(|(_, at)| *at >= w.t0 && *at < w.t3)
                .map(|(id, _)| id)
                .collect();
            let got = published
                .iter()
                .filter(|id| delivered.contains_key(**id))
                .count();
            let dup: u32 = published
                .iter()
                .filter_map(|id| delivered.get(*id))
                .map(|n| n.saturating_sub(1))
                .sum();
            let lost = published.len() - got;
            let window_seqs: Vec<u64> = hub_acked
                .iter()
                .filter(|(_, at)| *at >= w.t0 && *at < w.t3)
                .map(|(n, _)| *n)
                .collect();
            let mut drops = 0;
            let mut missed = 0;
            let mut unrecovered = 0;
            for c in &shared.hub.clients {
                drops += lock(&c.drops)
                    .iter()
                    .filter(|t| **t >= w.t0 && **t < w.t3)
                    .count();
                unrecovered += lock(&c.unrecovered)
                    .iter()
                    .filter(|t| **t >= w.t0 && **t < w.t3)
                    .count();
                let received = lock(&c.received);
                missed += window_seqs.iter().filter(|n| !received.contains(n)).count();
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} / {} / {} | {} | {} / {} / {} / {} | {} / {} |",
                w.fault.name(),
                in_window.len(),
                failed_idem,
                failed_non,
                ms(pb),
                ms(pd),
                ms(pa),
                recover,
                published.len(),
                got,
                lost,
                dup,
                drops,
                missed,
            );
            // What went wrong, most frequent first.
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            for x in in_window.iter().filter(|x| !x.ok) {
                let k = format!("{:?}: {}", x.kind, x.error.as_deref().unwrap_or("?"));
                *errors.entry(k).or_default() += 1;
            }
            let mut errors: Vec<(String, usize)> = errors.into_iter().collect();
            errors.sort_by_key(|e| std::cmp::Reverse(e.1));
            let _ = write!(
                details,
                "- **{}** ({}):",
                w.fault.name(),
                w.fault.describe(s.hold)
            );
            if errors.is_empty() {
                details.push_str(" no failed request");
            } else {
                let list: Vec<String> = errors
                    .iter()
                    .take(4)
                    .map(|(k, n)| format!("{n}× {k}"))
                    .collect();
                let _ = write!(details, " {}", list.join("; "));
            }
            let in_w = |t: &&Instant| **t >= w.t0 && **t < w.t3;
            let refused_publishes = lock(&shared.events.refused).iter().filter(in_w).count();
            let refused_broadcasts = lock(&shared.hub.refused).iter().filter(in_w).count();
            if refused_publishes > 0 {
                let _ = write!(details, "; {refused_publishes} publishes refused 5 times (503 or no answer: not stored)");
            }
            if refused_broadcasts > 0 {
                let _ = write!(
                    details,
                    "; {refused_broadcasts} broadcasts refused by every callee meshlet"
                );
            }
            if unrecovered > 0 {
                let _ = write!(
                    details,
                    "; {unrecovered} hub rejoin(s) answered `recovered: false`"
                );
            }
            if let Some(note) = &w.note {
                let _ = write!(details, "; {note}");
            }
            details.push('\n');
            if failed_idem > 0 {
                goals.push(format!(
                    "{}: {failed_idem} idempotent request(s) failed",
                    w.fault.name()
                ));
            }
            if lost > 0 {
                goals.push(format!(
                    "{}: {lost} acknowledged event(s) never delivered",
                    w.fault.name()
                ));
            }
            if missed > 0 {
                goals.push(format!(
                    "{}: hub clients missed {missed} message(s) after recovery",
                    w.fault.name()
                ));
            }
            if let Some(t) = last_disturbed {
                if t - w.t1 > REGISTRY_TTL.max(OPEN_FOR) + s.hold {
                    goals.push(format!(
                        "{}: recovery took {:.1} s (hold {} s + max(ttl, open_for) {} s)",
                        w.fault.name(),
                        (t - w.t1).as_secs_f64(),
                        s.hold.as_secs(),
                        REGISTRY_TTL.max(OPEN_FOR).as_secs()
                    ));
                }
            }
        }
        let _ = writeln!(out, "\n{details}");
        let _ = writeln!(
            out,
            "Totals: {} requests, {} events acknowledged ({} publishes refused after 5 attempts: never stored, not lost), {} broadcasts acknowledged ({} refused); last deliveries drained {:.1} s after the load stopped; run {:.0} s.",
            samples.len(),
            acked.len(),
            lock(&shared.events.refused).len(),
            hub_acked.len(),
            lock(&shared.hub.refused).len(),
            drained_in.as_secs_f64(),
            total.as_secs_f64(),
        );
        if goals.is_empty() {
            out.push_str("\nGoals: all met.\n");
        } else {
            out.push_str("\nGoals missed:\n");
            for g in goals {
                let _ = writeln!(out, "- {g}");
            }
        }
        for n in &world.notes {
            let _ = writeln!(out, "\nNote: {n}");
        }
        out
    }

    fn machine() -> String {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        format!("{cpus} cores, kernel {}", kernel.trim())
    }
}
