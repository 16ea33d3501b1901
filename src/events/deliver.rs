//! Delivery of one subscription (docs/events.md): a consumer group per service, a consumer per
//! meshlet, XREADGROUP with BLOCK on a connection of its own, each entry handed to the app
//! by a task that owns it until it is acknowledged, dead-lettered, or left pending for
//! another meshlet (shutdown).
//!
//! The loop, top to bottom:
//! 1. **group**: XGROUP CREATE MKSTREAM at `$` or `0` (`start`); after NOGROUP (Redis
//!    restarted empty) at `0`, so events published since the restart are not skipped.
//! 2. **slots**: wait for a free delivery slot (`concurrency` of them). Entries are read
//!    only for free slots, so none waits in memory while its idle time grows toward a
//!    takeover by another meshlet; with one slot, entries go out in stream order.
//! 3. **take over**: every `timeout`, XAUTOCLAIM entries idle longer than `2 × timeout`
//!    (their meshlet died) into the free slots.
//!    Once a sweep has gone through every pending entry, consumers of the group that have
//!    nothing pending and were not seen for [`FORGET_FACTOR`] × that idle time are removed
//!    (dead meshlets' consumers would otherwise stay in the group forever).
//! 4. **read**: XREADGROUP `>` for the free slots, blocking until the next takeover is due.
//! 5. **deliver** (a task per entry): POST; 2xx → XACK; 4xx but 408/429 → dead letter
//!    `rejected`; otherwise wait a doubling, jittered backoff (keeping the entry from
//!    looking abandoned), XCLAIM it again, which bumps Redis's delivery counter: that
//!    counter is the attempt number, so it survives restarts; past `max_attempts` → dead
//!    letter `exhausted`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::app::{Answer, AppClient, Delivery, Verdict};
use super::envelope::{
    as_array, as_int, as_string, child_traceparent, id_ms, now_ms, now_rfc3339, parse_entry,
    parse_read_reply, Entry,
};
use super::metrics::SubscriptionMetrics;
use super::publish::minid;
use super::scripts::{is_busygroup, is_nogroup};
use super::scripts::{DEAD_LETTER, FORGET_CONSUMERS, HOLD, REDELIVER, TAKE_OVER};
use crate::config::{StreamStart, Subscription};
use crate::control::redis::Link;
use crate::control::redis::{Backoff, Outage, REDIS_IO_TIMEOUT};
use crate::control::Shutdown;

/// How often lag and pending gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// Tries of an XACK or dead-letter write before the entry is left pending (it is then
/// delivered again later: at least once).
const FINISH_TRIES: u32 = 3;
/// A consumer with nothing pending is forgotten once idle this many times the takeover idle
/// time (`2 × timeout`). From Redis 7.2, idle counts from the last read attempt and a live
/// meshlet reads at least every `timeout` (at most 5 s), so only dead ones get there. Up to
/// 7.0 it counts from the last read that returned entries, so a live meshlet on a quiet
/// stream is removed too: harmless, it has nothing pending (checked in the same step) and
/// Redis recreates it with the next entry its blocked read gets.
pub const FORGET_FACTOR: u32 = 10;

/// Everything one subscription's tasks share.
pub struct Subscriber {
    /// The subscription as configured.
    pub sub: Subscription,
    /// `{prefix}:events:{type}`.
    pub stream: String,
    /// `{prefix}:dlq:{type}`.
    pub dlq: String,
    /// Consumer group: `service.name`.
    pub group: String,
    /// Consumer: this meshlet's instance id.
    pub consumer: String,
    /// Commands (acks, claims, scripts), shared with publishing.
    pub cmd: Arc<Link>,
    /// Blocking reads: a connection of their own, so a BLOCK never delays an ack.
    pub reader: Link,
    /// The app.
    pub app: AppClient,
    /// Metric handles.
    pub metrics: SubscriptionMetrics,
    /// Trimming of the dead-letter stream.
    pub retention: Duration,
    /// One permit per delivery in flight.
    pub slots: Arc<Semaphore>,
}

impl Subscriber {
    /// Runs until `shutdown` turns true: stops reading, lets in-flight POSTs finish (bounded
    /// by `timeout`), leaves entries waiting out a backoff pending for later.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let gauges = tokio::spawn(self.clone().refresh_gauges(shutdown.clone()));
        self.clone().read_loop(shutdown).await;
        let all = self.sub.concurrency.get();
        let drain = self.sub.timeout.get() + Duration::from_secs(1);
        let _ = tokio::time::timeout(drain, self.slots.acquire_many(all)).await;
        gauges.abort();
        tracing::debug!(r#type = %self.sub.event_type, "delivery stopped");
    }

    fn timeout(&self) -> Duration {
        self.sub.timeout.get()
    }

    /// How often abandoned entries are looked for; also the longest BLOCK.
    fn claim_interval(&self) -> Duration {
        self.timeout()
            .clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    async fn read_loop(self: Arc<Self>, shutdown: Shutdown) {
        let mut outage = Outage::new("events delivery");
        let mut pause = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut start_at = match self.sub.start {
            StreamStart::Latest => "$",
            StreamStart::Earliest => "0",
        };
        let mut group_ready = false;
        let mut cursor = "0-0".to_owned();
        let mut next_claim = Instant::now();
        loop {
            if shutdown.is_started() {
                return;
            }
            if !group_ready {
                match self.create_group(start_at).await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        self.cmd.failed(&e);
                        outage.failed(&e);
                        if !shutdown.sleep(pause.next_delay()).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = shutdown.wait() => return,
            };
            let mut slots = first;
            while let Ok(more) = self.slots.clone().try_acquire_owned() {
                slots.merge(more);
            }
            let mut failure = None;
            if Instant::now() >= next_claim {
                next_claim = Instant::now() + self.claim_interval();
                match self.take_over(&mut cursor, slots.num_permits()).await {
                    Ok(claimed) => {
                        for (entry, deliveries) in claimed {
                            tracing::info!(r#type = %self.sub.event_type, id = %entry.id, deliveries, "took over an entry abandoned by another consumer");
                            self.spawn_delivery(entry, deliveries, &mut slots, &shutdown);
                        }
                        // A finished sweep: every entry idle in a dead consumer has moved.
                        // Housekeeping: a failure here is retried at the next sweep, and
                        // a Redis outage shows up in the read below.
                        if cursor == "0-0" {
                            if let Err(e) = self.forget_dead_consumers().await {
                                self.cmd.failed(&e);
                                tracing::debug!(r#type = %self.sub.event_type, error = %e, "could not look for dead consumers");
                            }
                        }
                    }
                    Err(e) => failure = Some(e),
                }
            }
            if failure.is_none() && slots.num_permits() > 0 {
                let block = next_claim.saturating_duration_since(Instant::now());
                let read = tokio::select! {
                    r = self.read(slots.num_permits(), block) => r,
                    () = shutdown.wait() => return,
                };
                match read {
                    Ok(entries) => {
                        for entry in entries {
                            self.spawn_delivery(entry, 1, &mut slots, &shutdown);
                        }
                    }
                    Err(e) => failure = Some(e),
                }
            }
            drop(slots);
            match failure {
                None => {
                    outage.recovered();
                    pause.reset();
                }
                Some(e) if is_nogroup(&e) => {
                    if !outage.is_down() {
                        tracing::warn!(r#type = %self.sub.event_type, group = %self.group, "consumer group gone (Redis restarted?); recreating it at 0");
                    }
                    outage.failed(&e);
                    group_ready = false;
                    start_at = "0";
                    if !shutdown.sleep(pause.next_delay()).await {
                        return;
                    }
                }
                Some(e) => {
                    self.reader.failed(&e);
                    self.cmd.failed(&e);
                    outage.failed(&e);
                    if !shutdown.sleep(pause.next_delay()).await {
                        return;
                    }
                }
            }
        }
    }

    fn spawn_delivery(
        self: &Arc<Self>,
        entry: Entry,
        deliveries: u64,
        slots: &mut OwnedSemaphorePermit,
        shutdown: &Shutdown,
    ) {
        let Some(slot) = slots.split(1) else {
            // Never more entries than slots are asked for; if Redis sent more, the extra
            // entry stays pending and is taken over later.
            return;
        };
        let this = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            this.deliver(entry, deliveries, shutdown).await;
            drop(slot);
        });
    }

    async fn create_group(&self, start_at: &str) -> Result<(), RedisError> {
        let mut conn = self.cmd.get().await?;
        let created: Result<Value, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(start_at)
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => {
                tracing::info!(r#type = %self.sub.event_type, group = %self.group, start = start_at, "consumer group created");
                Ok(())
            }
            Err(e) if is_busygroup(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn read(&self, count: usize, block: Duration) -> Result<Vec<Entry>, RedisError> {
        let mut conn = self.reader.get().await?;
        let block_ms = block.as_millis().max(1) as u64;
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        Ok(parse_read_reply(&reply))
    }

    async fn take_over(
        &self,
        cursor: &mut String,
        count: usize,
    ) -> Result<Vec<(Entry, u64)>, RedisError> {
        let mut conn = self.cmd.get().await?;
        let min_idle = (self.timeout() * 2).as_millis() as u64;
        let reply: Value = TAKE_OVER
            .key(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(min_idle)
            .arg(cursor.as_str())
            .arg(count)
            .invoke_async(&mut conn)
            .await?;
        let Some([next, claimed]) = as_array(&reply).and_then(|a| <&[Value; 2]>::try_from(a).ok())
        else {
            return Ok(Vec::new());
        };
        *cursor = as_string(next).unwrap_or_else(|| "0-0".to_owned());
        Ok(as_array(claimed)
            .unwrap_or_default()
            .iter()
            .filter_map(|item| {
                let parts = as_array(item)?;
                let entry = parse_entry(&Value::Array(parts.get(..2)?.to_vec()))?;
                let deliveries = as_int(parts.get(2)?)?.max(1) as u64;
                Some((entry, deliveries))
            })
            .collect())
    }

    /// Removes the group's consumers that have nothing pending and were idle for
    /// [`FORGET_FACTOR`] × the takeover idle time (never this meshlet's own).
    async fn forget_dead_consumers(&self) -> Result<(), RedisError> {
        let mut conn = self.cmd.get().await?;
        let min_idle = (self.timeout() * 2 * FORGET_FACTOR).as_millis() as u64;
        let removed: Vec<String> = FORGET_CONSUMERS
            .key(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(min_idle)
            .invoke_async(&mut conn)
            .await?;
        if !removed.is_empty() {
            tracing::info!(r#type = %self.sub.event_type, group = %self.group, ?removed, "removed consumers of dead meshlets (nothing pending, idle {min_idle} ms)");
        }
        Ok(())
    }

    /// Owns `entry` until it is acknowledged, dead-lettered, or (shutdown, takeover, Redis
    /// lost it) left alone. `attempt` is Redis's delivery counter for it.
    async fn deliver(self: Arc<Self>, mut entry: Entry, mut attempt: u64, shutdown: Shutdown) {
        let max = u64::from(self.sub.max_attempts.get());
        let mut last: Option<Answer> = None;
        loop {
            if attempt > max {
                // Taken over after its earlier deliveries ran out.
                self.dead_letter(&entry, "exhausted", attempt - 1, last)
                    .await;
                return;
            }
            let answer = self.post(&entry, attempt).await;
            match answer.verdict() {
                Verdict::Ack => {
                    self.metrics.ok.inc();
                    self.ack(&entry.id).await;
                    return;
                }
                Verdict::Reject => {
                    self.dead_letter(&entry, "rejected", attempt, Some(answer))
                        .await;
                    return;
                }
                Verdict::Retry if attempt >= max => {
                    self.dead_letter(&entry, "exhausted", attempt, Some(answer))
                        .await;
                    return;
                }
                Verdict::Retry => {
                    self.metrics.retry.inc();
                    last = Some(answer);
                    tracing::debug!(r#type = %self.sub.event_type, id = %entry.id, attempt, answer = %answer.label(), "delivery failed; will retry");
                    match self.wait_and_reclaim(&entry.id, attempt, &shutdown).await {
                        Some((again, deliveries)) => {
                            entry = again;
                            attempt = deliveries;
                        }
                        None => return,
                    }
                }
            }
        }
    }

    async fn post(&self, entry: &Entry, attempt: u64) -> Answer {
        let started = Instant::now();
        let answer = self
            .app
            .post(
                Delivery {
                    path: &self.sub.path,
                    envelope: entry.envelope(),
                    event_id: entry.get("event_id"),
                    event_type: self.sub.event_type.as_str(),
                    attempt,
                    traceparent: child_traceparent(entry.get("traceparent")),
                },
                self.timeout(),
            )
            .await;
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    /// The backoff before delivery `attempt + 1`: `backoff × 2^(attempt-1)`, capped by
    /// `max_backoff`, jittered into its upper half.
    fn backoff(&self, attempt: u64) -> Duration {
        let base = self.sub.backoff.get();
        let cap = self.sub.max_backoff.get().max(base);
        let doublings = attempt.saturating_sub(1).min(30) as u32;
        let ceiling = base.saturating_mul(1 << doublings).min(cap);
        ceiling / 2 + ceiling.mul_f64(fastrand::f64() * 0.5)
    }

    /// Sleeps the backoff while keeping the entry held, then claims it again. `None`: stop
    /// (shutdown, the entry is someone else's or gone).
    async fn wait_and_reclaim(
        &self,
        id: &str,
        attempt: u64,
        shutdown: &Shutdown,
    ) -> Option<(Entry, u64)> {
        let until = Instant::now() + self.backoff(attempt);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Held entries are touched every `timeout`: others take over only after 2 × timeout.
            let nap = left.min(self.timeout());
            if !shutdown.sleep(nap).await {
                return None;
            }
            if nap < left && !self.hold(id).await {
                return None;
            }
        }
        let mut pause = Backoff::new(Duration::from_millis(100), REDIS_IO_TIMEOUT);
        loop {
            match self.redeliver(id).await {
                Ok(found) => return found,
                Err(e) if is_nogroup(&e) => return None,
                Err(e) => {
                    self.cmd.failed(&e);
                    tracing::debug!(error = %e, id, "cannot claim for redelivery; retrying");
                    if !shutdown.sleep(pause.next_delay()).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn hold(&self, id: &str) -> bool {
        let Ok(mut conn) = self.cmd.get().await else {
            return true; // Redis down: keep waiting; the claim after the backoff decides.
        };
        let held: Result<i64, RedisError> = HOLD
            .key(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(id)
            .invoke_async(&mut conn)
            .await;
        match held {
            Ok(n) => n == 1,
            Err(e) => {
                self.cmd.failed(&e);
                !is_nogroup(&e)
            }
        }
    }

    async fn redeliver(&self, id: &str) -> Result<Option<(Entry, u64)>, RedisError> {
        let mut conn = self.cmd.get().await?;
        let reply: Value = REDELIVER
            .key(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        let Some(parts) = as_array(&reply) else {
            return Ok(None);
        };
        let entry = parts.first().and_then(parse_entry);
        let deliveries = parts.get(1).and_then(as_int);
        Ok(entry.zip(deliveries.map(|d| d.max(1) as u64)))
    }

    async fn ack(&self, id: &str) {
        for _ in 0..FINISH_TRIES {
            let acked = async {
                let mut conn = self.cmd.get().await?;
                redis::cmd("XACK")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(id)
                    .query_async::<i64>(&mut conn)
                    .await
            }
            .await;
            match acked {
                Ok(_) => return,
                Err(e) if is_nogroup(&e) => return,
                Err(e) => {
                    self.cmd.failed(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::warn!(r#type = %self.sub.event_type, id, "XACK failed; the event stays pending and will be delivered again");
    }

    async fn dead_letter(&self, entry: &Entry, reason: &str, attempts: u64, last: Option<Answer>) {
        self.metrics.dead_letter.inc();
        let last_status = last.map(Answer::label).unwrap_or_default();
        let failed_at = now_rfc3339();
        for _ in 0..FINISH_TRIES {
            let written = async {
                let mut conn = self.cmd.get().await?;
                let mut invocation = DEAD_LETTER.prepare_invoke();
                invocation
                    .key(&self.stream)
                    .key(&self.dlq)
                    .arg(&self.group)
                    .arg(&entry.id)
                    .arg(minid(self.retention));
                for (k, v) in &entry.fields {
                    invocation.arg(k).arg(v);
                }
                invocation
                    .arg("group")
                    .arg(&self.group)
                    .arg("reason")
                    .arg(reason)
                    .arg("attempts")
                    .arg(attempts)
                    .arg("last_status")
                    .arg(&last_status)
                    .arg("failed_at")
                    .arg(&failed_at);
                invocation.invoke_async::<Option<String>>(&mut conn).await
            }
            .await;
            match written {
                Ok(Some(dlq_id)) => {
                    match reason {
                        "rejected" => self.metrics.rejected.inc(),
                        _ => self.metrics.exhausted.inc(),
                    }
                    tracing::warn!(r#type = %self.sub.event_type, id = %entry.id, event_id = entry.get("event_id"), reason, attempts, last_status, dlq_id, "event dead-lettered");
                    return;
                }
                Ok(None) => return, // no longer pending: someone else finished it
                Err(e) if is_nogroup(&e) => return,
                Err(e) => {
                    self.cmd.failed(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::warn!(r#type = %self.sub.event_type, id = %entry.id, "dead-letter write failed; the event stays pending and will be delivered again");
    }

    /// Lag, pending and oldest-pending gauges from XINFO GROUPS and XPENDING.
    async fn refresh_gauges(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            if !shutdown.sleep(GAUGE_INTERVAL).await {
                return;
            }
            if let Err(e) = self.read_gauges().await {
                self.cmd.failed(&e);
            }
        }
    }

    async fn read_gauges(&self) -> Result<(), RedisError> {
        let mut conn = self.cmd.get().await?;
        let (groups, pending): (Value, Value) = redis::pipe()
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .query_async(&mut conn)
            .await?;
        for group in as_array(&groups).unwrap_or_default() {
            let info = pairs(group);
            let field = |name: &str| info.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
            if field("name").and_then(as_string).as_deref() != Some(self.group.as_str()) {
                continue;
            }
            if let Some(n) = field("pending").and_then(as_int) {
                self.metrics.pending.set(n);
            }
            if let Some(n) = field("lag").and_then(as_int) {
                self.metrics.lag.set(n);
            }
        }
        let oldest = as_array(&pending)
            .and_then(|p| p.get(1))
            .and_then(as_string)
            .and_then(|id| id_ms(&id))
            .map_or(0.0, |ms| now_ms().saturating_sub(ms) as f64 / 1000.0);
        self.metrics.oldest_pending.set(oldest);
        Ok(())
    }
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Map(kv) => kv
            .iter()
            .filter_map(|(k, v)| Some((as_string(k)?, v)))
            .collect(),
        other => as_array(other)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((as_string(k)?, v)),
                _ => None,
            })
            .collect(),
    }
}
