//! Redis connections for the control plane (registry now; events and realtime later):
//! bounded connect and response times so a dead Redis never hangs a task, and an
//! [`Outage`] tracker so an outage is logged once, not once per retry.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

use crate::config::RedisUrl;

/// How long a connect or a command may take before it counts as failed.
pub const REDIS_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a client for `url` (no I/O yet).
pub fn client(url: &RedisUrl) -> redis::RedisResult<Client> {
    Client::open(url.expose())
}

/// A multiplexed command connection with bounded connect and response times.
pub async fn connect(client: &Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_IO_TIMEOUT))
        .set_response_timeout(Some(REDIS_IO_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Logs a dependency's outage once when it starts and once when it ends.
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    since: Option<Instant>,
}

impl Outage {
    /// A tracker for `what` (e.g. "registry watch").
    pub fn new(what: &'static str) -> Self {
        Outage { what, since: None }
    }

    /// Records a failure; logs only the first of an outage.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(what = self.what, %error, "redis unreachable; retrying with backoff");
        }
    }

    /// Records a success; logs the end of an outage.
    pub fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(what = self.what, down_for = ?since.elapsed(), "redis reachable again");
        }
    }

    /// Whether an outage is going on.
    pub fn is_down(&self) -> bool {
        self.since.is_some()
    }
}

/// Exponential backoff with full jitter between `base` and `max`.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `base`, doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            next: base,
        }
    }
    /// The next pause: a random point in [next/2, next], then doubles `next`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = ceiling / 2;
        half + ceiling.mul_f64(fastrand::f64() * 0.5)
    }
    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}
