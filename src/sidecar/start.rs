//! The named steps of [`super::Sidecar::start`]: what each part is built from, in the order
//! they start.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::shared::Shared;
use super::{Addresses, StartError};
use crate::config::{Config, Policy, Protocol};
use crate::control::app::AppClient;
use crate::control::keys::Keys;
use crate::control::redis::{self, Link};
use crate::control::shutdown::{self, Trigger};
use crate::control::Shutdown;
use crate::identity::tls::MeshTls;
use crate::policy::balance::Endpoint;
use crate::proxy::destination::Destination;
use crate::proxy::inbound::Inbound;
use crate::proxy::listen;
use crate::realtime::Realtime;
use crate::registry::health::HealthCheck;
use crate::registry::hygiene::OwnListeners;
use crate::registry::registration::Registration;
use crate::registry::watch::Watcher;
use crate::registry::{schema, Instance, Snapshot, Status};
use crate::telemetry::metrics::{Direction, Metrics};
use crate::telemetry::otlp::SpanExport;

/// How long readiness waits for a first Redis snapshot before serving static and
/// last-known entries anyway (docs/registry.md).
const REGISTRY_READY_DEADLINE: Duration = Duration::from_secs(10);

/// How long deregistration may take at shutdown before the entry is left to expire.
pub(super) const DEREGISTER_WAIT: Duration = Duration::from_secs(3);

/// Mutual TLS between meshlets, when `tls:` is configured.
pub(super) fn mesh_tls(config: &Config) -> Result<Option<Arc<MeshTls>>, StartError> {
    let Some(t) = &config.tls else {
        return Ok(None);
    };
    let tls = MeshTls::load(t.cert.as_str(), t.key.as_str(), t.ca.as_str())?;
    Ok(Some(Arc::new(tls)))
}

/// The Redis link of `registry.redis` (no I/O yet), made on the control-plane runtime.
/// Refused before anything connects when this pod would register `127.0.0.1` into a Redis
/// on another machine ([`own_address`]).
pub(super) fn redis_link(config: &Config) -> Result<Option<Arc<Link>>, StartError> {
    let Some(store) = config.registry.store() else {
        return Ok(None);
    };
    if config.service.app.is_some() || config.realtime.is_some() {
        // It will register: fail now rather than after the watcher has started.
        own_address(config, 0)?;
    }
    Ok(Some(Arc::new(Link::new(redis::Target::new(store)?))))
}

/// This pod's instance id: its pod (or host) name and a random suffix, in the registry's
/// alphabet (`[A-Za-z0-9._-]`, at most 128 characters) so other meshlets accept it.
pub(super) fn instance_id(service: &str) -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| service.to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(121)
        .collect();
    format!("{host}-{:06x}", fastrand::u32(..0x00ff_ffff))
}

/// The OTLP span export, when `telemetry.otlp` is configured.
pub(super) fn span_export(config: &Config) -> Result<Option<Arc<SpanExport>>, StartError> {
    let Some(otlp) = &config.telemetry.otlp else {
        return Ok(None);
    };
    Ok(Some(Arc::new(SpanExport::new(
        config.service.name.as_str(),
        otlp,
    )?)))
}

/// The local app (`service.app`) as a one-endpoint destination for the inbound side.
pub(super) fn app_destination(
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<Arc<Destination>>, StartError> {
    let Some(app) = &config.service.app else {
        return Ok(None);
    };
    let app = &app.0;
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
    Ok(Some(Arc::new(Destination {
        name: Arc::from(name),
        policy,
        endpoints: vec![Arc::new(endpoint)],
        metrics: metrics.destination(Direction::Inbound, name),
        egress: None,
        state: Default::default(),
        token: Default::default(),
        static_auth: None,
        // The inbound limit is `auth.inbound.rate_limit`, kept in the routing table.
        rate_limit: None,
    })))
}

/// The inbound handler: the app, and the hub's socket path when the hub is on.
pub(super) fn inbound_handler(
    config: &Config,
    shared: &Shared,
    app: Option<Arc<Destination>>,
    realtime: &Option<Arc<Realtime>>,
    spans: &Option<Arc<SpanExport>>,
) -> Inbound {
    Inbound {
        table: shared.table.clone(),
        app,
        route: realtime.as_ref().map(Realtime::route),
        upgraded: shared
            .metrics
            .upgraded_connections
            .with_label_values(&["inbound"]),
        idle_timeout: config.limits.idle_timeout.get(),
        spans: spans.clone(),
        taps: shared.taps.clone(),
        boundary: crate::proxy::inbound::Boundary::from_config(config),
    }
}

/// Every listener, bound before anything is served.
pub(super) struct Listeners {
    /// One `SO_REUSEPORT` copy per worker.
    pub outbound: Vec<std::net::TcpListener>,
    /// Bound when there is an app or a hub to serve.
    pub inbound: Option<Vec<std::net::TcpListener>>,
    pub api: TcpListener,
    pub telemetry: TcpListener,
}

impl Listeners {
    pub(super) async fn bind(config: &Config, has_app: bool) -> Result<Listeners, StartError> {
        let workers = config.worker_count();
        let outbound = bind_copies("outbound", config.listen.outbound.0, workers)?;
        let inbound = if has_app || config.realtime.is_some() {
            Some(bind_copies("inbound", config.listen.inbound.0, workers)?)
        } else {
            None
        };
        Ok(Listeners {
            outbound,
            inbound,
            api: bind_one("api", config.listen.api.0).await?,
            telemetry: bind_one("telemetry", config.listen.telemetry.0).await?,
        })
    }

    /// Where they ended up (port 0 resolved).
    pub(super) fn addresses(&self) -> Addresses {
        Addresses {
            outbound: std_addr(&self.outbound[0]),
            inbound: self.inbound.as_ref().map(|l| std_addr(&l[0])),
            api: tokio_addr(&self.api),
            telemetry: tokio_addr(&self.telemetry),
        }
    }
}

fn bind_copies(
    what: &'static str,
    addr: SocketAddr,
    copies: usize,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    listen::bind(addr, copies).map_err(|source| StartError::Bind { what, addr, source })
}

async fn bind_one(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn std_addr(l: &std::net::TcpListener) -> SocketAddr {
    // A bound listener always has a local address.
    l.local_addr().expect("bound listener has an address")
}

fn tokio_addr(l: &TcpListener) -> SocketAddr {
    // A bound listener always has a local address.
    l.local_addr().expect("bound listener has an address")
}

/// Starts the app's health check when `service.health` is set; returns the registration
/// status it drives (up without a health check, draining until the first pass with one).
pub(super) fn health_check(
    config: &Config,
    shared: &Shared,
    shutdown: &Shutdown,
    control: &mut Vec<JoinHandle<()>>,
) -> watch::Sender<Status> {
    let initial = if config.service.health.is_some() {
        Status::Draining
    } else {
        Status::Up
    };
    let (status, _) = watch::channel(initial);
    let app = config.service.app.as_ref();
    // One probe at a time, its body unread: no idle connection is worth keeping.
    let app = app.and_then(|a| AppClient::new(&a.0, Protocol::Http1, 0));
    if let (Some(app), Some(path)) = (app, &config.service.health) {
        let check = HealthCheck {
            app,
            path: path.to_string(),
            interval: config.service.health_interval.get(),
            status: status.clone(),
            healthy: shared.app_healthy.clone(),
        };
        control.push(tokio::spawn(check.run(shutdown.clone())));
    }
    status
}

/// The Redis registry's parts: the watcher feeding snapshots, the readiness deadline, and
/// this pod's registration.
pub(super) struct Registry {
    pub link: Arc<Link>,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub status: watch::Sender<Status>,
}

impl Registry {
    /// Starts the watcher and the readiness deadline; registers this pod when it has an
    /// inbound listener. Returns the registration's own stop trigger and task: it is
    /// stopped first at shutdown, before the listeners.
    pub(super) fn start(
        self,
        config: &Config,
        shared: &Arc<Shared>,
        addresses: &Addresses,
        shutdown: &Shutdown,
        control: &mut Vec<JoinHandle<()>>,
    ) -> Result<Option<(Trigger, JoinHandle<()>)>, StartError> {
        let inbound = addresses.inbound;
        let instance = match inbound {
            Some(inbound) => Some(own_instance(config, &shared.instance_id, inbound)?),
            None => None,
        };
        // Before the first Redis snapshot: no instance may point callers at our listeners.
        let _ = shared
            .own_listeners
            .set(own_listeners(config, addresses, instance.as_ref()));
        let keys = Keys::new(config.registry.prefix.as_str());
        let reconnected = Arc::new(Notify::new());
        let watcher = Watcher {
            link: self.link.clone(),
            keys: keys.clone(),
            resync: config.registry.resync.get(),
            ttl: config.registry.ttl.get(),
            snapshots: self.snapshots,
            reconnected: reconnected.clone(),
            first_read: shared.registry_ready.clone(),
            metrics: shared.metrics.registry_metrics.clone(),
        };
        control.push(tokio::spawn(watcher.run(shutdown.clone())));
        control.push(tokio::spawn(ready_by_deadline(shared.clone())));
        let Some(instance) = instance else {
            return Ok(None);
        };
        let registration = Registration {
            link: self.link,
            keys,
            service: config.service.name.to_string(),
            instance,
            ttl: config.registry.ttl.get(),
            heartbeat: config.registry.heartbeat.get(),
            reconnected,
            status: self.status.subscribe(),
        };
        let (stop, stopped) = shutdown::channel();
        Ok(Some((stop, tokio::spawn(registration.run(stopped)))))
    }
}

/// Ready without a first snapshot once [`REGISTRY_READY_DEADLINE`] has passed.
async fn ready_by_deadline(shared: Arc<Shared>) {
    tokio::time::sleep(REGISTRY_READY_DEADLINE).await;
    if !shared.registry_ready.swap(true, Ordering::AcqRel) {
        tracing::warn!("no registry snapshot after 10s; ready with static and last-known entries");
    }
}

/// This meshlet's listeners as registry hygiene sees them: the bound addresses, and the
/// addresses besides loopback on which a wildcard-bound one also answers (`POD_IP`, the
/// advertised IP).
fn own_listeners(
    config: &Config,
    addresses: &Addresses,
    instance: Option<&Instance>,
) -> OwnListeners {
    let mut bound = vec![addresses.outbound, addresses.api, addresses.telemetry];
    bound.extend(addresses.inbound);
    let mut local_ips: Vec<IpAddr> = std::env::var("POD_IP")
        .ok()
        .and_then(|ip| ip.trim().parse().ok())
        .into_iter()
        .collect();
    if config.service.advertise.is_some() {
        local_ips.extend(instance.and_then(|i| i.host.parse::<IpAddr>().ok()));
    }
    OwnListeners {
        bound,
        local_ips,
        registration: instance.map(|i| (config.service.name.to_string(), i.id.clone())),
    }
}

/// The `host:port` this pod registers: `service.advertise`, else `$POD_IP:<inbound port>`,
/// else `127.0.0.1:<inbound port>`, which only a Redis on this machine may hold (a caller
/// elsewhere would dial its own loopback): into any other Redis it is a start error.
fn own_address(config: &Config, inbound_port: u16) -> Result<String, StartError> {
    if let Some(a) = &config.service.advertise {
        return Ok(a.as_str().to_owned());
    }
    match std::env::var("POD_IP") {
        Ok(ip) if !ip.is_empty() => return Ok(format!("{ip}:{inbound_port}")),
        _ => {}
    }
    match &config.registry.redis {
        Some(url) if !url.is_loopback() => Err(StartError::Address(format!(
            "neither service.advertise nor POD_IP is set, so this pod would register as \
             127.0.0.1 into registry.redis `{}`, which is not on this machine: other pods \
             would dial their own loopback; set service.advertise or POD_IP to an address \
             they can reach",
            url.redacted()
        ))),
        _ => Ok(format!("127.0.0.1:{inbound_port}")),
    }
}

/// This pod's registry entry: advertised address, version, metadata.
fn own_instance(config: &Config, id: &str, inbound: SocketAddr) -> Result<Instance, StartError> {
    let advertise = own_address(config, inbound.port())?;
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

/// The one "started" line.
pub(super) fn log_started(config: &Config, shared: &Shared, addresses: &Addresses) {
    tracing::info!(
        service = %config.service.name,
        instance = %shared.instance_id,
        outbound = %addresses.outbound,
        inbound = ?addresses.inbound,
        api = %addresses.api,
        telemetry = %addresses.telemetry,
        workers = config.worker_count(),
        registry = match config.registry.store() {
            Some(crate::config::Store::Server(_)) => "redis",
            Some(crate::config::Store::Sentinel(_)) => "sentinel",
            Some(crate::config::Store::Cluster(_)) => "cluster",
            None => "static",
        },
        "meshlet started"
    );
}
