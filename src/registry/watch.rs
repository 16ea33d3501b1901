//! The discovery watcher: follows `{prefix}:changes`, re-reads everything every
//! `registry.resync`, drops instances the moment their expiry passes, and publishes each
//! new [`Snapshot`]. Redis down: the last snapshot is kept whole (expiry suspended) and the
//! watcher reconnects with backoff, logging once per outage.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::control::redis::Conn;
use tokio::sync::{watch, Notify};
use tokio::time::sleep;

use super::schema::{self, now_ms, Instance};
use super::Snapshot;
use crate::control::keys::Keys;
use crate::control::redis::{Backoff, Link, Outage};
use crate::control::Shutdown;
use crate::telemetry::metrics::RegistryMetrics;

/// Everything the watcher needs; built by the sidecar.
pub struct Watcher {
    /// The registry's Redis (pub/sub on a connection of the session's own).
    pub link: Arc<Link>,
    /// Key names.
    pub keys: Keys,
    /// Full re-read interval.
    pub resync: Duration,
    /// Registry TTL: how long instances missing after a reconnect are kept.
    pub ttl: Duration,
    /// Where snapshots go.
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    /// Woken after every reconnect, so self-registration re-registers at once.
    pub reconnected: Arc<Notify>,
    /// Set once the first Redis snapshot is in.
    pub first_read: Arc<AtomicBool>,
    /// Watch error counter.
    pub metrics: RegistryMetrics,
}

type RedisInstances = BTreeMap<String, BTreeMap<String, Instance>>;

struct State {
    redis: RedisInstances,
    read_at: u64,
    run_id: Option<String>,
    /// Unix ms until which instances missing from Redis are kept. Set for one `ttl` after
    /// every reconnect that follows an outage: Redis may have restarted empty, or scores
    /// may have lapsed while registrants could not reach it either; each registrant gets a
    /// whole heartbeat cycle to refresh before its traffic is cut.
    keep_missing_until: Option<u64>,
    connected_before: bool,
}

impl Watcher {
    /// Runs until shutdown begins.
    pub async fn run(self, shutdown: Shutdown) {
        let shutdown = shutdown.wait();
        tokio::pin!(shutdown);
        let mut state = State {
            redis: BTreeMap::new(),
            read_at: 0,
            run_id: None,
            keep_missing_until: None,
            connected_before: false,
        };
        let mut outage = Outage::new("registry watch");
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let result = tokio::select! {
                r = self.session(&mut state, &mut outage, &mut backoff) => r,
                () = &mut shutdown => return,
            };
            if let Err(e) = result {
                self.metrics.watch_errors.inc();
                self.link.failed(&e);
                outage.failed(&e);
            }
            tokio::select! {
                () = sleep(backoff.next_delay()) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// One connected session: subscribe, resync, then follow changes until an error.
    async fn session(
        &self,
        state: &mut State,
        outage: &mut Outage,
        backoff: &mut Backoff,
    ) -> redis::RedisResult<()> {
        let mut changes = self.link.pubsub().await?;
        changes.subscribe(&[self.keys.changes()]).await?;
        let mut conn = self.link.get().await?;

        // A cluster has a run id per node; its restarts show as lost sessions instead.
        let run_id = if conn.is_cluster() {
            String::new()
        } else {
            schema::run_id(&mut conn).await?
        };
        if state.run_id.as_ref().is_some_and(|old| *old != run_id) {
            tracing::warn!("redis restarted (new run_id); known instances are kept for one ttl while registrants re-register");
        }
        if state.connected_before {
            let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
            state.keep_missing_until = Some(now_ms().saturating_add(ttl_ms));
        }
        state.connected_before = true;
        state.run_id = Some(run_id);
        self.resync_all(&mut conn, state).await?;
        outage.recovered();
        backoff.reset();
        self.reconnected.notify_waiters();

        let mut resync = tokio::time::interval(self.resync);
        resync.reset();
        loop {
            let next_expiry = next_expiry(&state.redis);
            tokio::select! {
                msg = changes.next() => {
                    let Some(msg) = msg else {
                        return Err(connection_lost());
                    };
                    let service: String = msg.get_payload().unwrap_or_default();
                    if !service.is_empty() {
                        self.refresh(&mut conn, state, &[service]).await?;
                    }
                }
                _ = resync.tick() => self.resync_all(&mut conn, state).await?,
                () = sleep_until_ms(next_expiry) => {
                    // Heartbeats move scores without a change message: re-read the services
                    // whose instances look expired before dropping anything.
                    let due = expiring_services(&state.redis, now_ms());
                    self.refresh(&mut conn, state, &due).await?;
                    prune_expired(&mut state.redis, now_ms());
                    self.publish(state);
                }
            }
        }
    }

    async fn resync_all(&self, conn: &mut Conn, state: &mut State) -> redis::RedisResult<()> {
        let names = schema::service_names(conn, &self.keys).await?;
        // Services that vanished from the set are re-read too, so they empty out.
        let mut all: Vec<String> = names.clone();
        for known in state.redis.keys() {
            if !all.contains(known) {
                all.push(known.clone());
            }
        }
        self.refresh(conn, state, &all).await?;
        let before = state.redis.len();
        state
            .redis
            .retain(|service, instances| !instances.is_empty() || names.contains(service));
        if state.redis.len() != before {
            self.publish(state);
        }
        Ok(())
    }

    async fn refresh(
        &self,
        conn: &mut Conn,
        state: &mut State,
        services: &[String],
    ) -> redis::RedisResult<()> {
        let fresh = schema::read_services(conn, &self.keys, services, false).await?;
        let now = now_ms();
        let keep_until = state.keep_missing_until.filter(|until| *until > now);
        state.keep_missing_until = keep_until;
        for (service, instances) in fresh {
            let mut next: BTreeMap<String, Instance> =
                instances.into_iter().map(|i| (i.id.clone(), i)).collect();
            if let (Some(until), Some(old)) = (keep_until, state.redis.get(&service)) {
                for (id, inst) in old {
                    next.entry(id.clone()).or_insert_with(|| {
                        let mut kept = inst.clone();
                        kept.expires_at = kept.expires_at.map(|e| e.max(until));
                        kept
                    });
                }
            }
            // A known service without live instances stays: it answers `no_endpoints`.
            state.redis.insert(service, next);
        }
        state.read_at = now;
        self.publish(state);
        self.first_read.store(true, Ordering::Release);
        Ok(())
    }

    fn publish(&self, state: &State) {
        let snapshot = Snapshot::merge(&BTreeMap::new(), &state.redis, state.read_at);
        self.snapshots.send_if_modified(|current| {
            if current.services == snapshot.services {
                // Same endpoints: only the read time moved; no rebuild downstream.
                return false;
            }
            *current = Arc::new(snapshot);
            true
        });
    }
}

fn next_expiry(redis: &RedisInstances) -> Option<u64> {
    redis
        .values()
        .flat_map(|m| m.values())
        .filter_map(|i| i.expires_at)
        .min()
}

fn expiring_services(redis: &RedisInstances, now: u64) -> Vec<String> {
    redis
        .iter()
        .filter(|(_, m)| m.values().any(|i| i.expires_at.is_some_and(|e| e <= now)))
        .map(|(s, _)| s.clone())
        .collect()
}

fn prune_expired(redis: &mut RedisInstances, now: u64) {
    for instances in redis.values_mut() {
        instances.retain(|_, i| i.expires_at.is_none_or(|e| e > now));
    }
}

async fn sleep_until_ms(at: Option<u64>) {
    match at {
        Some(at) => sleep(Duration::from_millis(at.saturating_sub(now_ms()) + 1)).await,
        None => std::future::pending().await,
    }
}

fn connection_lost() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "changes subscription closed",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, expires_at: u64) -> Instance {
        let mut h = std::collections::HashMap::new();
        h.insert("host".to_owned(), "127.0.0.1".to_owned());
        h.insert("port".to_owned(), "9000".to_owned());
        Instance::from_hash(id, &h, expires_at).unwrap()
    }

    #[test]
    fn expired_instances_are_pruned_and_their_service_stays_known() {
        let mut redis: RedisInstances = BTreeMap::new();
        redis
            .entry("a".into())
            .or_default()
            .insert("1".into(), inst("1", 100));
        redis
            .entry("a".into())
            .or_default()
            .insert("2".into(), inst("2", 300));
        redis
            .entry("b".into())
            .or_default()
            .insert("3".into(), inst("3", 100));
        assert_eq!(next_expiry(&redis), Some(100));
        prune_expired(&mut redis, 200);
        assert_eq!(redis.len(), 2);
        assert!(redis["b"].is_empty());
        assert!(redis["a"].contains_key("2"));
        assert_eq!(next_expiry(&redis), Some(300));
    }
}
