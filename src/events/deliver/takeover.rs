//! Taking over (step 3 of `deliver`): entries idle longer than `2 × timeout` in another
//! consumer (its meshlet died) are claimed into this meshlet's free slots, and once a sweep
//! has gone through every pending entry, the group's dead consumers are removed.

use std::sync::Arc;

use redis::{RedisError, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::reply;
use super::Subscriber;
use crate::control::Shutdown;
use crate::events::envelope::Entry;
use crate::events::scripts::{FORGET_CONSUMERS, TAKE_OVER};

/// A consumer with nothing pending is forgotten once idle this many times the takeover idle
/// time (`2 × timeout`). From Redis 7.2, idle counts from the last read attempt and a live
/// meshlet reads at least every `timeout` (at most 5 s), so only dead ones get there. Up to
/// 7.0 it counts from the last read that returned entries, so a live meshlet on a quiet
/// stream is removed too: harmless, it has nothing pending (checked in the same step) and
/// Redis recreates it with the next entry its blocked read gets.
const FORGET_FACTOR: u32 = 10;

impl Subscriber {
    /// Takes over, into the free `slots`, entries idle too long in another consumer; after
    /// a sweep that went through every pending entry, forgets the dead consumers.
    pub(super) async fn sweep(
        self: &Arc<Self>,
        cursor: &mut String,
        slots: &mut OwnedSemaphorePermit,
        shutdown: &Shutdown,
    ) -> Result<(), RedisError> {
        let claimed = self.take_over(cursor, slots.num_permits()).await?;
        for (entry, deliveries) in claimed {
            tracing::info!(r#type = %self.sub.event_type, id = %entry.id, deliveries, "took over an entry abandoned by another consumer");
            self.spawn_delivery(entry, deliveries, slots, shutdown);
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
        Ok(())
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
        let Some((next, claimed)) = reply::claimed(&reply) else {
            return Ok(Vec::new());
        };
        *cursor = next;
        Ok(claimed)
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
}
