//! Redis for the control plane, one way for everyone (registry, events, hub, CLI): bounded
//! connect and reply times so a dead Redis never hangs a task, a [`Link`] that shares one
//! connection and replaces it after a connection-level failure (one rule for "this
//! connection is dead": [`is_dead`]), [`Backoff`] between reconnects, and an [`Outage`]
//! logged once when it starts and once when it ends, not once per retry.
//!
//! Which Redis: one server, a Sentinel set or a Cluster ([`Target`], docs/scaling.md); every
//! caller holds a [`Conn`] and never needs to know which. Pub/sub sessions (the registry
//! watcher, the hub's subscriber) hold a [`PubSub`] of their own and use the same backoff
//! and outage rules.

mod conn;
mod pubsub;
mod target;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError};
use tokio::runtime::Handle;

pub use conn::Conn;
pub use pubsub::PubSub;
pub use target::{Sentinels, Target};

/// How long a connect or a command may take before it counts as failed.
pub const REDIS_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazily (re)connected connection shared by its callers.
#[derive(Debug)]
pub struct Link {
    target: Target,
    /// Longest wait for one reply; blocking reads need more than [`REDIS_IO_TIMEOUT`].
    response_timeout: Duration,
    /// Where the connection's driver task lives: the runtime the link was made on (the
    /// control plane), whichever runtime later asks for the connection.
    home: Option<Handle>,
    /// The connection and the master-switch count it was made under ([`Target::switches`]).
    current: Mutex<Option<(Conn, u64)>>,
    /// Serializes reconnects: one connect for many waiting callers, not a stampede.
    connecting: tokio::sync::Mutex<()>,
}

impl Link {
    /// A link for ordinary commands (replies within [`REDIS_IO_TIMEOUT`]).
    pub fn new(target: Target) -> Link {
        Link::with_response_timeout(target, REDIS_IO_TIMEOUT)
    }

    /// A link whose replies may take up to `response_timeout` (BLOCK reads).
    pub fn with_response_timeout(target: Target, response_timeout: Duration) -> Link {
        Link {
            target,
            response_timeout,
            home: Handle::try_current().ok(),
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Where it connects, for a pub/sub session or a sibling link.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// A new pub/sub session on the same Redis.
    pub async fn pubsub(&self) -> Result<PubSub, RedisError> {
        PubSub::open(&self.target).await
    }

    /// The live connection, connecting first if there is none.
    pub async fn get(&self) -> Result<Conn, RedisError> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let _gate = self.connecting.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let switches = self.target.switches();
        let conn = self.connect().await?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((conn.clone(), switches));
        Ok(conn)
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        let (target, timeout) = (self.target.clone(), self.response_timeout);
        match &self.home {
            Some(home) if Handle::try_current().ok().map(|h| h.id()) != Some(home.id()) => home
                .spawn(async move { target.connect(timeout).await })
                .await
                .map_err(|e| {
                    RedisError::from(std::io::Error::other(format!("redis connect task: {e}")))
                })?,
            _ => target.connect(timeout).await,
        }
    }

    /// Reports a failed command: a dead connection ([`is_dead`]) is dropped so the next
    /// [`Link::get`] reconnects; an error reply (NOGROUP, WRONGTYPE, ...) keeps it.
    pub fn failed(&self, error: &RedisError) {
        if is_dead(error) {
            self.reset();
        }
    }

    /// Drops the connection.
    pub fn reset(&self) {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// The connection, unless the master switched since it was made.
    fn cached(&self) -> Option<Conn> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some((conn, made_under)) if *made_under == self.target.switches() => Some(conn.clone()),
            Some(_) => {
                current.take();
                None
            }
            None => None,
        }
    }
}

/// The one rule for "this connection is dead": anything but an error reply from a live
/// server (I/O errors, timeouts, a dropped connection, a protocol error) is.
/// A `READONLY` reply is one too: the server was a master and is a replica now (a
/// failover), so the next connection must find the new master.
pub fn is_dead(error: &RedisError) -> bool {
    !is_server_error(error)
        || error.is_connection_dropped()
        || error.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// Whether Redis answered with an error reply (the connection itself is fine).
pub fn is_server_error(error: &RedisError) -> bool {
    matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
        && !error.is_io_error()
        && error.code().is_some()
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

/// Exponential backoff with jitter between `base` and `max`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_kill_the_connection_and_error_replies_do_not() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_dead(&io));
        let reply = redis::RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "NOGROUP",
            "No such key".to_owned(),
        ));
        assert!(
            !is_dead(&reply),
            "{reply:?} kind {:?} code {:?}",
            reply.kind(),
            reply.code()
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        b.next_delay();
        for _ in 0..5 {
            assert!(b.next_delay() <= Duration::from_millis(400));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
