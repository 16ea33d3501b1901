//! The state the control-plane tasks and the admin views share: the active config, the
//! routing table every request reads, the latest registry snapshot, metrics and readiness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, LoadedConfig};
use crate::identity::tls::MeshTls;
use crate::proxy::destination::RoutingTable;
use crate::registry::hygiene::{Hygiene, OwnListeners, Reason};
use crate::registry::{static_instances, Snapshot};
use crate::telemetry::access::tap::Taps;
use crate::telemetry::metrics::Metrics;

/// State shared by the control-plane tasks and the admin views.
pub struct Shared {
    /// The active config.
    pub config: ArcSwap<LoadedConfig>,
    /// The live routing table read by every request.
    pub(crate) table: Arc<ArcSwap<RoutingTable>>,
    /// Latest registry snapshot.
    pub(crate) snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Metric families.
    pub(crate) metrics: Metrics,
    /// The taps of `GET /v1/tap`, offered every answered request while someone taps.
    pub(crate) taps: Taps,
    /// Listeners bound.
    pub(crate) listening: AtomicBool,
    /// First registry snapshot in (or Redis still unreachable after 10 s).
    pub(crate) registry_ready: Arc<AtomicBool>,
    /// Mutual TLS between meshlets (`tls:`), loaded at start.
    pub(crate) mesh_tls: Option<Arc<MeshTls>>,
    /// The app's health check passes (always true without `service.health`).
    pub(crate) app_healthy: Arc<AtomicBool>,
    /// This pod's instance id in the registry.
    pub instance_id: String,
    /// This meshlet's bound listeners, which no registry instance may point at; set once
    /// they are bound, before the registry watcher starts.
    pub(crate) own_listeners: OnceLock<OwnListeners>,
    rebuild_lock: Mutex<()>,
    /// Hash of the config text last read (valid or not), so a broken file is reported once.
    pub(super) last_seen_hash: Mutex<String>,
}

impl Shared {
    /// The state for `loaded`, with an empty snapshot and the table built from its static
    /// entries; returns the sender the registry watcher feeds snapshots into.
    pub(super) fn new(
        loaded: LoadedConfig,
        metrics: Metrics,
        mesh_tls: Option<Arc<MeshTls>>,
        waits_for_redis: bool,
        instance_id: String,
    ) -> (Arc<Shared>, watch::Sender<Arc<Snapshot>>) {
        let config = &loaded.config;
        let (snapshot_tx, snapshot) = watch::channel(Arc::new(Snapshot::default()));
        let initial = Snapshot::default().with_statics(&static_instances(&config.registry));
        for reason in Reason::ALL {
            // Every reason's series exists from the start, at 0.
            metrics
                .registry_metrics
                .rejected
                .with_label_values(&[reason.as_str()]);
        }
        let table = RoutingTable::build(
            config,
            &initial,
            &RoutingTable::empty(config),
            &metrics,
            mesh_tls.as_deref(),
            &Hygiene::default(),
        );
        let shared = Shared {
            table: Arc::new(ArcSwap::from_pointee(table)),
            snapshot,
            metrics,
            taps: Taps::default(),
            listening: AtomicBool::new(false),
            registry_ready: Arc::new(AtomicBool::new(!waits_for_redis)),
            app_healthy: Arc::new(AtomicBool::new(config.service.health.is_none())),
            mesh_tls,
            instance_id,
            own_listeners: OnceLock::new(),
            rebuild_lock: Mutex::new(()),
            last_seen_hash: Mutex::new(loaded.hash.clone()),
            config: ArcSwap::from_pointee(loaded),
        };
        (Arc::new(shared), snapshot_tx)
    }

    /// Ready for traffic: listeners bound, the registry loaded and the app healthy.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire)
            && self.registry_ready.load(Ordering::Acquire)
            && self.app_healthy.load(Ordering::Acquire)
    }

    /// Rebuilds the routing table from the active config and the latest snapshot.
    pub(crate) fn rebuild(&self) {
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
            &self.hygiene(&config.config),
        );
        self.table.store(Arc::new(table));
    }

    /// What Redis instances are checked against under `config` (docs/registry.md).
    fn hygiene(&self, config: &Config) -> Hygiene {
        Hygiene {
            allow_loopback: config.registry.allow_loopback(),
            own: self.own_listeners.get().cloned().unwrap_or_default(),
        }
    }

    /// Static entries of `config` merged with the latest Redis snapshot.
    pub(crate) fn registry_view(&self, config: &Config) -> Snapshot {
        self.snapshot
            .borrow()
            .with_statics(&static_instances(&config.registry))
    }
}
