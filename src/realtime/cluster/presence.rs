//! Presence: who is in which room, as `{prefix}:rt:{svc}:presence:{room}` (HASH client →
//! user).
//! Each meshlet writes its own clients' entries in the background, refreshes its whole
//! share every heartbeat with its liveness key, and removes it at shutdown; readers skip
//! the entries of meshlets whose liveness key expired, and any live meshlet sweeps them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::control::redis::Conn;
use redis::{AsyncCommands, RedisError, RedisResult};
use tokio::sync::mpsc;

use super::{Cluster, ClusterError};
use crate::control::Shutdown;
use crate::realtime::hub::Member;

/// A presence change of one local client.
pub(super) enum Presence {
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

impl Cluster {
    /// Who is in `room` on any live meshlet: (client, user) pairs.
    pub(crate) async fn presence(&self, room: &str) -> Result<Vec<(String, String)>, ClusterError> {
        let mut conn = self.conn().await?;
        let key = self.keys.rt_presence(room);
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
                    pipe.exists(self.keys.rt_alive(i));
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
    /// `SMEMBERS` of each live meshlet's `rt:rooms:{i}` (pipelined, merged here: the sets
    /// are in different slots of a cluster), one `HLEN rt:presence:{room}` per
    /// room (pipelined): four round trips, O(meshlets + rooms) work in Redis.
    ///
    /// Counts are the presence hashes' sizes, so entries of a meshlet that died are
    /// counted until they are swept (within `registry.ttl` + one heartbeat); a room that
    /// a meshlet just emptied may be listed with 0 members until its next refresh, and
    /// such rooms are left out here.
    pub(crate) async fn rooms(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let mut conn = self.conn().await?;
        let result = async {
            let instances: Vec<String> = conn.smembers(self.keys.rt_instances()).await?;
            let others: Vec<&String> = instances.iter().filter(|i| **i != self.instance).collect();
            let alive: Vec<bool> = if others.is_empty() {
                Vec::new()
            } else {
                let mut pipe = redis::pipe();
                for i in &others {
                    pipe.exists(self.keys.rt_alive(i));
                }
                pipe.query_async(&mut conn).await?
            };
            // This meshlet's own set counts even before its first heartbeat listed it.
            let mut sets = vec![self.keys.rt_instance_rooms(&self.instance)];
            sets.extend(
                others
                    .iter()
                    .zip(alive)
                    .filter(|(_, alive)| *alive)
                    .map(|(i, _)| self.keys.rt_instance_rooms(i)),
            );
            // One SMEMBERS per set, not SUNION: on a cluster the sets live in different
            // slots (no hash tag), and a pipeline is split there while SUNION is refused.
            let mut pipe = redis::pipe();
            for set in &sets {
                pipe.smembers(set);
            }
            let members: Vec<HashSet<String>> = pipe.query_async(&mut conn).await?;
            let mut names: Vec<String> = members
                .into_iter()
                .flatten()
                .collect::<HashSet<String>>()
                .into_iter()
                .collect();
            names.sort();
            if names.is_empty() {
                return Ok::<_, RedisError>(Vec::new());
            }
            let mut pipe = redis::pipe();
            for room in &names {
                pipe.hlen(self.keys.rt_presence(room));
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

    /// Writes presence changes as they come and refreshes this meshlet's whole share every
    /// heartbeat (which also repairs what an outage or a Redis restart lost, and sweeps
    /// the entries of meshlets whose liveness key expired). At shutdown, removes its own.
    pub(super) async fn presence_keeper(
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
                    let key = self.keys.rt_presence(room);
                    pipe.hset(&key, client.as_ref(), user.as_deref().unwrap_or(""))
                        .ignore()
                        .pexpire(&key, ttl)
                        .ignore()
                        .sadd(self.keys.rt_instance_rooms(&self.instance), room.as_ref())
                        .ignore();
                }
                Presence::Remove { room, client } => {
                    pipe.hdel(self.keys.rt_presence(room), client.as_ref())
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
            let mine = self.keys.rt_instance_rooms(&self.instance);
            let _: () = redis::pipe()
                .pset_ex(self.keys.rt_alive(&self.instance), 1, ttl as u64)
                .ignore()
                .sadd(self.keys.rt_instances(), &self.instance)
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
                let key = self.keys.rt_presence(room);
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
    async fn sweep_dead(&self, conn: &mut Conn) -> RedisResult<()> {
        let instances: Vec<String> = conn.smembers(self.keys.rt_instances()).await?;
        for instance in instances.iter().filter(|i| **i != self.instance) {
            let alive: bool = conn.exists(self.keys.rt_alive(instance)).await?;
            if alive {
                continue;
            }
            let rooms_key = self.keys.rt_instance_rooms(instance);
            let rooms: Vec<String> = conn.smembers(&rooms_key).await?;
            let prefix = format!("{instance}:");
            for room in rooms {
                let key = self.keys.rt_presence(&room);
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
                .srem(self.keys.rt_instances(), instance)
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
            let mine = self.keys.rt_instance_rooms(&self.instance);
            let rooms: Vec<String> = conn.smembers(&mine).await?;
            let prefix = format!("{}:", self.instance);
            for room in rooms {
                let key = self.keys.rt_presence(&room);
                let fields: Vec<String> = conn.hkeys(&key).await?;
                let ours: Vec<&String> = fields.iter().filter(|f| f.starts_with(&prefix)).collect();
                if !ours.is_empty() {
                    let _: i64 = conn.hdel(&key, ours).await?;
                }
            }
            redis::pipe()
                .del(&mine)
                .ignore()
                .del(self.keys.rt_alive(&self.instance))
                .ignore()
                .srem(self.keys.rt_instances(), &self.instance)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        }
        .await;
        result.map_err(|e| self.failed(e))
    }
}

/// The meshlet a client id belongs to: client ids are `{instance}:{n}`.
fn instance_of(client: &str) -> Option<&str> {
    client.rsplit_once(':').map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_name_their_instance() {
        assert_eq!(instance_of("pod-a-00ff12:7"), Some("pod-a-00ff12"));
        assert_eq!(instance_of("nocolon"), None);
    }
}
