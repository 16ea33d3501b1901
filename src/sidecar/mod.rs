//! The running sidecar: turns a [`LoadedConfig`] into live parts and stops them in order.
//! [`Sidecar::start`] reads as its steps: TLS and Redis, shared state, listeners, the
//! features (events, hub), the data-plane [`workers`], the control-plane tasks (routes,
//! [`reload`], health check, registry); [`Sidecar::shutdown`] is the shutdown sequence of
//! docs/architecture.md.
//!
//! Threads: each data-plane worker is an OS thread with its own single-threaded runtime
//! ([`workers`]). The control plane (registry watcher, self-registration, table rebuilds,
//! the telemetry and API servers, events and hub tasks) runs on the runtime that called
//! [`Sidecar::start`].

mod reload;
mod routes;
mod shared;
mod start;
mod stats;
mod workers;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Config, LoadedConfig};
use crate::control::shutdown::{self, Trigger};
use crate::control::{admin, Context};
use crate::events::Events;
use crate::identity::tls::{install_crypto_provider, TlsError};
use crate::proxy::listen;
use crate::realtime::Realtime;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otlp::SpanExport;

pub use shared::Shared;

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

/// Where the listeners ended up (port 0 resolved).
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    /// Outbound listener.
    pub outbound: SocketAddr,
    /// Inbound listener; `None` without `service.app` or `realtime`.
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
    shutdown: Trigger,
    workers: Vec<oneshot::Receiver<()>>,
    registration: Option<(Trigger, JoinHandle<()>)>,
    control: Vec<JoinHandle<()>>,
    grace: Duration,
    /// Lets the worker runtimes end once the hub's sockets are closed.
    release_workers: Trigger,
    realtime: Option<Arc<Realtime>>,
    spans: Option<Arc<SpanExport>>,
}

impl Sidecar {
    /// Starts everything; returns once every listener is bound. Must be called inside a
    /// tokio runtime, which then carries the control plane.
    pub async fn start(loaded: LoadedConfig) -> Result<Sidecar, StartError> {
        install_crypto_provider();
        raise_open_files_limit();
        let config = loaded.config.clone();
        let mesh_tls = start::mesh_tls(&config)?;
        let redis = start::redis_link(&config)?;
        let instance_id = start::instance_id(config.service.name.as_str());
        let (shared, snapshots) = Shared::new(
            loaded,
            Metrics::new(),
            mesh_tls,
            redis.is_some(),
            instance_id,
        );
        let (trigger, shutdown) = shutdown::channel();
        let app = start::app_destination(&config, &shared.metrics)?;
        stats::EndpointStates::register(&shared, app.clone());
        let listeners = start::Listeners::bind(&config, app.is_some()).await?;
        let addresses = listeners.addresses();
        let spans = start::span_export(&config)?;

        // Events and the realtime hub own their modules and start their own control-plane
        // tasks; the local API reaches both, and the inbound listener the hub's socket path.
        let context = Context {
            config: &config,
            redis: redis.clone(),
            instance_id: &shared.instance_id,
            metrics: &shared.metrics,
            shutdown: shutdown.clone(),
        };
        let events = Events::start(&context).await;
        let realtime = Realtime::start(&context);

        let (release_workers, release) = shutdown::channel();
        let inbound = start::inbound_handler(&config, &shared, app.clone(), &realtime, &spans);
        let plan = workers::Plan {
            outbound: workers::outbound_handler(&config, &shared, &inbound),
            inbound: listeners.inbound.is_some().then_some(inbound),
            settings: listen::http_builder(&config.limits),
            max_connections: config.limits.max_connections,
            inbound_tls: shared.mesh_tls.as_ref().map(|m| m.acceptor.clone()),
            shutdown: shutdown.clone(),
            release,
            grace: config.shutdown_grace.get(),
        };
        let workers = workers::spawn(&plan, &shared, listeners.outbound, listeners.inbound)?;

        let mut control = vec![
            tokio::spawn(admin::serve(
                listeners.api,
                routes::api(&shared, events, realtime.clone(), shutdown.clone()),
                control_listener(&config, &shared, "api"),
                shutdown.clone(),
            )),
            tokio::spawn(admin::serve(
                listeners.telemetry,
                routes::telemetry(&shared),
                control_listener(&config, &shared, "telemetry"),
                shutdown.clone(),
            )),
            tokio::spawn(reload::rebuild_on_change(shared.clone(), shutdown.clone())),
            tokio::spawn(reload::reload_on_change(shared.clone(), shutdown.clone())),
        ];
        let status = start::health_check(&config, &shared, &shutdown, &mut control);
        let registration = match redis {
            Some(link) => {
                let registry = start::Registry {
                    link,
                    snapshots,
                    status,
                };
                registry.start(&config, &shared, &addresses, &shutdown, &mut control)?
            }
            None => None,
        };

        shared.listening.store(true, Ordering::Release);
        start::log_started(&config, &shared, &addresses);
        Ok(Sidecar {
            addresses,
            shared,
            shutdown: trigger,
            workers,
            registration,
            control,
            grace: plan.grace,
            release_workers,
            realtime,
            spans,
        })
    }

    /// Graceful shutdown (docs/architecture.md, "Shutdown"): deregister at once, stop
    /// accepting, let the hub's clients and in-flight requests finish within
    /// `shutdown_grace`, then stop the control plane and flush spans.
    pub async fn shutdown(mut self) {
        tracing::info!(grace = ?self.grace, "shutting down");
        self.shared.listening.store(false, Ordering::Release);
        if let Some((stop, handle)) = self.registration.take() {
            stop.fire();
            let _ = tokio::time::timeout(start::DEREGISTER_WAIT, handle).await;
        }
        self.shutdown.fire();
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
        self.release_workers.fire();
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

/// How the `api` or `telemetry` listener serves: `limits`' timeouts, at most
/// [`admin::MAX_CONNECTIONS`], counted under its own `listener` label.
fn control_listener(config: &Config, shared: &Shared, listener: &str) -> admin::Listener {
    let metrics = &shared.metrics;
    admin::Listener::new(
        &config.limits,
        metrics.open_connections.with_label_values(&[listener]),
        metrics.connections_refused.with_label_values(&[listener]),
    )
}

/// Raises the soft limit on open files to the hard limit: each client connection, upstream
/// connection and hub socket is a descriptor, and the usual soft default (1024) is far
/// below `limits.max_connections`. A failure is logged and start-up goes on.
pub fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    // An unlimited hard limit is not a valid soft one for files (Linux caps it at
    // fs.nr_open, 1 Mi by default; macOS at OPEN_MAX): take that instead.
    let target = hard.unwrap_or(1 << 20);
    if soft.is_some_and(|soft| soft < target) {
        limit.current = Some(target);
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::debug!(?soft, ?hard, "RLIMIT_NOFILE soft limit raised"),
            Err(e) => tracing::warn!(?soft, ?hard, error = %e, "cannot raise RLIMIT_NOFILE"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::events::metrics::EventMetrics;
    use crate::realtime::metrics::RealtimeMetrics;
    use crate::telemetry::metrics::testing::errors_logged;
    use crate::telemetry::metrics::Metrics;

    /// Every module's families side by side on one sidecar's registry, as `start` puts them:
    /// a duplicate name, which would drop a family from `/metrics`, cannot ship.
    #[test]
    fn every_metric_family_registers_once_on_one_registry() {
        let ((), errors) = errors_logged(|| {
            let metrics = Metrics::new();
            EventMetrics::register(metrics.registry());
            RealtimeMetrics::new(metrics.registry());
        });
        assert_eq!(
            errors, 0,
            "a metric family failed to register (duplicate name?)"
        );
    }
}
