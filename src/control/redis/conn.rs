//! One connection type for every caller, whichever Redis [`super::Target`] names: a
//! multiplexed connection to one server (alone or the master of a Sentinel set), or a
//! cluster connection that routes each command by its key and follows MOVED/ASK.
//!
//! Multi-key pipelines and MULTI blocks (the registry's writes, presence updates) are one
//! round trip on one server; on a cluster their keys live on different nodes, so
//! [`Conn`] sends them command by command there (a MULTI's commands in order, the others
//! at once). The registry's data model never needed those MULTIs for correctness: a
//! reader treats an index entry without its hash as not live (docs/registry.md).

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value};

/// A connection to the control plane's Redis.
#[derive(Clone)]
pub enum Conn {
    /// One server, or (with its `host:port` as the sentinels named it) the master of a
    /// Sentinel set.
    Server(MultiplexedConnection, Option<std::sync::Arc<str>>),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Server(..) => f.write_str("Conn::Server"),
            Conn::Cluster(_) => f.write_str("Conn::Cluster"),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c, _) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c, _) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(cluster_pipeline(c, pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c, _) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A pipeline on a cluster: as one request when its keys share a slot, else split.
async fn cluster_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    match conn.req_packed_commands(pipeline, offset, count).await {
        Err(e) if is_cross_slot(&e) => split(conn, pipeline).await,
        other => other,
    }
}

fn is_cross_slot(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(ServerErrorKind::CrossSlot)
        || e.code() == Some("CROSSSLOT")
}

/// Sends each command of `pipeline` on its own, shaped as the pipeline's reply would be
/// (a MULTI's replies as one array, the `offset`/`count` redis-rs asks for).
async fn split(conn: &ClusterConnection, pipeline: &Pipeline) -> RedisResult<Vec<Value>> {
    if pipeline.is_transaction() {
        let mut replies = Vec::with_capacity(pipeline.len());
        let mut c = conn.clone();
        for cmd in pipeline.cmd_iter() {
            replies.push(c.req_packed_command(cmd).await?);
        }
        return Ok(vec![Value::Array(replies)]);
    }
    try_join_all(pipeline.cmd_iter().map(|cmd| {
        let mut c = conn.clone();
        async move { c.req_packed_command(cmd).await }
    }))
    .await
}

impl Conn {
    /// `WAIT numreplicas timeout` after a write to `key`, on the connection that wrote it
    /// (on a cluster: the master of the key's slot). Returns the replicas that confirmed.
    pub async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout_ms: u64,
    ) -> RedisResult<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout_ms);
        let reply = self.on_master_of(key, cmd).await?;
        Ok(redis::from_redis_value::<u32>(reply).unwrap_or(0))
    }

    /// How many replicas the master of `key` has connected now (`ROLE`).
    pub async fn connected_replicas(&mut self, key: &str) -> RedisResult<u32> {
        let reply = self.on_master_of(key, redis::cmd("ROLE")).await?;
        Ok(match reply {
            Value::Array(items) => match items.get(2) {
                Some(Value::Array(replicas)) => u32::try_from(replicas.len()).unwrap_or(u32::MAX),
                _ => 0,
            },
            _ => 0,
        })
    }

    async fn on_master_of(&mut self, key: &str, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Conn::Server(c, _) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
        }
    }

    /// The `host:port` the sentinels named when this connection was made (Sentinel only).
    pub fn master_addr(&self) -> Option<&str> {
        match self {
            Conn::Server(_, addr) => addr.as_deref(),
            Conn::Cluster(_) => None,
        }
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}
