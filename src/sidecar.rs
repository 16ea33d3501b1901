//! The running sidecar: turns a [`LoadedConfig`] into live handles (metrics, registry
//! snapshot, routing table, listeners), starts the data-plane workers and the control-plane
//! tasks, and shuts everything down in order.
//!
//! Threads: each data-plane worker is an OS thread with its own single-threaded tokio
//! runtime, its own `SO_REUSEPORT` listeners and its own upstream pool (thread-per-core: no
//! work stealing, no shared pool). The control plane (registry watcher, self-registration,
//! table rebuilds, telemetry and API servers) runs on the runtime that called
//! [`Sidecar::start`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError, LoadedConfig, Policy};
use crate::events::Events;
use crate::policy::balance::Endpoint;
use crate::proxy::body::ResponseBody;
use crate::proxy::destination::{Destination, RoutingTable};
use crate::proxy::inbound::Inbound;
use crate::proxy::outbound::Outbound;
use crate::proxy::tls::{MeshTls, TlsError};
use crate::proxy::{server, upstream};
use crate::realtime::{self, Realtime};
use crate::registry::health::HealthCheck;
use crate::registry::registration::Registration;
use crate::registry::watch::Watcher;
use crate::registry::{connection, schema, static_instances, Instance, Keys, Snapshot, Status};
use crate::telemetry::admin::{self, ResponseFuture, Router};
use crate::telemetry::metrics::{Direction, Metrics};
use crate::telemetry::otlp::SpanExport;

/// How long readiness waits for a first Redis snapshot before serving static and
/// last-known entries anyway (docs/registry.md).
const REGISTRY_READY_DEADLINE: Duration = Duration::from_secs(10);

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The Redis URL is invalid.
    #[error("registry.redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The OTLP exporter could not be built.
    #[error("{0}")]
    Otlp(#[from] crate::telemetry::otlp::OtlpError),
    /// The `tls:` files could not be used.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    /// `service.app` or `service.advertise` cannot be used.
    #[error("{0}")]
    Address(String),
}

/// State shared by the control-plane tasks and the admin views.
pub struct Shared {
    /// The active config.
    pub config: ArcSwap<LoadedConfig>,
    /// The live routing table read by every request.
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// Latest registry snapshot.
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Metric families.
    pub metrics: Metrics,
    /// Listeners bound.
    pub listening: AtomicBool,
    /// First registry snapshot in (or Redis still unreachable after 10 s).
    pub registry_ready: Arc<AtomicBool>,
    /// Mutual TLS between meshlets (`tls:`), loaded at start.
    pub mesh_tls: Option<Arc<MeshTls>>,
    /// The app's health check passes (always true without `service.health`).
    pub app_healthy: Arc<AtomicBool>,
    /// This pod's instance id in the registry.
    pub instance_id: String,
    rebuild_lock: Mutex<()>,
    /// Hash of the config text last read (valid or not), so a broken file is reported once.
    last_seen_hash: Mutex<String>,
}

impl Shared {
    /// Ready for traffic: listeners bound and the registry loaded.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire)
            && self.registry_ready.load(Ordering::Acquire)
            && self.app_healthy.load(Ordering::Acquire)
    }

    /// Rebuilds the routing table from the active config and the latest snapshot.
    pub fn rebuild(&self) {
        // Serializes rebuilds (watcher and reloads) so neither overwrites a newer table.
        let _guard = self.rebuild_lock.lock().unwrap_or_else(|e| e.into_inner());
        let config = self.config.load();
        let snapshot = self.registry_view(&config.config);
        let table = RoutingTable::build(
            &config.config,
            &snapshot,
            &self.table.load(),
            &self.metrics,
            self.mesh_tls.as_deref(),
        );
        self.table.store(Arc::new(table));
    }

    /// Static entries of `config` merged with the latest Redis snapshot.
    pub fn registry_view(&self, config: &Config) -> Snapshot {
        self.snapshot
            .borrow()
            .with_statics(&static_instances(&config.registry))
    }

    /// Re-reads the config file when its content changed: validates, swaps, rebuilds.
    /// An invalid file is rejected, logged and counted; the old config keeps serving.
    pub fn reload(&self) -> Result<bool, ConfigError> {
        let current = self.config.load_full();
        let Some(path) = current.path.clone() else {
            return Ok(false);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| {
            self.metrics.reload.errors.inc();
            ConfigError::Read {
                path: path.clone(),
                source,
            }
        })?;
        let hash = crate::config::content_hash(&text);
        {
            let mut seen = self
                .last_seen_hash
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *seen == hash {
                return Ok(false);
            }
            *seen = hash;
        }
        let next = match LoadedConfig::from_text(&text, &path.display().to_string()) {
            Ok(mut next) => {
                next.path = Some(path);
                next
            }
            Err(e) => {
                self.metrics.reload.errors.inc();
                return Err(e);
            }
        };
        warn_if_restart_needed(&current.config, &next.config);
        let hash = next.hash.clone();
        self.config.store(Arc::new(next));
        self.rebuild();
        self.metrics.reload.reloads.inc();
        tracing::info!(%hash, "config reloaded");
        Ok(true)
    }
}

/// What the events and realtime modules start from.
pub struct Context<'a> {
    /// The config at start.
    pub config: &'a Config,
    /// The Redis client of `registry.redis`, when configured.
    pub redis: Option<redis::Client>,
    /// This meshlet's instance id (consumer name, presence key).
    pub instance_id: &'a str,
    /// Where to register metric families ([`Metrics::registry`]).
    pub metrics: &'a Metrics,
    /// Turns true at shutdown.
    pub shutdown: watch::Receiver<bool>,
}

/// Where the listeners ended up (port 0 resolved).
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    /// Outbound listener.
    pub outbound: SocketAddr,
    /// Inbound listener; `None` without `service.app`.
    pub inbound: Option<SocketAddr>,
    /// Local API.
    pub api: SocketAddr,
    /// Telemetry.
    pub telemetry: SocketAddr,
}

/// A started sidecar.
pub struct Sidecar {
    /// Listener addresses.
    pub addresses: Addresses,
    /// Shared state (for views and tests).
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    workers: Vec<oneshot::Receiver<()>>,
    registration: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    control: Vec<JoinHandle<()>>,
    grace: Duration,
    /// Lets the worker runtimes end once the hub's sockets are closed.
    release_workers: watch::Sender<bool>,
    realtime: Option<Arc<Realtime>>,
    spans: Option<Arc<SpanExport>>,
}

impl Sidecar {
    /// Starts everything; returns once every listener is bound. Must be called inside a
    /// tokio runtime, which then carries the control plane.
    pub async fn start(loaded: LoadedConfig) -> Result<Sidecar, StartError> {
        crate::proxy::tls::install_crypto_provider();
        let config = loaded.config.clone();
        let metrics = Metrics::new();
        let loaded_hash = loaded.hash.clone();
        let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        let initial = Snapshot::default().with_statics(&static_instances(&config.registry));
        let mesh_tls = match &config.tls {
            Some(t) => Some(Arc::new(MeshTls::load(
                t.cert.as_str(),
                t.key.as_str(),
                t.ca.as_str(),
            )?)),
            None => None,
        };
        let table = RoutingTable::build(
            &config,
            &initial,
            &RoutingTable::empty(&config),
            &metrics,
            mesh_tls.as_deref(),
        );
        let redis_client = config
            .registry
            .redis
            .as_ref()
            .map(connection::client)
            .transpose()?;
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(loaded),
            table: Arc::new(ArcSwap::from_pointee(table)),
            snapshot: snapshot_rx,
            metrics,
            listening: AtomicBool::new(false),
            registry_ready: Arc::new(AtomicBool::new(redis_client.is_none())),
            app_healthy: Arc::new(AtomicBool::new(config.service.health.is_none())),
            mesh_tls: mesh_tls.clone(),
            instance_id: instance_id(config.service.name.as_str()),
            rebuild_lock: Mutex::new(()),
            last_seen_hash: Mutex::new(loaded_hash),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let workers = config.worker_count();

        let outbound = bind("outbound", config.listen.outbound.0, workers)?;
        let outbound_addr = local_addr(&outbound[0]);
        let app = config
            .service
            .app
            .as_ref()
            .map(|a| app_destination(&config, &a.0, &shared.metrics))
            .transpose()?;
        let inbound = if app.is_some() || config.realtime.is_some() {
            Some(bind("inbound", config.listen.inbound.0, workers)?)
        } else {
            None
        };
        let inbound_addr = inbound.as_ref().map(|l| local_addr(&l[0]));
        let api = bind_one("api", config.listen.api.0).await?;
        let telemetry = bind_one("telemetry", config.listen.telemetry.0).await?;
        let addresses = Addresses {
            outbound: outbound_addr,
            inbound: inbound_addr,
            api: local_addr_tokio(&api),
            telemetry: local_addr_tokio(&telemetry),
        };

        // Events and the realtime hub plug in here: each owns its module, starts its own
        // control-plane tasks, and is reached through the local API (and, for the hub,
        // the inbound listener).
        let context = Context {
            config: &config,
            redis: redis_client.clone(),
            instance_id: &shared.instance_id,
            metrics: &shared.metrics,
            shutdown: shutdown_rx.clone(),
        };
        let spans = match &config.telemetry.otlp {
            Some(otlp) => Some(Arc::new(SpanExport::new(
                config.service.name.as_str(),
                otlp,
            )?)),
            None => None,
        };
        let events = Events::start(&context);
        let realtime = Realtime::start(&context);
        let (release_tx, release_rx) = watch::channel(false);

        let worker_done = spawn_workers(
            &config,
            &shared,
            Inbound {
                table: shared.table.clone(),
                app: app.clone(),
                realtime: realtime.clone(),
                upgraded: shared
                    .metrics
                    .upgraded_connections
                    .with_label_values(&["inbound"]),
                idle_timeout: config.limits.idle_timeout.get(),
                spans: spans.clone(),
            },
            outbound,
            inbound,
            &shutdown_rx,
            &release_rx,
        )?;

        let realtime_handle = realtime.clone();
        let spans_handle = spans.clone();
        let mut control = vec![
            tokio::spawn(admin::serve(
                api,
                api_router(&shared, events, realtime),
                shutdown_rx.clone(),
            )),
            tokio::spawn(admin::serve(
                telemetry,
                telemetry_router(&shared),
                shutdown_rx.clone(),
            )),
            tokio::spawn(rebuild_on_change(shared.clone(), shutdown_rx.clone())),
            tokio::spawn(reload_on_change(shared.clone(), shutdown_rx.clone())),
        ];

        // Registration status: driven by the app's health check when there is one.
        let initial_status = if config.service.health.is_some() {
            Status::Draining
        } else {
            Status::Up
        };
        let (status_tx, _) = watch::channel(initial_status);
        if let (Some(app), Some(path)) = (&app, &config.service.health) {
            let check = HealthCheck {
                app: app.endpoints[0].authority.clone(),
                path: path.to_string(),
                interval: config.service.health_interval.get(),
                status: status_tx.clone(),
                healthy: shared.app_healthy.clone(),
            };
            control.push(tokio::spawn(check.run(stopped(shutdown_rx.clone()))));
        }
        let mut registration = None;
        if let Some(client) = redis_client {
            let keys = Keys::new(config.registry.prefix.as_str());
            let reconnected = Arc::new(Notify::new());
            let watcher = Watcher {
                client: client.clone(),
                keys: keys.clone(),
                resync: config.registry.resync.get(),
                ttl: config.registry.ttl.get(),
                snapshots: snapshot_tx,
                reconnected: reconnected.clone(),
                first_read: shared.registry_ready.clone(),
                metrics: shared.metrics.registry_metrics.clone(),
            };
            control.push(tokio::spawn(watcher.run(stopped(shutdown_rx.clone()))));
            let ready = shared.registry_ready.clone();
            control.push(tokio::spawn(async move {
                tokio::time::sleep(REGISTRY_READY_DEADLINE).await;
                if !ready.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        "no registry snapshot after 10s; ready with static and last-known entries"
                    );
                }
            }));
            if let Some(inbound_addr) = inbound_addr {
                let instance = own_instance(&config, &shared.instance_id, inbound_addr)?;
                let status_rx = status_tx.subscribe();
                let reg = Registration {
                    client,
                    keys,
                    service: config.service.name.to_string(),
                    instance,
                    ttl: config.registry.ttl.get(),
                    heartbeat: config.registry.heartbeat.get(),
                    reconnected,
                    status: status_rx,
                };
                let (stop_tx, stop_rx) = oneshot::channel::<()>();
                let handle = tokio::spawn(async move {
                    reg.run(async {
                        let _ = stop_rx.await;
                    })
                    .await;
                });
                registration = Some((stop_tx, handle));
            }
        } else {
            drop(snapshot_tx);
        }

        shared.listening.store(true, Ordering::Release);
        tracing::info!(
            service = %config.service.name,
            instance = %shared.instance_id,
            outbound = %addresses.outbound,
            inbound = ?addresses.inbound,
            api = %addresses.api,
            telemetry = %addresses.telemetry,
            workers,
            registry = if config.registry.redis.is_some() { "redis" } else { "static" },
            "meshlet started"
        );
        Ok(Sidecar {
            addresses,
            shared,
            shutdown: shutdown_tx,
            workers: worker_done,
            registration,
            control,
            grace: config.shutdown_grace.get(),
            release_workers: release_tx,
            realtime: realtime_handle,
            spans: spans_handle,
        })
    }

    /// Graceful shutdown: deregister at once, stop accepting, let in-flight requests
    /// finish within `shutdown_grace`, then stop the control plane.
    pub async fn shutdown(mut self) {
        tracing::info!(grace = ?self.grace, "shutting down");
        self.shared.listening.store(false, Ordering::Release);
        if let Some((stop, handle)) = self.registration.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(3), handle).await;
        }
        let _ = self.shutdown.send(true);
        if let Some(hub) = &self.realtime {
            // The hub closes its clients with 1001 after their queues drain.
            let drained = tokio::time::timeout(self.grace, async {
                while hub.connections() > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!("realtime clients still connected after the grace period");
            }
        }
        let _ = self.release_workers.send(true);
        let deadline = self.grace + Duration::from_secs(1);
        let _ = tokio::time::timeout(deadline, async {
            for done in self.workers.drain(..) {
                let _ = done.await;
            }
        })
        .await;
        for task in self.control.drain(..) {
            task.abort();
        }
        if let Some(spans) = self.spans.take() {
            // The SDK's flush blocks on its export thread.
            let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
        }
        tracing::info!("stopped");
    }
}

fn bind(
    what: &'static str,
    addr: SocketAddr,
    copies: usize,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    server::bind(addr, copies).map_err(|source| StartError::Bind { what, addr, source })
}

async fn bind_one(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(l: &std::net::TcpListener) -> SocketAddr {
    // A bound listener always has a local address.
    l.local_addr().expect("bound listener has an address")
}

fn local_addr_tokio(l: &TcpListener) -> SocketAddr {
    l.local_addr().expect("bound listener has an address")
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn instance_id(service: &str) -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| service.to_owned());
    format!("{host}-{:06x}", fastrand::u32(..0x00ff_ffff))
}

/// The local app as a one-endpoint destination for the inbound side.
fn app_destination(
    config: &Config,
    app: &http::Uri,
    metrics: &Metrics,
) -> Result<Arc<Destination>, StartError> {
    let authority: Authority = app
        .authority()
        .cloned()
        .ok_or_else(|| StartError::Address(format!("service.app `{app}` has no host:port")))?;
    let authority = if authority.port().is_some() {
        authority
    } else {
        format!("{}:80", authority.host())
            .parse()
            .map_err(|_| StartError::Address(format!("service.app `{app}` is not host:port")))?
    };
    let name = config.service.name.as_str();
    let policy = Policy {
        protocol: config.service.protocol,
        ..config.policy_for(name)
    };
    let endpoint = Endpoint::new("app".to_owned(), authority, config.service.protocol, false);
    Ok(Arc::new(Destination {
        name: Arc::from(name),
        policy,
        endpoints: vec![Arc::new(endpoint)],
        metrics: metrics.destination(Direction::Inbound, name),
        egress: None,
        state: Default::default(),
        token: Default::default(),
        static_auth: None,
    }))
}

/// This pod's registry entry: advertised address, version, metadata.
fn own_instance(config: &Config, id: &str, inbound: SocketAddr) -> Result<Instance, StartError> {
    let advertise = match &config.service.advertise {
        Some(a) => a.as_str().to_owned(),
        None => match std::env::var("POD_IP") {
            Ok(ip) if !ip.is_empty() => format!("{ip}:{}", inbound.port()),
            _ => format!("127.0.0.1:{}", inbound.port()),
        },
    };
    let (host, port) = advertise
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_matches(['[', ']']).to_owned(),
                p.parse::<u16>().ok()?,
            ))
        })
        .ok_or_else(|| {
            StartError::Address(format!("service.advertise `{advertise}` is not host:port"))
        })?;
    let now = schema::now_ms();
    Ok(Instance {
        id: id.to_owned(),
        host,
        port,
        version: config
            .service
            .version
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default(),
        status: Status::Up,
        // Callers reach the inbound listener, which takes h1 and h2c alike; advertising the
        // app's protocol lets an h2 (gRPC) app be called over h2 end to end.
        protocol: config.service.protocol,
        metadata: serde_json::to_value(&config.service.metadata).unwrap_or_default(),
        registered_at: now,
        last_heartbeat: now,
        expires_at: None,
    })
}

fn spawn_workers(
    config: &Config,
    shared: &Arc<Shared>,
    inbound_template: Inbound,
    outbound: Vec<std::net::TcpListener>,
    inbound: Option<Vec<std::net::TcpListener>>,
    shutdown: &watch::Receiver<bool>,
    release: &watch::Receiver<bool>,
) -> Result<Vec<oneshot::Receiver<()>>, StartError> {
    let mut inbound = inbound.map(Vec::into_iter);
    let unrouted = shared.metrics.destination(Direction::Outbound, "-");
    let grace = config.shutdown_grace.get();
    let mut done = Vec::new();
    for (i, out_listener) in outbound.into_iter().enumerate() {
        let in_listener = inbound.as_mut().and_then(Iterator::next);
        let outbound_handler = Arc::new(Outbound {
            table: shared.table.clone(),
            limits: config.limits.clone(),
            unrouted: unrouted.clone(),
            upgraded: shared
                .metrics
                .upgraded_connections
                .with_label_values(&["outbound"]),
            spans: inbound_template.spans.clone(),
        });
        let inbound_handler = Some(Arc::new(Inbound {
            table: inbound_template.table.clone(),
            app: inbound_template.app.clone(),
            realtime: inbound_template.realtime.clone(),
            upgraded: inbound_template.upgraded.clone(),
            idle_timeout: inbound_template.idle_timeout,
            spans: inbound_template.spans.clone(),
        }));
        let builder = server::http_builder(&config.limits);
        let inbound_tls = shared.mesh_tls.as_ref().map(|m| m.acceptor.clone());
        let shutdown = shutdown.clone();
        let release = stopped(release.clone());
        let listener_gauges = |listener: &str| server::ListenerGauges {
            open: shared
                .metrics
                .open_connections
                .with_label_values(&[listener]),
            parked: shared
                .metrics
                .parked_connections
                .with_label_values(&[listener]),
        };
        let gauges = (listener_gauges("outbound"), listener_gauges("inbound"));
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("meshlet-worker-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "worker runtime failed to start");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let sweeper = tokio::spawn(async {
                        let mut tick = tokio::time::interval(Duration::from_secs(30));
                        loop {
                            tick.tick().await;
                            upstream::sweep();
                        }
                    });
                    let out = async {
                        match TcpListener::from_std(out_listener) {
                            Ok(l) => {
                                server::serve(
                                    l,
                                    outbound_handler,
                                    builder.clone(),
                                    None,
                                    shutdown.clone(),
                                    grace,
                                    gauges.0,
                                )
                                .await
                            }
                            Err(e) => tracing::error!(error = %e, "outbound listener unusable"),
                        }
                    };
                    let inb = async {
                        if let (Some(l), Some(h)) = (in_listener, inbound_handler) {
                            match TcpListener::from_std(l) {
                                Ok(l) => {
                                    server::serve(
                                        l,
                                        h,
                                        builder.clone(),
                                        inbound_tls,
                                        shutdown.clone(),
                                        grace,
                                        gauges.1,
                                    )
                                    .await
                                }
                                Err(e) => tracing::error!(error = %e, "inbound listener unusable"),
                            }
                        }
                    };
                    tokio::join!(out, inb);
                    // Upgraded sockets (the hub's WebSockets, spliced upgrades) run as
                    // tasks of this runtime: it must live until they have said goodbye.
                    release.await;
                    sweeper.abort();
                });
                let _ = done_tx.send(());
            })
            .map_err(StartError::Thread)?;
        done.push(done_rx);
    }
    Ok(done)
}

async fn rebuild_on_change(shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let mut snapshots = shared.snapshot.clone();
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() { return; }
                shared.rebuild();
            }
            () = &mut stop => return,
        }
    }
}

/// How often the config file is checked for changes. Polling (a read and a hash) rather
/// than inotify: Kubernetes swaps ConfigMap files through symlinks, which file watches miss,
/// and a one-second poll keeps "edit → effect" under 2 s everywhere.
const CONFIG_POLL: Duration = Duration::from_secs(1);

async fn reload_on_change(shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).ok();
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    let mut poll = tokio::time::interval(CONFIG_POLL);
    loop {
        let sighup = async {
            match hangup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = poll.tick() => {}
            () = sighup => {
                tracing::info!("SIGHUP: re-reading the config file");
                shared.last_seen_hash.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            () = &mut stop => return,
        }
        if let Err(e) = shared.reload() {
            tracing::error!(error = %e, "config reload rejected; the previous config keeps serving");
        }
    }
}

/// Settings that only take effect at start: say so rather than pretend.
fn warn_if_restart_needed(old: &Config, new: &Config) {
    let mut changed = Vec::new();
    let service = |c: &Config| serde_json::to_string(&c.service).unwrap_or_default();
    if service(old) != service(new) {
        changed.push("service");
    }
    let timers = |c: &Config| (c.registry.ttl, c.registry.heartbeat, c.registry.resync);
    if timers(old) != timers(new) {
        changed.push("registry.ttl/heartbeat/resync");
    }
    if old.shutdown_grace != new.shutdown_grace {
        changed.push("shutdown_grace");
    }
    if old.events.subscriptions.len() != new.events.subscriptions.len()
        || serde_json::to_string(&old.realtime).ok() != serde_json::to_string(&new.realtime).ok()
    {
        changed.push("events/realtime");
    }
    let (a, b) = (&old.listen, &new.listen);
    if a.outbound != b.outbound
        || a.inbound != b.inbound
        || a.api != b.api
        || a.telemetry != b.telemetry
    {
        changed.push("listen");
    }
    if old.workers != new.workers {
        changed.push("workers");
    }
    if old.registry.redis != new.registry.redis || old.registry.prefix != new.registry.prefix {
        changed.push("registry.redis/prefix");
    }
    let limits = |c: &Config| serde_json::to_string(&c.limits).unwrap_or_default();
    if limits(old) != limits(new) {
        changed.push("limits");
    }
    let rest =
        |c: &Config| serde_json::to_string(&(&c.tls, &c.telemetry, &c.events)).unwrap_or_default();
    if rest(old) != rest(new) {
        changed.push("tls/telemetry/events");
    }
    if !changed.is_empty() {
        tracing::warn!(fields = ?changed, "these settings changed but apply only after a restart");
    }
}

fn telemetry_router(shared: &Arc<Shared>) -> Router {
    let shared = shared.clone();
    Arc::new(move |req: Request<Incoming>| {
        let resp = telemetry_answer(&shared, &req);
        Box::pin(async move { resp })
    })
}

fn telemetry_answer(shared: &Shared, req: &Request<Incoming>) -> Response<ResponseBody> {
    {
        if admin::is_get(req, "/metrics") {
            admin::respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                shared.metrics.encode().into(),
            )
        } else if admin::is_get(req, "/healthz/live") {
            admin::json(StatusCode::OK, &serde_json::json!({"status": "live"}))
        } else if admin::is_get(req, "/healthz/ready") {
            let ready = shared.is_ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            admin::json(
                status,
                &serde_json::json!({
                    "ready": ready,
                    "listening": shared.listening.load(Ordering::Acquire),
                    "registry_loaded": shared.registry_ready.load(Ordering::Acquire),
                    "app_healthy": shared.app_healthy.load(Ordering::Acquire),
                }),
            )
        } else {
            admin::not_found(req)
        }
    }
}

fn api_router(
    shared: &Arc<Shared>,
    events: Option<Arc<Events>>,
    realtime: Option<Arc<Realtime>>,
) -> Router {
    let shared = shared.clone();
    Arc::new(move |req: Request<Incoming>| -> ResponseFuture {
        let path = req.uri().path();
        if path.starts_with("/v1/events") {
            return match events.clone() {
                Some(events) => Box::pin(async move { events.handle(req).await }),
                None => unconfigured(&req, "events"),
            };
        }
        if realtime::API_PATHS.iter().any(|p| path.starts_with(p)) {
            return match realtime.clone() {
                Some(hub) => Box::pin(async move { hub.handle_api(req).await }),
                None => unconfigured(&req, "realtime"),
            };
        }
        let resp = api_answer(&shared, &req);
        Box::pin(async move { resp })
    })
}

fn unconfigured(req: &Request<Incoming>, section: &str) -> ResponseFuture {
    let resp = admin::json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({
            "error": "not_configured",
            "message": format!("{} {}: the `{section}` section is not configured", req.method(), req.uri().path()),
        }),
    );
    Box::pin(async move { resp })
}

fn api_answer(shared: &Shared, req: &Request<Incoming>) -> Response<ResponseBody> {
    {
        if admin::is_get(req, "/v1/config") {
            let loaded = shared.config.load();
            let loaded_at = loaded
                .loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            admin::json(
                StatusCode::OK,
                &serde_json::json!({
                    "source": loaded.source,
                    "hash": loaded.hash,
                    "loaded_at_ms": loaded_at,
                    "config": loaded.config,
                }),
            )
        } else if admin::is_get(req, "/v1/registry") {
            let snapshot = shared.registry_view(&shared.config.load().config);
            admin::json(
                StatusCode::OK,
                &serde_json::json!({
                    "instance_id": shared.instance_id,
                    "redis_read_at_ms": snapshot.redis_read_at,
                    "services": snapshot.services,
                }),
            )
        } else {
            admin::not_found(req)
        }
    }
}
