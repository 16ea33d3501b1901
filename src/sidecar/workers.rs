//! The data-plane workers: one OS thread per worker, each with its own single-threaded
//! tokio runtime, its own `SO_REUSEPORT` copy of the outbound and inbound listeners and its
//! own upstream pool (thread-per-core: no work stealing, no shared pool, no lock on the
//! request path).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use super::shared::Shared;
use super::StartError;
use crate::config::Config;
use crate::control::admin::ConnectionCap;
use crate::control::Shutdown;
use crate::proxy::inbound::Inbound;
use crate::proxy::listen::HttpSettings;
use crate::proxy::outbound::Outbound;
use crate::proxy::server::{self, ListenerGauges};
use crate::proxy::upstream;
use crate::telemetry::metrics::Direction;

/// How often a worker closes its idle pooled upstream connections.
const POOL_SWEEP: Duration = Duration::from_secs(30);

/// What every worker is built from.
pub(super) struct Plan {
    /// The outbound handler, copied into each worker (no reference count shared between
    /// cores: each connection clones its worker's own).
    pub outbound: Outbound,
    /// The inbound handler, when the inbound listener is bound.
    pub inbound: Option<Inbound>,
    /// hyper's settings from `limits`.
    pub settings: HttpSettings,
    /// `limits.max_connections`: per listener, over all its workers' copies.
    pub max_connections: usize,
    /// Mutual TLS on the inbound listener.
    pub inbound_tls: Option<TlsAcceptor>,
    /// Stop accepting and drain.
    pub shutdown: Shutdown,
    /// Let the runtime end: upgraded sockets (the hub's WebSockets, spliced upgrades) are
    /// its tasks and must say goodbye first.
    pub release: Shutdown,
    /// How long in-flight requests may take once shutdown began.
    pub grace: Duration,
}

/// The outbound handler every worker clones.
pub(super) fn outbound_handler(config: &Config, shared: &Shared, inbound: &Inbound) -> Outbound {
    Outbound {
        table: shared.table.clone(),
        limits: config.limits.clone(),
        unrouted: shared.metrics.destination(Direction::Outbound, "-"),
        upgraded: shared
            .metrics
            .upgraded_connections
            .with_label_values(&["outbound"]),
        spans: inbound.spans.clone(),
        taps: inbound.taps.clone(),
    }
}

/// Starts one worker per outbound listener copy; each receiver resolves when its worker's
/// runtime has ended.
pub(super) fn spawn(
    plan: &Plan,
    shared: &Shared,
    outbound: Vec<std::net::TcpListener>,
    inbound: Option<Vec<std::net::TcpListener>>,
) -> Result<Vec<oneshot::Receiver<()>>, StartError> {
    let mut inbound = inbound.map(Vec::into_iter);
    // One cap per listener, shared by the workers' copies of it.
    let cap = |listener: &str| {
        let refused = shared
            .metrics
            .connections_refused
            .with_label_values(&[listener]);
        ConnectionCap::new(plan.max_connections, refused)
    };
    let (out_cap, in_cap) = (cap("outbound"), cap("inbound"));
    let gauges = |listener: &str, cap: &ConnectionCap| ListenerGauges {
        open: shared
            .metrics
            .open_connections
            .with_label_values(&[listener]),
        parked: shared
            .metrics
            .parked_connections
            .with_label_values(&[listener]),
        cap: cap.clone(),
    };
    let mut done = Vec::new();
    for (i, out_listener) in outbound.into_iter().enumerate() {
        let worker = Worker {
            outbound: (
                out_listener,
                Arc::new(plan.outbound.clone()),
                gauges("outbound", &out_cap),
            ),
            inbound: inbound
                .as_mut()
                .and_then(Iterator::next)
                .zip(plan.inbound.clone())
                .map(|(l, h)| (l, Arc::new(h), gauges("inbound", &in_cap))),
            inbound_tls: plan.inbound_tls.clone(),
            release: plan.release.clone(),
            serving: Serving {
                settings: plan.settings.clone(),
                shutdown: plan.shutdown.clone(),
                grace: plan.grace,
            },
        };
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("meshlet-worker-{i}"))
            .spawn(move || {
                worker.run();
                let _ = done_tx.send(());
            })
            .map_err(StartError::Thread)?;
        done.push(done_rx);
    }
    Ok(done)
}

/// One worker thread's share.
struct Worker {
    outbound: (std::net::TcpListener, Arc<Outbound>, ListenerGauges),
    inbound: Option<(std::net::TcpListener, Arc<Inbound>, ListenerGauges)>,
    inbound_tls: Option<TlsAcceptor>,
    release: Shutdown,
    serving: Serving,
}

/// How a worker serves each of its listeners.
struct Serving {
    settings: HttpSettings,
    shutdown: Shutdown,
    grace: Duration,
}

impl Worker {
    fn run(self) {
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
        runtime.block_on(self.serve());
    }

    async fn serve(self) {
        let sweeper = tokio::spawn(async {
            // The first sweep one period in: at start the pool is empty.
            let first = tokio::time::Instant::now() + POOL_SWEEP;
            let mut tick = tokio::time::interval_at(first, POOL_SWEEP);
            loop {
                tick.tick().await;
                upstream::sweep();
            }
        });
        let Worker {
            outbound: (out_listener, outbound, out_gauges),
            inbound,
            inbound_tls,
            release,
            serving,
        } = self;
        let out = serve_listener(
            "outbound",
            out_listener,
            outbound,
            None,
            &serving,
            out_gauges,
        );
        let inb = async {
            if let Some((listener, handler, gauges)) = inbound {
                serve_listener("inbound", listener, handler, inbound_tls, &serving, gauges).await;
            }
        };
        tokio::join!(out, inb);
        release.wait().await;
        sweeper.abort();
    }
}

async fn serve_listener<H: server::Handler>(
    what: &'static str,
    listener: std::net::TcpListener,
    handler: Arc<H>,
    tls: Option<TlsAcceptor>,
    serving: &Serving,
    gauges: ListenerGauges,
) {
    match TcpListener::from_std(listener) {
        Ok(listener) => {
            server::serve(
                listener,
                handler,
                serving.settings.clone(),
                tls,
                serving.shutdown.clone(),
                serving.grace,
                gauges,
            )
            .await
        }
        Err(e) => tracing::error!(listener = what, error = %e, "listener unusable"),
    }
}
