//! The hub across meshlets, over Redis (docs/realtime.md). Every key and channel is scoped by
//! the service (`{svc}` = `service.name`), so services sharing one Redis and prefix never
//! share a hub: pub/sub channels `{prefix}:rt:{svc}:all`, `{prefix}:rt:{svc}:room:{room}` and
//! `{prefix}:rt:{svc}:user:{user}` (the last two subscribed only while a local client holds
//! them), per-room history in a capped stream `{prefix}:rt:{svc}:hist:{room}` whose entry
//! ids are the offsets, and presence in `{prefix}:rt:{svc}:presence:{room}` (HASH client →
//! user).
//!
//! Presence survives instance crashes by liveness keys: each meshlet refreshes
//! `{prefix}:rt:{svc}:alive:{instance}` (TTL = `registry.ttl`) every `registry.heartbeat`,
//! lists itself in `{prefix}:rt:{svc}:instances` and its rooms in
//! `{prefix}:rt:{svc}:rooms:{instance}`.
//! Client ids start with the instance id, so readers skip entries of dead instances and
//! any live meshlet sweeps them away.
//!
//! Redis restarted or unreachable: the subscriber reconnects with backoff and subscribes
//! again to everything the hub holds; clients stay connected throughout.
//!
//! Files, one idea each:
//! - this file: the [`Cluster`] handle, its settings and channels (key names:
//!   `crate::control::keys`);
//! - `envelope`: what meshlets publish to each other ([`Envelope`], [`Op`]);
//! - `history`: publishing, and reading a room's history back for a join;
//! - `subscriber`: the pub/sub connection and the channels it holds;
//! - `presence`: who is in which room, kept per meshlet and swept after a crash.

mod envelope;
mod history;
mod presence;
mod resume;
mod subscriber;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::control::redis::Conn;
use redis::RedisError;
use tokio::sync::{mpsc, oneshot};

use crate::control::Shutdown;
use tokio::time::timeout;

use super::hub::Hub;
use crate::control::keys::{HubKeys, Keys};
use crate::control::redis::Link;

pub use envelope::{Envelope, Op};
pub use history::{HistoryLimits, Recovery};
use presence::Presence;
use subscriber::Command;

/// A channel the hub may hold.
#[derive(Clone, Debug)]
pub enum Channel {
    /// `rt:{svc}:room:{room}`.
    Room(Arc<str>),
    /// `rt:{svc}:user:{user}`.
    User(Arc<str>),
}

/// Why a Redis step of the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// No answer in time (subscription not confirmed while Redis is down).
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The subscriber task is gone (shutting down).
    #[error("the hub is shutting down")]
    Closed,
}

/// The Redis side of one hub.
pub struct Cluster {
    link: Arc<Link>,
    keys: HubKeys,
    instance: String,
    hub: Arc<Hub>,
    history: HistoryLimits,
    presence_ttl: Duration,
    heartbeat: Duration,
    commands: mpsc::UnboundedSender<Command>,
    presence: mpsc::UnboundedSender<Presence>,
    subscribed: AtomicBool,
    script: redis::Script,
}

/// The receiving ends the background tasks take over in [`Cluster::spawn`].
pub struct Tasks {
    commands: mpsc::UnboundedReceiver<Command>,
    presence: mpsc::UnboundedReceiver<Presence>,
}

/// Called for every envelope received from Redis.
pub type Dispatch = Arc<dyn Fn(Envelope) + Send + Sync>;

/// Settings of a [`Cluster`].
pub struct ClusterConfig {
    /// `registry.redis`, made on the control-plane runtime (where the connection's driver
    /// task then lives, whichever runtime asks).
    pub link: Arc<Link>,
    /// `registry.prefix`.
    pub prefix: String,
    /// `service.name`: scopes every key and channel of the hub.
    pub service: String,
    /// This meshlet's instance id.
    pub instance: String,
    /// `realtime.history`.
    pub history: HistoryLimits,
    /// `registry.ttl`: liveness and presence expiry.
    pub ttl: Duration,
    /// `registry.heartbeat`: presence refresh.
    pub heartbeat: Duration,
}

impl Cluster {
    /// The Redis side of `hub`; call [`Cluster::spawn`] to start its tasks.
    pub fn new(config: ClusterConfig, hub: Arc<Hub>) -> (Arc<Cluster>, Tasks) {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (presence, presence_rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            link: config.link,
            keys: Keys::new(&config.prefix).hub(&config.service),
            instance: config.instance,
            hub,
            history: config.history,
            presence_ttl: config.ttl,
            heartbeat: config.heartbeat,
            commands,
            presence,
            subscribed: AtomicBool::new(false),
            script: redis::Script::new(history::PUBLISH_WITH_HISTORY),
        });
        (
            cluster,
            Tasks {
                commands: commands_rx,
                presence: presence_rx,
            },
        )
    }

    /// Starts the subscriber and the presence keeper on the current (control-plane)
    /// runtime.
    pub fn spawn(self: &Arc<Self>, tasks: Tasks, dispatch: Dispatch, shutdown: Shutdown) {
        tokio::spawn(
            self.clone()
                .subscriber(tasks.commands, dispatch, shutdown.clone()),
        );
        tokio::spawn(self.clone().presence_keeper(tasks.presence, shutdown));
    }

    /// Whether the subscriber is connected.
    pub fn is_up(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Waits until `channel` is subscribed (the hub already counts the member that needs
    /// it), at most `wait`.
    pub async fn subscribe(&self, channel: Channel, wait: Duration) -> Result<(), ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Ensure(channel, tx))
            .map_err(|_| ClusterError::Closed)?;
        match timeout(wait, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClusterError::Closed),
            Err(_) => Err(ClusterError::Timeout(wait)),
        }
    }

    /// Unsubscribes `channel` unless a local client holds it again by then.
    pub fn release(&self, channel: Channel) {
        let _ = self.commands.send(Command::Release(channel));
    }

    /// Records a local client in a room's presence (written in the background).
    pub fn presence_add(&self, room: Arc<str>, client: Arc<str>, user: Option<Arc<str>>) {
        let _ = self.presence.send(Presence::Add { room, client, user });
    }

    /// Removes a local client from a room's presence.
    pub fn presence_remove(&self, room: Arc<str>, client: Arc<str>) {
        let _ = self.presence.send(Presence::Remove { room, client });
    }

    /// The shared command connection, made on the control plane when missing.
    async fn conn(&self) -> Result<Conn, ClusterError> {
        Ok(self.link.get().await?)
    }

    /// Forgets a connection that died, so the next call reconnects.
    fn failed(&self, e: RedisError) -> ClusterError {
        self.link.failed(&e);
        ClusterError::Redis(e)
    }
}
