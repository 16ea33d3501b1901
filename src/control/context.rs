//! What the features above the data plane (events, the realtime hub) start from: the config
//! at start, the Redis link when a registry is configured, this meshlet's instance id, the
//! metric registry and the shutdown handle. Built once by the sidecar.

use std::sync::Arc;

use super::redis::Link;
use super::Shutdown;
use crate::config::Config;
use crate::telemetry::metrics::Metrics;

/// What events and the realtime hub start from.
pub struct Context<'a> {
    /// The config at start.
    pub config: &'a Config,
    /// The Redis link of `registry.redis`, when configured.
    pub redis: Option<Arc<Link>>,
    /// This meshlet's instance id (consumer name, presence key).
    pub instance_id: &'a str,
    /// Where to register metric families ([`Metrics::registry`]).
    pub metrics: &'a Metrics,
    /// Turns on at shutdown.
    pub shutdown: Shutdown,
}
