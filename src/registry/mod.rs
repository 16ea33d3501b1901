//! Service discovery and self-registration.
//!
//! Discovery keeps a local [`Snapshot`] of every service's live instances, merged from the
//! static entries of the config and, when `registry.redis` is set, from the Redis registry
//! (fed by [`watch`]). The request path only ever reads the snapshot: it never waits on
//! Redis. [`registration`] keeps this pod's own entry alive with heartbeats.

pub mod cli;
pub(crate) mod health;
pub(crate) mod hygiene;
pub(crate) mod registration;
pub(crate) mod schema;
mod static_entries;
pub(crate) mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

pub use schema::{Instance, Status};
pub use static_entries::static_instances;

/// Every known service and its live instances, as one immutable value.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Service → live instances (static entries first, then Redis ones by id).
    pub services: BTreeMap<String, Vec<Instance>>,
    /// Unix ms of the last successful read of Redis; 0 = never (or static only).
    pub redis_read_at: u64,
}

impl Snapshot {
    /// This snapshot with `statics` in front (static entries come from the config, which
    /// may be reloaded, so they are merged when the routing table is built).
    pub fn with_statics(&self, statics: &BTreeMap<String, Vec<Instance>>) -> Snapshot {
        let mut services = statics.clone();
        for (service, instances) in &self.services {
            services
                .entry(service.clone())
                .or_default()
                .extend(instances.iter().cloned());
        }
        Snapshot {
            services,
            redis_read_at: self.redis_read_at,
        }
    }

    /// Static entries merged with Redis instances.
    pub fn merge(
        statics: &BTreeMap<String, Vec<Instance>>,
        redis: &BTreeMap<String, BTreeMap<String, Instance>>,
        redis_read_at: u64,
    ) -> Self {
        let mut services = statics.clone();
        for (service, instances) in redis {
            services
                .entry(service.clone())
                .or_default()
                .extend(instances.values().cloned());
        }
        Snapshot {
            services,
            redis_read_at,
        }
    }
}

/// The discovery side's output: the latest snapshot, and whether the first one is in.
pub type SnapshotRx = tokio::sync::watch::Receiver<Arc<Snapshot>>;
