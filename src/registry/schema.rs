//! The Redis registry contract of docs/registry.md, in one place: the instance hash and the
//! reads and writes every participant (meshlet, CLI, a Python service) performs, on the keys
//! named by [`Keys`] (`crate::control::keys`):
//!
//! ```text
//! {prefix}:services               SET    service names
//! {prefix}:svc:{service}          ZSET   member = instance id, score = expiry (unix ms)
//! {prefix}:inst:{service}:{id}    HASH   host, port, version, status, metadata, registered_at,
//!                                        last_heartbeat, protocol; key TTL = registry ttl
//! {prefix}:changes                PUB/SUB, message = service name
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::config::Protocol;
use crate::control::keys::Keys;

/// Whether an instance takes new traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Serving.
    Up,
    /// Shutting down or unhealthy: callers stop sending new requests.
    Draining,
}

impl Status {
    /// The hash's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Draining => "draining",
        }
    }
}

/// One registered instance of a service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Instance {
    /// Instance id, unique within its service.
    pub id: String,
    /// Host name or IP to dial.
    pub host: String,
    /// Port to dial.
    pub port: u16,
    /// Free-form version string.
    pub version: String,
    /// Up or draining.
    pub status: Status,
    /// How it speaks HTTP.
    pub protocol: Protocol,
    /// JSON object of free-form metadata.
    pub metadata: serde_json::Value,
    /// Unix ms of first registration (0 when unknown).
    pub registered_at: u64,
    /// Unix ms of the last heartbeat (0 when unknown).
    pub last_heartbeat: u64,
    /// Unix ms after which it is gone unless refreshed; `None` for static entries.
    pub expires_at: Option<u64>,
}

impl Instance {
    /// `host:port`, bracketing IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Reads an instance hash; `None` when a required field is missing or malformed
    /// (a broken entry written by hand must not take the watcher down).
    pub fn from_hash(id: &str, h: &HashMap<String, String>, expires_at: u64) -> Option<Self> {
        let host = h.get("host").filter(|s| !s.is_empty())?.clone();
        let port: u16 = h.get("port")?.parse().ok().filter(|p| *p != 0)?;
        let status = match h.get("status").map(String::as_str) {
            Some("draining") => Status::Draining,
            _ => Status::Up,
        };
        let protocol = match h.get("protocol").map(String::as_str) {
            Some("h2") => Protocol::H2,
            _ => Protocol::Http1,
        };
        let metadata = h
            .get("metadata")
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or(serde_json::Value::Object(Default::default()));
        let number = |k: &str| h.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Some(Instance {
            id: id.to_owned(),
            host,
            port,
            version: h.get("version").cloned().unwrap_or_default(),
            status,
            protocol,
            metadata,
            registered_at: number("registered_at"),
            last_heartbeat: number("last_heartbeat"),
            expires_at: Some(expires_at),
        })
    }

    fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("host", self.host.clone()),
            ("port", self.port.to_string()),
            ("version", self.version.clone()),
            ("status", self.status.as_str().to_owned()),
            ("protocol", self.protocol.as_str().to_owned()),
            ("metadata", self.metadata.to_string()),
            ("registered_at", self.registered_at.to_string()),
            ("last_heartbeat", self.last_heartbeat.to_string()),
        ]
    }
}

/// Wall-clock unix milliseconds (registry scores are wall-clock: clocks are NTP-synced).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes (or refreshes) an instance in one MULTI: hash + TTL, zset score, services set,
/// and a change message when `announce` is set.
pub async fn register<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    service: &str,
    instance: &Instance,
    ttl: Duration,
    announce: bool,
) -> redis::RedisResult<()> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let expires = now_ms().saturating_add(ttl_ms);
    let hash = keys.instance(service, &instance.id);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .hset_multiple(&hash, &instance.to_fields())
        .ignore()
        .pexpire(&hash, i64::try_from(ttl_ms).unwrap_or(i64::MAX))
        .ignore()
        .zadd(keys.instances_of(service), &instance.id, expires)
        .ignore()
        // Housekeeping: members that expired more than a ttl ago are crashed instances.
        .zrembyscore(
            keys.instances_of(service),
            "-inf",
            format!("({}", now_ms().saturating_sub(ttl_ms)),
        )
        .ignore()
        .sadd(keys.services(), service)
        .ignore();
    if announce {
        pipe.publish(keys.changes(), service).ignore();
    }
    pipe.query_async(conn).await
}

/// Marks an instance draining and announces it, so callers stop picking it.
pub async fn mark_draining<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    service: &str,
    id: &str,
) -> redis::RedisResult<()> {
    redis::pipe()
        .atomic()
        .hset(
            keys.instance(service, id),
            "status",
            Status::Draining.as_str(),
        )
        .ignore()
        .publish(keys.changes(), service)
        .ignore()
        .query_async(conn)
        .await
}

/// Removes an instance and announces it. The service stays in the services set: other
/// instances may still be registering, and an empty service simply has no endpoints.
pub async fn deregister<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    service: &str,
    id: &str,
) -> redis::RedisResult<()> {
    redis::pipe()
        .atomic()
        .zrem(keys.instances_of(service), id)
        .ignore()
        .del(keys.instance(service, id))
        .ignore()
        .publish(keys.changes(), service)
        .ignore()
        .query_async(conn)
        .await
}

/// Every service name in the registry.
pub async fn service_names<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> redis::RedisResult<Vec<String>> {
    redis::cmd("SMEMBERS")
        .arg(keys.services())
        .query_async(conn)
        .await
}

/// Live instances of `services` (score > `now`), two pipelined round trips in all.
/// With `include_expired` every member is read (for operators' listings).
pub async fn read_services<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    services: &[String],
    include_expired: bool,
) -> redis::RedisResult<BTreeMap<String, Vec<Instance>>> {
    let now = now_ms();
    let min = if include_expired {
        "-inf".to_owned()
    } else {
        format!("({now}")
    };
    let mut pipe = redis::pipe();
    for s in services {
        pipe.cmd("ZRANGEBYSCORE")
            .arg(keys.instances_of(s))
            .arg(&min)
            .arg("+inf")
            .arg("WITHSCORES");
    }
    let members: Vec<Vec<(String, f64)>> = if services.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(conn).await?
    };
    let mut wanted = Vec::new();
    let mut hashes = redis::pipe();
    for (service, list) in services.iter().zip(members) {
        for (id, score) in list {
            hashes.hgetall(keys.instance(service, &id));
            wanted.push((service.clone(), id, score as u64));
        }
    }
    let bodies: Vec<HashMap<String, String>> = if wanted.is_empty() {
        Vec::new()
    } else {
        hashes.query_async(conn).await?
    };
    let mut out: BTreeMap<String, Vec<Instance>> =
        services.iter().map(|s| (s.clone(), Vec::new())).collect();
    for ((service, id, expires), hash) in wanted.into_iter().zip(bodies) {
        // A zset member whose hash expired is a crashed instance: not live.
        if let Some(inst) = Instance::from_hash(&id, &hash, expires) {
            out.entry(service).or_default().push(inst);
        }
    }
    Ok(out)
}

/// The server's `run_id`: it changes when Redis restarts (and may have lost its data).
pub async fn run_id<C: ConnectionLike>(conn: &mut C) -> redis::RedisResult<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .unwrap_or("")
        .trim()
        .to_owned())
}
