//! The hub across meshlets, over Redis (docs/realtime.md): pub/sub channels `{prefix}:rt:all`,
//! `{prefix}:rt:room:{room}` and `{prefix}:rt:user:{user}` (the last two subscribed only
//! while a local client holds them), per-room history in a capped stream
//! `{prefix}:rt:hist:{room}` whose entry ids are the offsets, and presence in
//! `{prefix}:rt:presence:{room}` (HASH client → user).
//!
//! Presence survives instance crashes by liveness keys: each meshlet refreshes
//! `{prefix}:rt:alive:{instance}` (TTL = `registry.ttl`) every `registry.heartbeat`, lists
//! itself in `{prefix}:rt:instances` and its rooms in `{prefix}:rt:rooms:{instance}`.
//! Client ids start with the instance id, so readers skip entries of dead instances and
//! any live meshlet sweeps them away.
//!
//! Redis restarted or unreachable: the subscriber reconnects with backoff and subscribes
//! again to everything the hub holds; clients stay connected throughout.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, RedisError, RedisResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::control::Shutdown;
use tokio::time::{sleep, timeout};

use super::hub::{Hub, Member, Offset, Target};
use crate::control::redis::{Backoff, Link, Outage, REDIS_IO_TIMEOUT};

/// How often the subscriber connection is pinged to find a half-open socket.
const PUBSUB_PING: Duration = Duration::from_secs(5);

/// XADD (capped) + PEXPIRE + PUBLISH in one step, so the order of the pub/sub messages is
/// the order of the offsets. The published payload is the envelope with `"offset"` put in
/// front (the envelope is JSON whose first byte is `{`).
const PUBLISH_WITH_HISTORY: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[2], '{"offset":"' .. id .. '",' .. string.sub(ARGV[1], 2))
return id
"#;

/// Key and channel names under `registry.prefix`.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }
    /// Channel every meshlet of the service listens to.
    pub fn all(&self) -> String {
        format!("{}:rt:all", self.prefix)
    }
    /// Channel of one room.
    pub fn room(&self, room: &str) -> String {
        format!("{}:rt:room:{room}", self.prefix)
    }
    /// Channel of one user.
    pub fn user(&self, user: &str) -> String {
        format!("{}:rt:user:{user}", self.prefix)
    }
    /// History stream of a room.
    pub fn history(&self, room: &str) -> String {
        format!("{}:rt:hist:{room}", self.prefix)
    }
    /// Presence hash of a room.
    pub fn presence(&self, room: &str) -> String {
        format!("{}:rt:presence:{room}", self.prefix)
    }
    /// Liveness key of a meshlet.
    pub fn alive(&self, instance: &str) -> String {
        format!("{}:rt:alive:{instance}", self.prefix)
    }
    /// Set of meshlets that have written presence.
    pub fn instances(&self) -> String {
        format!("{}:rt:instances", self.prefix)
    }
    /// Rooms a meshlet has presence entries in.
    pub fn instance_rooms(&self, instance: &str) -> String {
        format!("{}:rt:rooms:{instance}", self.prefix)
    }
}

/// What a message or membership change does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Deliver a message.
    #[default]
    Message,
    /// Server-side join of `room`.
    Join,
    /// Server-side leave of `room`.
    Leave,
}

/// What meshlets publish to each other (and store in history, without `offset`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// History offset; set by Redis, first so the publish script can prepend it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// Message id (UUIDv7).
    pub id: String,
    /// Recipients.
    pub to: Target,
    /// Message, join or leave.
    #[serde(default)]
    pub op: Op,
    /// The room of a join or leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Event name.
    #[serde(default)]
    pub event: String,
    /// Payload.
    #[serde(default)]
    pub data: Value,
}

/// A channel the hub may hold.
#[derive(Clone, Debug)]
pub enum Channel {
    /// `rt:room:{room}`.
    Room(Arc<str>),
    /// `rt:user:{user}`.
    User(Arc<str>),
}

enum Command {
    /// Subscribe if not yet; answer once confirmed.
    Ensure(Channel, oneshot::Sender<()>),
    /// Unsubscribe if no local client holds it any more.
    Release(Channel),
}

/// A presence change of one local client.
enum Presence {
    Add {
        room: Arc<str>,
        client: Arc<str>,
        user: Option<Arc<str>>,
    },
    Remove {
        room: Arc<str>,
        client: Arc<str>,
    },
}

/// What a join with history found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The room's latest offset.
    pub latest: Option<Offset>,
    /// Nothing was missed since the client's offset (it was still in history).
    pub recovered: bool,
    /// Entries after the client's offset, in order (empty unless `recovered`).
    pub missed: Vec<Envelope>,
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

/// History settings as numbers.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Entries per room; 0 = off.
    pub size: u32,
    /// Stream TTL after the last message.
    pub ttl: Duration,
}

/// The Redis side of one hub.
pub struct Cluster {
    link: Arc<Link>,
    keys: Keys,
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
            keys: Keys::new(&config.prefix),
            instance: config.instance,
            hub,
            history: config.history,
            presence_ttl: config.ttl,
            heartbeat: config.heartbeat,
            commands,
            presence,
            subscribed: AtomicBool::new(false),
            script: redis::Script::new(PUBLISH_WITH_HISTORY),
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

    /// Key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
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

    /// Publishes an envelope to the meshlets that hold its target; a room message with
    /// history on is appended to the room's stream first, and its offset returned.
    pub async fn publish(&self, envelope: &Envelope) -> Result<Option<String>, ClusterError> {
        let body = serde_json::to_string(envelope).unwrap_or_default();
        let mut conn = self.conn().await?;
        let result = match (&envelope.to, envelope.op) {
            (Target::Room(room), Op::Message) if self.history.size > 0 => {
                let ttl_ms = u64::try_from(self.history.ttl.as_millis()).unwrap_or(u64::MAX);
                self.script
                    .key(self.keys.history(room))
                    .key(self.keys.room(room))
                    .arg(body)
                    .arg(self.history.size)
                    .arg(ttl_ms.max(1))
                    .invoke_async::<String>(&mut conn)
                    .await
                    .map(Some)
            }
            (target, _) => {
                let channel = match target {
                    Target::Room(room) if envelope.op == Op::Message => self.keys.room(room),
                    Target::User(user) if envelope.op == Op::Message => self.keys.user(user),
                    _ => self.keys.all(),
                };
                conn.publish::<_, _, i64>(channel, body).await.map(|_| None)
            }
        };
        result.map_err(|e| self.failed(e))
    }

    /// Reads a room's history for a join: the latest offset, and with `since` the entries
    /// after it when the stream still holds `since` itself (otherwise nothing can be
    /// proven and `recovered` is false).
    pub async fn recover(&self, room: &str, since: Option<&str>) -> Result<Recovery, ClusterError> {
        let mut conn = self.conn().await?;
        let key = self.keys.history(room);
        let result = async {
            let since = since.and_then(Offset::parse);
            let mut recovery = Recovery::default();
            if let Some(since) = since {
                let reply: StreamRangeReply = conn.xrange(&key, since.to_string(), "+").await?;
                let mut entries = reply.ids.into_iter();
                if let Some(first) = entries.next() {
                    recovery.latest = Offset::parse(&first.id);
                    if recovery.latest == Some(since) {
                        recovery.recovered = true;
                        for entry in entries {
                            let offset = Offset::parse(&entry.id);
                            let envelope = entry
                                .get::<String>("m")
                                .and_then(|m| serde_json::from_str::<Envelope>(&m).ok());
                            if let (Some(offset), Some(mut envelope)) = (offset, envelope) {
                                envelope.offset = Some(entry.id.clone());
                                recovery.latest = Some(offset);
                                recovery.missed.push(envelope);
                            }
                        }
                    } else {
                        recovery.latest = entries
                            .next_back()
                            .and_then(|e| Offset::parse(&e.id))
                            .or(recovery.latest);
                    }
                    return Ok::<_, RedisError>(recovery);
                }
            }
            let reply: StreamRangeReply = conn.xrevrange_count(&key, "+", "-", 1).await?;
            recovery.latest = reply.ids.first().and_then(|e| Offset::parse(&e.id));
            Ok(recovery)
        }
        .await;
        result.map_err(|e| self.failed(e))
    }

    /// Who is in `room` on any live meshlet: (client, user) pairs.
    pub async fn presence(&self, room: &str) -> Result<Vec<(String, String)>, ClusterError> {
        let mut conn = self.conn().await?;
        let key = self.keys.presence(room);
        let result = async {
            let entries: HashMap<String, String> = conn.hgetall(&key).await?;
            let instances: Vec<&str> = entries
                .keys()
                .filter_map(|c| instance_of(c))
                .filter(|i| *i != self.instance)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let mut dead = HashSet::new();
            if !instances.is_empty() {
                let mut pipe = redis::pipe();
                for i in &instances {
                    pipe.exists(self.keys.alive(i));
                }
                let alive: Vec<bool> = pipe.query_async(&mut conn).await?;
                dead.extend(
                    instances
                        .iter()
                        .zip(alive)
                        .filter(|(_, a)| !a)
                        .map(|(i, _)| i.to_string()),
                );
            }
            let (live, stale): (Vec<_>, Vec<_>) = entries
                .into_iter()
                .partition(|(c, _)| instance_of(c).is_none_or(|i| !dead.contains(i)));
            if !stale.is_empty() {
                let fields: Vec<&String> = stale.iter().map(|(c, _)| c).collect();
                let _: RedisResult<i64> = conn.hdel(&key, fields).await;
            }
            let mut live: Vec<(String, String)> = live;
            live.sort();
            Ok::<_, RedisError>(live)
        }
        .await;
        result.map_err(|e| self.failed(e))
    }

    /// Rooms with a member on any live meshlet, with their member counts (every meshlet
    /// included). Read from the presence bookkeeping, never by scanning the keyspace:
    /// `SMEMBERS rt:instances`, one `EXISTS rt:alive:{i}` per meshlet (pipelined),
    /// `SUNION` of the live meshlets' `rt:rooms:{i}`, one `HLEN rt:presence:{room}` per
    /// room (pipelined): four round trips, O(meshlets + rooms) work in Redis.
    ///
    /// Counts are the presence hashes' sizes, so entries of a meshlet that died are
    /// counted until they are swept (within `registry.ttl` + one heartbeat); a room that
    /// a meshlet just emptied may be listed with 0 members until its next refresh, and
    /// such rooms are left out here.
    pub async fn rooms(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let mut conn = self.conn().await?;
        let result = async {
            let instances: Vec<String> = conn.smembers(self.keys.instances()).await?;
            let others: Vec<&String> = instances.iter().filter(|i| **i != self.instance).collect();
            let alive: Vec<bool> = if others.is_empty() {
                Vec::new()
            } else {
                let mut pipe = redis::pipe();
                for i in &others {
                    pipe.exists(self.keys.alive(i));
                }
                pipe.query_async(&mut conn).await?
            };
            // This meshlet's own set counts even before its first heartbeat listed it.
            let mut sets = vec![self.keys.instance_rooms(&self.instance)];
            sets.extend(
                others
                    .iter()
                    .zip(alive)
                    .filter(|(_, alive)| *alive)
                    .map(|(i, _)| self.keys.instance_rooms(i)),
            );
            let names: HashSet<String> = conn.sunion(&sets).await?;
            let mut names: Vec<String> = names.into_iter().collect();
            names.sort();
            if names.is_empty() {
                return Ok::<_, RedisError>(Vec::new());
            }
            let mut pipe = redis::pipe();
            for room in &names {
                pipe.hlen(self.keys.presence(room));
            }
            let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
            Ok(names
                .into_iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .collect())
        }
        .await;
        result.map_err(|e| self.failed(e))
    }

    /// The shared command connection, made on the control plane when missing.
    async fn conn(&self) -> Result<MultiplexedConnection, ClusterError> {
        Ok(self.link.get().await?)
    }

    /// Forgets a connection that died, so the next call reconnects.
    fn failed(&self, e: RedisError) -> ClusterError {
        self.link.failed(&e);
        ClusterError::Redis(e)
    }

    async fn subscriber(
        self: Arc<Self>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        dispatch: Dispatch,
        mut shutdown: Shutdown,
    ) {
        let mut outage = Outage::new("realtime pub/sub");
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let result = self
                .session(
                    &mut commands,
                    &dispatch,
                    &mut waiting,
                    &mut outage,
                    &mut backoff,
                    &mut shutdown,
                )
                .await;
            self.subscribed.store(false, Ordering::Release);
            match result {
                Ok(()) => return,
                Err(e) => outage.failed(&e),
            }
            // Joins keep arriving while Redis is away: they wait (bounded by their own
            // timeout) for the next session.
            let pause = sleep(backoff.next_delay());
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    cmd = commands.recv() => match cmd {
                        Some(Command::Ensure(_, ack)) => waiting.push(ack),
                        Some(Command::Release(_)) => {}
                        None => return,
                    },
                    () = shutdown.started() => return,
                }
            }
        }
    }

    /// One connected pub/sub session; `Ok` only at shutdown.
    async fn session(
        &self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        dispatch: &Dispatch,
        waiting: &mut Vec<oneshot::Sender<()>>,
        outage: &mut Outage,
        backoff: &mut Backoff,
        shutdown: &mut Shutdown,
    ) -> Result<(), ClusterError> {
        let pubsub = timeout(REDIS_IO_TIMEOUT, self.link.client().get_async_pubsub())
            .await
            .map_err(|_| ClusterError::Timeout(REDIS_IO_TIMEOUT))??;
        let (mut sink, mut stream) = pubsub.split();
        let mut subscribed: HashSet<String> = HashSet::new();
        let (rooms, users) = self.hub.held();
        let mut wanted = vec![self.keys.all()];
        wanted.extend(rooms.iter().map(|r| self.keys.room(r)));
        wanted.extend(users.iter().map(|u| self.keys.user(u)));
        timeout(REDIS_IO_TIMEOUT, sink.subscribe(&wanted))
            .await
            .map_err(|_| ClusterError::Timeout(REDIS_IO_TIMEOUT))??;
        subscribed.extend(wanted);
        outage.recovered();
        backoff.reset();
        self.subscribed.store(true, Ordering::Release);
        // Their channels were held before this session began, so they are subscribed now.
        for ack in waiting.drain(..) {
            let _ = ack.send(());
        }
        let mut ping = tokio::time::interval(PUBSUB_PING);
        ping.reset();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Err(ClusterError::Redis(RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "pub/sub connection lost",
                        ))));
                    };
                    match serde_json::from_slice::<Envelope>(msg.get_payload_bytes()) {
                        Ok(envelope) => dispatch(envelope),
                        Err(e) => tracing::debug!(error = %e, channel = msg.get_channel_name(), "unreadable realtime message ignored"),
                    }
                }
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    let mut batch = vec![cmd];
                    while let Ok(more) = commands.try_recv() {
                        batch.push(more);
                    }
                    let mut subscribe = Vec::new();
                    let mut release = Vec::new();
                    for cmd in batch {
                        match cmd {
                            Command::Ensure(channel, ack) => {
                                let name = self.channel_name(&channel);
                                if !subscribed.contains(&name) && !subscribe.contains(&name) {
                                    subscribe.push(name);
                                }
                                waiting.push(ack);
                            }
                            Command::Release(channel) => release.push(channel),
                        }
                    }
                    if !subscribe.is_empty() {
                        timeout(REDIS_IO_TIMEOUT, sink.subscribe(&subscribe))
                            .await
                            .map_err(|_| ClusterError::Timeout(REDIS_IO_TIMEOUT))??;
                        subscribed.extend(subscribe);
                    }
                    for ack in waiting.drain(..) {
                        let _ = ack.send(());
                    }
                    let unused: Vec<String> = release
                        .iter()
                        .filter(|c| !self.holds(c))
                        .map(|c| self.channel_name(c))
                        .filter(|name| subscribed.remove(name))
                        .collect();
                    if !unused.is_empty() {
                        timeout(REDIS_IO_TIMEOUT, sink.unsubscribe(&unused))
                            .await
                            .map_err(|_| ClusterError::Timeout(REDIS_IO_TIMEOUT))??;
                    }
                }
                _ = ping.tick() => {
                    timeout(REDIS_IO_TIMEOUT, sink.ping::<redis::Value>())
                        .await
                        .map_err(|_| ClusterError::Timeout(REDIS_IO_TIMEOUT))??;
                }
                () = shutdown.started() => return Ok(()),
            }
        }
    }

    fn channel_name(&self, channel: &Channel) -> String {
        match channel {
            Channel::Room(r) => self.keys.room(r),
            Channel::User(u) => self.keys.user(u),
        }
    }

    fn holds(&self, channel: &Channel) -> bool {
        match channel {
            Channel::Room(r) => self.hub.has_room(r),
            Channel::User(u) => self.hub.has_user(u),
        }
    }

    /// Writes presence changes as they come and refreshes this meshlet's whole share every
    /// heartbeat (which also repairs what an outage or a Redis restart lost, and sweeps
    /// the entries of meshlets whose liveness key expired). At shutdown, removes its own.
    async fn presence_keeper(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<Presence>,
        mut shutdown: Shutdown,
    ) {
        let mut tick = tokio::time::interval(self.heartbeat);
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some(change) = change else { return };
                    let mut batch = vec![change];
                    while let Ok(more) = changes.try_recv() {
                        batch.push(more);
                    }
                    if let Err(e) = self.write_presence(batch).await {
                        tracing::debug!(error = %e, "presence update deferred to the next refresh");
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.refresh_presence().await {
                        tracing::debug!(error = %e, "presence refresh failed");
                    }
                }
                () = shutdown.started() => {
                    if let Err(e) = self.forget_presence().await {
                        tracing::debug!(error = %e, "presence not removed at shutdown; it expires");
                    }
                    return;
                }
            }
        }
    }

    async fn write_presence(&self, batch: Vec<Presence>) -> Result<(), ClusterError> {
        let mut conn = self.conn().await?;
        let ttl = self.presence_ttl_ms();
        let mut pipe = redis::pipe();
        for change in &batch {
            match change {
                Presence::Add { room, client, user } => {
                    let key = self.keys.presence(room);
                    pipe.hset(&key, client.as_ref(), user.as_deref().unwrap_or(""))
                        .ignore()
                        .pexpire(&key, ttl)
                        .ignore()
                        .sadd(self.keys.instance_rooms(&self.instance), room.as_ref())
                        .ignore();
                }
                Presence::Remove { room, client } => {
                    pipe.hdel(self.keys.presence(room), client.as_ref())
                        .ignore();
                }
            }
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.failed(e))
    }

    fn presence_ttl_ms(&self) -> i64 {
        i64::try_from(self.presence_ttl.as_millis())
            .unwrap_or(i64::MAX)
            .max(1000)
    }

    async fn refresh_presence(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn().await?;
        let result = async {
            let ttl = self.presence_ttl_ms();
            let mine = self.keys.instance_rooms(&self.instance);
            let _: () = redis::pipe()
                .pset_ex(self.keys.alive(&self.instance), 1, ttl as u64)
                .ignore()
                .sadd(self.keys.instances(), &self.instance)
                .ignore()
                .query_async(&mut conn)
                .await?;
            let known: Vec<String> = conn.smembers(&mine).await?;
            let local: HashMap<Arc<str>, Vec<Member>> = self
                .hub
                .room_sizes()
                .into_iter()
                .map(|(room, _)| {
                    let members = self.hub.members(&room);
                    (room, members)
                })
                .collect();
            let prefix = format!("{}:", self.instance);
            let mut rooms: HashSet<&str> = known.iter().map(String::as_str).collect();
            rooms.extend(local.keys().map(|r| r.as_ref()));
            for room in rooms {
                let key = self.keys.presence(room);
                let fields: Vec<String> = conn.hkeys(&key).await?;
                let members = local.get(room);
                let stale: Vec<&String> = fields
                    .iter()
                    .filter(|f| f.starts_with(&prefix))
                    .filter(|f| {
                        members.is_none_or(|m| !m.iter().any(|(c, _)| c.as_ref() == f.as_str()))
                    })
                    .collect();
                let mut pipe = redis::pipe();
                if !stale.is_empty() {
                    pipe.hdel(&key, stale).ignore();
                }
                match members {
                    Some(members) if !members.is_empty() => {
                        let pairs: Vec<(&str, &str)> = members
                            .iter()
                            .map(|(c, u)| (c.as_ref(), u.as_deref().unwrap_or("")))
                            .collect();
                        pipe.hset_multiple(&key, &pairs)
                            .ignore()
                            .pexpire(&key, ttl)
                            .ignore()
                            .sadd(&mine, room)
                            .ignore();
                    }
                    _ => {
                        pipe.srem(&mine, room).ignore();
                    }
                }
                let _: () = pipe.query_async(&mut conn).await?;
            }
            let _: RedisResult<i64> = conn.pexpire(&mine, ttl * 2).await;
            self.sweep_dead(&mut conn).await
        }
        .await;
        result.map_err(|e| self.failed(e))
    }

    /// Removes the presence entries of meshlets whose liveness key has expired.
    async fn sweep_dead(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        let instances: Vec<String> = conn.smembers(self.keys.instances()).await?;
        for instance in instances.iter().filter(|i| **i != self.instance) {
            let alive: bool = conn.exists(self.keys.alive(instance)).await?;
            if alive {
                continue;
            }
            let rooms_key = self.keys.instance_rooms(instance);
            let rooms: Vec<String> = conn.smembers(&rooms_key).await?;
            let prefix = format!("{instance}:");
            for room in rooms {
                let key = self.keys.presence(&room);
                let fields: Vec<String> = conn.hkeys(&key).await?;
                let theirs: Vec<&String> =
                    fields.iter().filter(|f| f.starts_with(&prefix)).collect();
                if !theirs.is_empty() {
                    let _: i64 = conn.hdel(&key, theirs).await?;
                }
            }
            let _: () = redis::pipe()
                .del(&rooms_key)
                .ignore()
                .srem(self.keys.instances(), instance)
                .ignore()
                .query_async(conn)
                .await?;
            tracing::info!(%instance, "presence of a departed meshlet removed");
        }
        Ok(())
    }

    async fn forget_presence(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn().await?;
        let result = async {
            let mine = self.keys.instance_rooms(&self.instance);
            let rooms: Vec<String> = conn.smembers(&mine).await?;
            let prefix = format!("{}:", self.instance);
            for room in rooms {
                let key = self.keys.presence(&room);
                let fields: Vec<String> = conn.hkeys(&key).await?;
                let ours: Vec<&String> = fields.iter().filter(|f| f.starts_with(&prefix)).collect();
                if !ours.is_empty() {
                    let _: i64 = conn.hdel(&key, ours).await?;
                }
            }
            redis::pipe()
                .del(&mine)
                .ignore()
                .del(self.keys.alive(&self.instance))
                .ignore()
                .srem(self.keys.instances(), &self.instance)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        }
        .await;
        result.map_err(|e| self.failed(e))
    }
}

/// The meshlet a client id belongs to: client ids are `{instance}:{n}`.
pub fn instance_of(client: &str) -> Option<&str> {
    client.rsplit_once(':').map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_starts_with_id_so_the_script_can_prepend_the_offset() {
        let e = Envelope {
            offset: None,
            id: "x".into(),
            to: Target::Room("r".into()),
            op: Op::Message,
            room: None,
            event: "e".into(),
            data: serde_json::json!(1),
        };
        let text = serde_json::to_string(&e).expect("serializes");
        assert!(text.starts_with(r#"{"id":"#), "{text}");
        let with_offset = format!(r#"{{"offset":"1-0",{}"#, &text[1..]);
        let back: Envelope = serde_json::from_str(&with_offset).expect("parses");
        assert_eq!(back.offset.as_deref(), Some("1-0"));
        assert_eq!(back.to, Target::Room("r".into()));
    }

    #[test]
    fn client_ids_name_their_instance() {
        assert_eq!(instance_of("pod-a-00ff12:7"), Some("pod-a-00ff12"));
        assert_eq!(instance_of("nocolon"), None);
    }
}
