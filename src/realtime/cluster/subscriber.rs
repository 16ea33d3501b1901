//! The pub/sub subscriber: one connection that holds `{prefix}:rt:{svc}:all` and the room and
//! user channels of local clients, hands every envelope received to the hub, and
//! subscribes or unsubscribes as clients come and go. Redis restarted or unreachable: it
//! reconnects with backoff, subscribes again to everything the hub holds, and delivers the
//! room messages the gap let through from history first ([`super::resume`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep;

use super::resume::Resume;
use super::{Channel, Cluster, ClusterError, Dispatch, Envelope};
use crate::control::redis::{Backoff, Outage, PubSub};
use crate::control::Shutdown;

/// How often the subscriber connection is pinged to find a half-open socket.
const PUBSUB_PING: Duration = Duration::from_secs(5);

/// What one session hands the next: joins waiting for a subscription, and where each
/// room's next gap starts.
#[derive(Default)]
struct Carry {
    waiting: Vec<oneshot::Sender<()>>,
    resume: Resume,
}

/// What the rest of the hub asks of the subscriber task.
pub(super) enum Command {
    /// Subscribe if not yet; answer once confirmed.
    Ensure(Channel, oneshot::Sender<()>),
    /// Unsubscribe if no local client holds it any more.
    Release(Channel),
}

impl Cluster {
    pub(super) async fn subscriber(
        self: Arc<Self>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        dispatch: Dispatch,
        mut shutdown: Shutdown,
    ) {
        let mut outage = Outage::new("realtime pub/sub");
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut carry = Carry::default();
        loop {
            let result = self
                .session(
                    &mut commands,
                    &dispatch,
                    &mut carry,
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
                        Some(Command::Ensure(_, ack)) => carry.waiting.push(ack),
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
        carry: &mut Carry,
        outage: &mut Outage,
        backoff: &mut Backoff,
        shutdown: &mut Shutdown,
    ) -> Result<(), ClusterError> {
        let (mut pubsub, mut subscribed) = self.connect().await?;
        // Before any live message of this session: what the last one's loss let through.
        self.fill_gaps(&mut carry.resume, dispatch).await?;
        outage.recovered();
        backoff.reset();
        self.subscribed.store(true, Ordering::Release);
        // Their channels were held before this session began, so they are subscribed now.
        for ack in carry.waiting.drain(..) {
            let _ = ack.send(());
        }
        let mut ping = tokio::time::interval(PUBSUB_PING);
        ping.reset();
        loop {
            tokio::select! {
                msg = pubsub.next() => {
                    let Some(msg) = msg else {
                        return Err(ClusterError::Redis(RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "pub/sub connection lost",
                        ))));
                    };
                    match serde_json::from_slice::<Envelope>(msg.get_payload_bytes()) {
                        Ok(envelope) if carry.resume.admit(&envelope) => dispatch(envelope),
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, channel = msg.get_channel_name(), "unreadable realtime message ignored"),
                    }
                }
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    self.apply(cmd, commands, &mut pubsub, &mut subscribed, &mut carry.waiting, &mut carry.resume).await?;
                }
                _ = ping.tick() => {
                    pubsub.ping().await?;
                }
                () = shutdown.started() => return Ok(()),
            }
        }
    }

    /// Opens the pub/sub connection and subscribes to `rt:all` and to every room and user
    /// channel the hub holds; returns the session and the room and user channels held.
    /// `all` is a plain channel; rooms and users are sharded on a cluster (docs/realtime.md).
    async fn connect(&self) -> Result<(PubSub, HashSet<String>), ClusterError> {
        let mut pubsub = self.link.pubsub().await?;
        pubsub.subscribe(&[self.keys.rt_all()]).await?;
        let (rooms, users) = self.hub.held();
        let mut wanted: Vec<String> = rooms.iter().map(|r| self.keys.rt_room(r)).collect();
        wanted.extend(users.iter().map(|u| self.keys.rt_user(u)));
        pubsub.subscribe_sharded(&wanted).await?;
        Ok((pubsub, wanted.into_iter().collect()))
    }

    /// Applies `first` and the commands queued behind it: subscribes the channels asked
    /// for and then answers every waiter, and unsubscribes the released channels that no
    /// local client holds any more.
    async fn apply(
        &self,
        first: Command,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        pubsub: &mut PubSub,
        subscribed: &mut HashSet<String>,
        waiting: &mut Vec<oneshot::Sender<()>>,
        resume: &mut Resume,
    ) -> Result<(), ClusterError> {
        let mut batch = vec![first];
        while let Ok(more) = commands.try_recv() {
            batch.push(more);
        }
        let mut subscribe = Vec::new();
        let mut new_rooms = Vec::new();
        let mut release = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Ensure(channel, ack) => {
                    let name = self.channel_name(&channel);
                    if !subscribed.contains(&name) && !subscribe.contains(&name) {
                        subscribe.push(name);
                        if let Channel::Room(room) = &channel {
                            new_rooms.push(room.clone());
                        }
                    }
                    waiting.push(ack);
                }
                Command::Release(channel) => release.push(channel),
            }
        }
        if !subscribe.is_empty() {
            pubsub.subscribe_sharded(&subscribe).await?;
            subscribed.extend(subscribe);
        }
        for ack in waiting.drain(..) {
            let _ = ack.send(());
        }
        // After the subscription: a message stored between the two is delivered live, and
        // the start only says where a later gap would begin.
        self.mark_starts(&new_rooms, resume).await?;
        for channel in &release {
            if let Channel::Room(room) = channel {
                if !self.hub.has_room(room) {
                    resume.forget(room);
                }
            }
        }
        let unused: Vec<String> = release
            .iter()
            .filter(|c| !self.holds(c))
            .map(|c| self.channel_name(c))
            .filter(|name| subscribed.remove(name))
            .collect();
        if !unused.is_empty() {
            pubsub.unsubscribe_sharded(&unused).await?;
        }
        Ok(())
    }

    fn channel_name(&self, channel: &Channel) -> String {
        match channel {
            Channel::Room(r) => self.keys.rt_room(r),
            Channel::User(u) => self.keys.rt_user(u),
        }
    }

    fn holds(&self, channel: &Channel) -> bool {
        match channel {
            Channel::Room(r) => self.hub.has_room(r),
            Channel::User(u) => self.hub.has_user(u),
        }
    }
}
