//! Publishing: one event, or a batch pipelined in one round trip, each through the
//! dedupe-and-append script (docs/events.md). No HTTP here: the local API and the CLI both
//! call [`Publisher`].

use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;

use super::envelope::{now_ms, NewEvent};
use super::scripts::PUBLISH;
use crate::control::keys::Keys;
use crate::control::redis::Link;

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    /// The event's id.
    pub event_id: String,
    /// Its stream id (the first one, for a duplicate).
    pub stream_id: String,
    /// A repeat of an id seen inside the dedupe window: not stored again.
    pub duplicate: bool,
}

/// Writes events to `{prefix}:events:{type}`.
pub struct Publisher {
    link: Arc<Link>,
    keys: Keys,
    retention: Duration,
    dedupe_window: Duration,
}

impl Publisher {
    /// A publisher over `link`.
    pub fn new(link: Arc<Link>, keys: Keys, retention: Duration, dedupe_window: Duration) -> Self {
        Publisher {
            link,
            keys,
            retention,
            dedupe_window,
        }
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
                Ok(r) => break r,
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
            stream_id,
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
                Ok(r) => break r,
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
                    stream_id,
                    duplicate: duplicate == 1,
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
