//! Publishing: one event, or a batch pipelined in one round trip, each through the
//! dedupe-and-append script (docs/events.md). No HTTP here: the local API and the CLI both
//! call [`Publisher`].

use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;

use super::envelope::{now_ms, NewEvent};
use super::scripts::PUBLISH;
use crate::control::keys::Keys;
use crate::control::redis::{Conn, Link, Target};

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    /// The event's id.
    pub event_id: String,
    /// Its stream id (the first one, for a duplicate); none on RabbitMQ, which has no ids
    /// to tell (docs/events.md, "RabbitMQ").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
    /// A repeat of an id seen inside the dedupe window: not stored again.
    pub duplicate: bool,
}

/// Writes events to `{prefix}:events:{{type}}`.
pub struct Publisher {
    link: Arc<Link>,
    keys: Keys,
    retention: Duration,
    dedupe_window: Duration,
    replication: Replication,
}

/// How long a publish waits for its replicas before answering 503 (docs/events.md).
const REPLICA_WAIT_MS: u64 = 200;

/// Sentinel/Cluster: a publish is acknowledged once `WAIT` saw it on this many replicas,
/// bounded by the replicas its master has connected at that moment (docs/events.md).
struct Replication {
    replicas: u32,
    /// Publishes acknowledged with no replica connected to wait for.
    unreplicated: prometheus::IntCounter,
    /// When the "no replica" warning was last logged (unix s), to log it once a minute.
    warned_at: std::sync::atomic::AtomicU64,
}

impl Publisher {
    /// A publisher over `link`.
    pub fn new(link: Arc<Link>, keys: Keys, retention: Duration, dedupe_window: Duration) -> Self {
        // Counted only once `replicated` hands in the registered counter.
        let unreplicated = prometheus::IntCounter::new("unregistered", "unregistered")
            .unwrap_or_else(|_| unreachable!("a fixed, valid metric name"));
        Publisher {
            link,
            keys,
            retention,
            dedupe_window,
            replication: Replication {
                replicas: 0,
                unreplicated,
                warned_at: std::sync::atomic::AtomicU64::new(0),
            },
        }
    }

    /// Waits for `replicas` replicas after each publish when the Redis has them (Sentinel,
    /// Cluster; `events.replicas`), counting acknowledgements without one in `unreplicated`.
    pub fn replicated(mut self, replicas: u32, unreplicated: prometheus::IntCounter) -> Self {
        self.replication.replicas = replicas;
        self.replication.unreplicated = unreplicated;
        self
    }

    /// `WAIT` for the entry just written to `key` (no-op on one server or `replicas: 0`).
    /// Fewer replicas than wanted within [`REPLICA_WAIT_MS`]: an error, so the publish is
    /// answered 503 and the app's retry with the same id is a duplicate, not a new event.
    async fn replicate(&self, conn: &mut Conn, key: &str) -> Result<(), RedisError> {
        let r = &self.replication;
        if r.replicas == 0 || !self.link.target().is_replicated() {
            return Ok(());
        }
        let wanted = r.replicas.min(conn.connected_replicas(key).await?);
        if wanted == 0 {
            if let Target::Sentinel(sentinels) = self.link.target() {
                let addr = conn.master_addr().unwrap_or_default().to_owned();
                if !sentinels.confirms_master(&addr).await {
                    // Failed over, or being failed over: what is written here is lost when
                    // this server is demoted. The app's retry lands on the new master.
                    self.link.reset();
                    return Err(RedisError::from((
                        redis::ErrorKind::Io,
                        "replication",
                        "no replica, and the sentinels do not confirm this master".to_owned(),
                    )));
                }
            }
            r.unreplicated.inc();
            let now = now_ms() / 1000;
            let last = r.warned_at.swap(now, std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(last) >= 60 {
                tracing::warn!(
                    key,
                    "events acknowledged with no replica connected: a failover now would lose them"
                );
            }
            return Ok(());
        }
        let acked = conn.wait_replicas(key, wanted, REPLICA_WAIT_MS).await?;
        if acked < wanted {
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "replication",
                format!("{acked} of {wanted} replicas confirmed within {REPLICA_WAIT_MS} ms"),
            )));
        }
        Ok(())
    }

    /// Stores one event (or finds its first copy: same id, type and source inside the
    /// dedupe window). A connection that died since its last use (Redis restarted) is
    /// replaced and the event sent once more: safe, the script dedupes by id.
    pub async fn publish(&self, event: &NewEvent) -> Result<Published, RedisError> {
        let minid = self.minid();
        let invocation = self.invocation(event, &minid);
        let mut tries = 0;
        let (stream_id, duplicate) = loop {
            tries += 1;
            let mut conn = self.link.get().await?;
            let reply: Result<(String, i64), RedisError> = invocation.invoke_async(&mut conn).await;
            match reply {
                Ok(r) => {
                    self.replicate(&mut conn, &self.keys.event_stream(&event.event_type))
                        .await?;
                    break r;
                }
                Err(e) => {
                    self.link.failed(&e);
                    if tries > 1 || !stale_connection(&e) {
                        return Err(e);
                    }
                }
            }
        };
        Ok(Published {
            event_id: event.event_id.clone(),
            stream_id: Some(stream_id),
            duplicate: duplicate == 1,
        })
    }

    /// Stores many events in one pipeline (the script is loaded first in the same
    /// round trip, so a Redis restart cannot fail the batch with NOSCRIPT). Redis runs
    /// every command of a pipeline even when one fails, so the answer is one result per
    /// event; the outer error is the round trip failing as a whole (nothing confirmed).
    pub async fn publish_batch(
        &self,
        events: &[NewEvent],
    ) -> Result<Vec<Result<Published, RedisError>>, RedisError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        if self.link.target().is_cluster() {
            return self.publish_by_type(events).await;
        }
        let events: Vec<&NewEvent> = events.iter().collect();
        self.pipeline(&events).await
    }

    /// One pipeline of publish scripts and, under Sentinel/Cluster, one WAIT after it.
    async fn pipeline(
        &self,
        events: &[&NewEvent],
    ) -> Result<Vec<Result<Published, RedisError>>, RedisError> {
        let minid = self.minid();
        let invocations: Vec<_> = events.iter().map(|e| self.invocation(e, &minid)).collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.load_script(&PUBLISH).ignore();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let mut tries = 0;
        let replies: Vec<Result<(String, i64), RedisError>> = loop {
            tries += 1;
            let mut conn = self.link.get().await?;
            match pipe.query_async(&mut conn).await {
                Ok(r) => {
                    // One WAIT covers every write the connection made before it.
                    self.replicate(&mut conn, &self.keys.event_stream(&events[0].event_type))
                        .await?;
                    break r;
                }
                Err(e) => {
                    self.link.failed(&e);
                    if tries > 1 || !stale_connection(&e) {
                        return Err(e);
                    }
                }
            }
        };
        Ok(events
            .iter()
            .zip(replies)
            .map(|(event, reply)| {
                reply.map(|(stream_id, duplicate)| Published {
                    event_id: event.event_id.clone(),
                    stream_id: Some(stream_id),
                    duplicate: duplicate == 1,
                })
            })
            .collect())
    }

    /// A batch on a cluster: the events of one type share a slot (the type is the hash
    /// tag), so each type is one pipeline and one WAIT on its node, all types at once; the
    /// answers are put back in the batch's order.
    async fn publish_by_type(
        &self,
        events: &[NewEvent],
    ) -> Result<Vec<Result<Published, RedisError>>, RedisError> {
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            match groups.iter_mut().find(|(t, _)| *t == event.event_type) {
                Some((_, members)) => members.push(i),
                None => groups.push((&event.event_type, vec![i])),
            }
        }
        let runs = groups.iter().map(|(_, members)| {
            let batch: Vec<&NewEvent> = members.iter().map(|&i| &events[i]).collect();
            async move { self.pipeline(&batch).await }
        });
        let answers = futures_util::future::try_join_all(runs).await?;
        let mut ordered: Vec<Option<Result<Published, RedisError>>> =
            (0..events.len()).map(|_| None).collect();
        for ((_, members), replies) in groups.iter().zip(answers) {
            for (&i, reply) in members.iter().zip(replies) {
                ordered[i] = Some(reply);
            }
        }
        Ok(ordered
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(RedisError::from((
                        redis::ErrorKind::Client,
                        "no reply for this line",
                    )))
                })
            })
            .collect())
    }

    fn invocation<'a>(&self, event: &NewEvent, minid: &str) -> redis::ScriptInvocation<'a> {
        let mut invocation = PUBLISH.prepare_invoke();
        invocation
            .key(
                self.keys
                    .event_dedupe(&event.event_type, &event.source, &event.event_id),
            )
            .key(self.keys.event_stream(&event.event_type))
            .arg(self.dedupe_window.as_millis().max(1) as u64)
            .arg(minid);
        for (field, value) in event.fields() {
            invocation.arg(field).arg(value);
        }
        invocation
    }

    fn minid(&self) -> String {
        minid(self.retention)
    }
}

/// Whether `e` says the connection was already dead (not that Redis is slow): worth one
/// more try on a fresh connection.
fn stale_connection(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// The MINID that trims entries older than `retention`.
pub fn minid(retention: Duration) -> String {
    now_ms()
        .saturating_sub(retention.as_millis() as u64)
        .to_string()
}
