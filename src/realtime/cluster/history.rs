//! Publishing an envelope to the meshlets that hold its target, and a room's history: a
//! capped stream `{prefix}:rt:{svc}:hist:{room}` whose entry ids are the offsets, appended and
//! published in one script, and read back for a join ([`Recovery`]).

use std::time::Duration;

use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, RedisError};

use super::{Cluster, ClusterError, Envelope, Op};
use crate::control::redis::Conn;
use crate::realtime::delivery::{Offset, Target};

/// XADD (capped) + PEXPIRE + PUBLISH in one step, so the order of the pub/sub messages is
/// the order of the offsets. The published payload is the envelope with `"offset"` put in
/// front (the envelope is JSON whose first byte is `{`). ARGV[4] is `PUBLISH`, or
/// `SPUBLISH` on a cluster, where the room's history and channel share the room's slot.
pub(super) const PUBLISH_WITH_HISTORY: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call(ARGV[4], KEYS[2], '{"offset":"' .. id .. '",' .. string.sub(ARGV[1], 2))
return id
"#;

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

/// History settings as numbers.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Entries per room; 0 = off.
    pub size: u32,
    /// Stream TTL after the last message.
    pub ttl: Duration,
}

impl Cluster {
    /// Publishes an envelope to the meshlets that hold its target; a room message with
    /// history on is appended to the room's stream first, and its offset returned.
    pub(crate) async fn publish(
        &self,
        envelope: &Envelope,
    ) -> Result<Option<String>, ClusterError> {
        let body = serde_json::to_string(envelope).unwrap_or_default();
        let mut conn = self.conn().await?;
        let result = match (&envelope.to, envelope.op) {
            (Target::Room(room), Op::Message) if self.history.size > 0 => {
                let ttl_ms = u64::try_from(self.history.ttl.as_millis()).unwrap_or(u64::MAX);
                self.script
                    .key(self.keys.rt_history(room))
                    .key(self.keys.rt_room(room))
                    .arg(body)
                    .arg(self.history.size)
                    .arg(ttl_ms.max(1))
                    .arg(publish_command(&conn, true))
                    .invoke_async::<String>(&mut conn)
                    .await
                    .map(Some)
            }
            (target, _) => {
                let (channel, sharded) = match target {
                    Target::Room(room) if envelope.op == Op::Message => {
                        (self.keys.rt_room(room), true)
                    }
                    Target::User(user) if envelope.op == Op::Message => {
                        (self.keys.rt_user(user), true)
                    }
                    _ => (self.keys.rt_all(), false),
                };
                redis::cmd(publish_command(&conn, sharded))
                    .arg(channel)
                    .arg(body)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map(|_| None)
            }
        };
        result.map_err(|e| self.failed(e))
    }

    /// Reads a room's history for a join: the latest offset, and with `since` the entries
    /// after it when the stream still holds `since` itself (otherwise nothing can be
    /// proven and `recovered` is false).
    pub(crate) async fn recover(
        &self,
        room: &str,
        since: Option<&str>,
    ) -> Result<Recovery, ClusterError> {
        let mut conn = self.conn().await?;
        let key = self.keys.rt_history(room);
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
}

/// Room and user channels are sharded on a cluster (`SPUBLISH`: a message stays on the
/// slot's shard instead of crossing every node); `all` and one server use `PUBLISH`.
fn publish_command(conn: &Conn, sharded: bool) -> &'static str {
    if sharded && conn.is_cluster() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    }
}
