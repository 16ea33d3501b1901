//! One entry's delivery (step 5 of `deliver`), by a task that owns the entry: POST it to the
//! app; 2xx → XACK; a rejection, or no attempts left → a dead letter; otherwise a doubling,
//! jittered backoff while the entry stays held, then XCLAIM it again (Redis's delivery
//! counter is the attempt number). An XACK or dead-letter write that keeps failing leaves
//! the entry pending, to be delivered again: at least once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};

use super::reply;
use super::Subscriber;
use crate::control::redis::{Backoff, REDIS_IO_TIMEOUT};
use crate::control::Shutdown;
use crate::events::app::{Answer, Delivery, Verdict};
use crate::events::envelope::{child_traceparent, now_rfc3339, Entry};
use crate::events::publish::minid;
use crate::events::scripts::{is_nogroup, DEAD_LETTER, HOLD, REDELIVER};

/// Tries of an XACK or dead-letter write before the entry is left pending (it is then
/// delivered again later: at least once).
const FINISH_TRIES: u32 = 3;

impl Subscriber {
    /// Owns `entry` until it is acknowledged, dead-lettered, or (shutdown, takeover, Redis
    /// lost it) left alone. `attempt` is Redis's delivery counter for it.
    pub(super) async fn deliver(
        self: Arc<Self>,
        mut entry: Entry,
        mut attempt: u64,
        shutdown: Shutdown,
    ) {
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
                    self.ack_after_return(entry.id).await;
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

    /// The backoff before delivery `attempt + 1` (`events::app::redelivery_backoff`).
    fn backoff(&self, attempt: u64) -> Duration {
        crate::events::app::redelivery_backoff(&self.sub, attempt)
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
        Ok(reply::redelivered(&reply))
    }

    /// XACKs `id` on a task of its own, so the delivery's slot is free at once (the next
    /// entry is read meanwhile); awaited in place when [`super::ACKS_IN_FLIGHT`] are out.
    /// At shutdown [`Subscriber::run`] waits for them; one that never lands leaves the
    /// entry pending, delivered again later: at least once either way.
    async fn ack_after_return(self: &Arc<Self>, id: String) {
        match self.acks.clone().try_acquire_owned() {
            Ok(permit) => {
                let this = self.clone();
                tokio::spawn(async move {
                    this.ack(&id).await;
                    drop(permit);
                });
            }
            // Too many out (Redis slow): this delivery waits for its own, as before.
            Err(_) => self.ack(&id).await,
        }
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
}
