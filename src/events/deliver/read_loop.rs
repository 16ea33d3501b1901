//! The subscription's read loop (steps 1, 2 and 4 of `deliver`): creates the consumer group,
//! waits for free delivery slots, takes over abandoned entries when due (`takeover`), reads
//! new entries for the free slots and hands each to a delivery task of its own (`entry`). A
//! Redis outage, or a group lost with a Redis restart, pauses it with backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::Subscriber;
use crate::config::StreamStart;
use crate::control::redis::{Backoff, Outage};
use crate::control::Shutdown;
use crate::events::envelope::{parse_read_reply, Entry};
use crate::events::scripts::{is_busygroup, is_nogroup};

impl Subscriber {
    pub(super) async fn read_loop(self: Arc<Self>, shutdown: Shutdown) {
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
            let Some(mut slots) = self.free_slots(&shutdown).await else {
                return;
            };
            let mut failure = None;
            if Instant::now() >= next_claim {
                next_claim = Instant::now() + self.claim_interval();
                failure = self.sweep(&mut cursor, &mut slots, &shutdown).await.err();
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
                Some(e) => {
                    if self.turn_failed(&e, &mut outage) {
                        group_ready = false;
                        start_at = "0";
                    }
                    if !shutdown.sleep(pause.next_delay()).await {
                        return;
                    }
                }
            }
        }
    }

    /// Waits for a free delivery slot and takes every other free one with it; `None` at
    /// shutdown.
    async fn free_slots(&self, shutdown: &Shutdown) -> Option<OwnedSemaphorePermit> {
        let first = tokio::select! {
            p = self.slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return None,
            },
            () = shutdown.wait() => return None,
        };
        let mut slots = first;
        while let Ok(more) = self.slots.clone().try_acquire_owned() {
            slots.merge(more);
        }
        Some(slots)
    }

    /// Notes a turn that failed with `e`; returns whether the consumer group is gone
    /// (NOGROUP: Redis restarted empty), so that it is created again, at `0`.
    fn turn_failed(&self, e: &RedisError, outage: &mut Outage) -> bool {
        let group_gone = is_nogroup(e);
        if group_gone {
            if !outage.is_down() {
                tracing::warn!(r#type = %self.sub.event_type, group = %self.group, "consumer group gone (Redis restarted?); recreating it at 0");
            }
        } else {
            self.reader.failed(e);
            self.cmd.failed(e);
        }
        outage.failed(e);
        group_gone
    }

    pub(super) fn spawn_delivery(
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
}
