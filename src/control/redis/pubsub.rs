//! A pub/sub session on whichever Redis [`Target`] names: a dedicated connection to one
//! server (Sentinel: today's master), or a cluster connection whose messages arrive as
//! RESP3 pushes. Channels are plain (`SUBSCRIBE`, heard cluster-wide) or sharded
//! (`SSUBSCRIBE` on a cluster, where a message stays on its slot's shard; plain on one
//! server). [`PubSub::next`] ends the session (`None`) on anything that may have let a
//! message through unseen: the connection lost, a node of the cluster lost, a sharded
//! channel's slot moved. The caller then opens a new session and fills the gap from what
//! Redis kept (the registry resyncs, the hub replays room history).

use std::collections::HashMap;

use futures_util::{StreamExt, TryStreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Msg, PushInfo, PushKind, RedisError, RedisResult, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{Target, REDIS_IO_TIMEOUT};

/// One subscribed connection.
pub struct PubSub {
    inner: Inner,
}

enum Inner {
    Server {
        sink: PubSubSink,
        stream: PubSubStream,
        /// Sentinel: fires when the master switches; this session is then on a demoted
        /// master, which no longer hears what is published.
        switched: Option<tokio::sync::watch::Receiver<u64>>,
    },
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        /// Sharded channels this session let go of, with how many of their `sunsubscribe`
        /// pushes are still to come. Counted, and kept through a new subscription: a
        /// channel left and joined again before [`PubSub::next`] read the leave's push
        /// still gets that push, and it must not read as a slot that moved.
        released: HashMap<Vec<u8>, u32>,
    },
}

impl PubSub {
    /// Opens a session (no channel yet), within [`REDIS_IO_TIMEOUT`].
    pub async fn open(target: &Target) -> RedisResult<PubSub> {
        timeout(REDIS_IO_TIMEOUT * 2, PubSub::connect(target))
            .await
            .map_err(|_| timed_out())?
    }

    async fn connect(target: &Target) -> RedisResult<PubSub> {
        if let Some(cluster) = target.cluster() {
            let (tx, pushes) = mpsc::unbounded_channel();
            let conn = cluster.pubsub(tx).await?;
            return Ok(PubSub {
                inner: Inner::Cluster {
                    conn,
                    pushes,
                    released: HashMap::new(),
                },
            });
        }
        let switched = target.switched();
        let client = target
            .pubsub_client()
            .await?
            .ok_or_else(|| RedisError::from((redis::ErrorKind::Client, "no pub/sub client")))?;
        let (sink, stream) = client.get_async_pubsub().await?.split();
        Ok(PubSub {
            inner: Inner::Server {
                sink,
                stream,
                switched,
            },
        })
    }

    /// Subscribes to plain channels (heard from every node of a cluster).
    pub async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        bounded(async {
            match &mut self.inner {
                Inner::Server { sink, .. } => sink.subscribe(channels).await,
                Inner::Cluster { conn, .. } => conn.subscribe(channels).await,
            }
        })
        .await
    }

    /// Subscribes to sharded channels (`SSUBSCRIBE` on a cluster, plain elsewhere).
    pub async fn subscribe_sharded(&mut self, channels: &[String]) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match &mut self.inner {
            Inner::Server { sink, .. } => bounded(sink.subscribe(channels)).await,
            // One slot per command: a cluster refuses SSUBSCRIBE across slots.
            Inner::Cluster { conn, .. } => each_at_once(conn, channels, true).await,
        }
    }

    /// Leaves sharded channels (plain ones elsewhere).
    pub async fn unsubscribe_sharded(&mut self, channels: &[String]) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match &mut self.inner {
            Inner::Server { sink, .. } => bounded(sink.unsubscribe(channels)).await,
            Inner::Cluster { conn, released, .. } => {
                for c in channels {
                    *released.entry(c.as_bytes().to_vec()).or_default() += 1;
                }
                each_at_once(conn, channels, false).await
            }
        }
    }

    /// The next message; `None` when the session has ended (see the module doc).
    /// Cancel-safe: it may sit in a `select!` beside other work.
    pub async fn next(&mut self) -> Option<Msg> {
        match &mut self.inner {
            Inner::Server {
                stream, switched, ..
            } => match switched {
                None => stream.next().await,
                Some(switch) => tokio::select! {
                    msg = stream.next() => msg,
                    changed = switch.changed() => match changed {
                        Ok(()) => None,
                        // The sentinel set is gone (shutdown): only the stream matters.
                        Err(_) => stream.next().await,
                    },
                },
            },
            Inner::Cluster {
                pushes, released, ..
            } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        if let Some(msg) = Msg::from_push_info(push) {
                            return Some(msg);
                        }
                    }
                    PushKind::Disconnection => return None,
                    PushKind::SUnsubscribe => {
                        let channel = match push.data.first() {
                            Some(Value::BulkString(c)) => c.clone(),
                            _ => Vec::new(),
                        };
                        // One we did not let go of: its slot moved to another node.
                        if !take_released(released, &channel) {
                            return None;
                        }
                    }
                    _ => {}
                }
            },
        }
    }

    /// Pings through the session (finds a half-open socket).
    pub async fn ping(&mut self) -> RedisResult<()> {
        bounded(async {
            match &mut self.inner {
                Inner::Server { sink, .. } => sink.ping::<Value>().await.map(drop),
                Inner::Cluster { conn, .. } => redis::cmd("PING")
                    .query_async::<Value>(conn)
                    .await
                    .map(drop),
            }
        })
        .await
    }
}

/// Sharded (un)subscriptions in flight at once on a cluster session. Many more make each
/// slower (redis-rs matches every confirmation against those pending).
const IN_FLIGHT: usize = 64;

/// `SSUBSCRIBE` (or `SUNSUBSCRIBE`) each channel on its own, [`IN_FLIGHT`] at a time,
/// each within [`REDIS_IO_TIMEOUT`]. Not the whole within it: a meshlet holding tens of
/// thousands of rooms and users would never finish resubscribing and never get its hub
/// back (a new session, cut short the same way, after every backoff).
async fn each_at_once(
    conn: &ClusterConnection,
    channels: &[String],
    subscribe: bool,
) -> RedisResult<()> {
    // Owned names and connections: borrowed ones make the future not provably `Send`.
    let sends = channels.iter().cloned().map(|c| {
        let mut conn = conn.clone();
        async move {
            if subscribe {
                bounded(conn.ssubscribe(c)).await
            } else {
                bounded(conn.sunsubscribe(c)).await
            }
        }
    });
    futures_util::stream::iter(sends)
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
}

/// Counts off one `sunsubscribe` push this session asked for; `false` when none was due.
fn take_released(released: &mut HashMap<Vec<u8>, u32>, channel: &[u8]) -> bool {
    match released.get_mut(channel) {
        Some(due) if *due > 1 => {
            *due -= 1;
            true
        }
        Some(_) => {
            released.remove(channel);
            true
        }
        None => false,
    }
}

async fn bounded<T>(work: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
    timeout(REDIS_IO_TIMEOUT, work)
        .await
        .map_err(|_| timed_out())?
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis pub/sub timed out",
    ))
}
