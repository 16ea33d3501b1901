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
//!    nothing pending and were not seen for `takeover::FORGET_FACTOR` × that idle time are
//!    removed (dead meshlets' consumers would otherwise stay in the group forever).
//! 4. **read**: XREADGROUP `>` for the free slots, blocking until the next takeover is due.
//! 5. **deliver** (a task per entry): POST; 2xx → XACK; 4xx but 408/429 → dead letter
//!    `rejected`; otherwise wait a doubling, jittered backoff (keeping the entry from
//!    looking abandoned), XCLAIM it again, which bumps Redis's delivery counter: that
//!    counter is the attempt number, so it survives restarts; past `max_attempts` → dead
//!    letter `exhausted`.
//!
//! Files, one step a file: `read_loop` (steps 1, 2 and 4), `takeover` (3), `entry` (5),
//! `gauges` (the lag and pending gauges) and `reply` (reading Redis's replies).

mod entry;
mod gauges;
mod read_loop;
mod reply;
mod takeover;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::app::Poster;
use super::metrics::SubscriptionMetrics;
use crate::config::Subscription;
use crate::control::redis::Link;
use crate::control::Shutdown;

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
    pub app: Poster,
    /// Metric handles.
    pub metrics: SubscriptionMetrics,
    /// Trimming of the dead-letter stream.
    pub retention: Duration,
    /// One permit per delivery in flight.
    pub slots: Arc<Semaphore>,
    /// One permit per XACK in flight ([`ACKS_IN_FLIGHT`]); shutdown waits for them all.
    pub acks: Arc<Semaphore>,
}

/// XACKs sent after their delivery slot was freed, at most: an entry the app accepted frees
/// its slot at once, so the next entry is read while the XACK is on its way (one Redis round
/// trip less between two deliveries; docs/events.md, "Performance"). Beyond this many the
/// XACK is awaited in the slot again.
pub const ACKS_IN_FLIGHT: usize = 4096;

impl Subscriber {
    /// Runs until `shutdown` turns true: stops reading, lets in-flight POSTs finish (bounded
    /// by `timeout`), leaves entries waiting out a backoff pending for later.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let gauges = tokio::spawn(self.clone().refresh_gauges(shutdown.clone()));
        self.clone().read_loop(shutdown).await;
        let all = self.sub.concurrency.get();
        let drain = self.sub.timeout.get() + Duration::from_secs(1);
        let _ = tokio::time::timeout(drain, self.slots.acquire_many(all)).await;
        // Acknowledgements still on their way (a delivery frees its slot before its XACK).
        let acks = u32::try_from(ACKS_IN_FLIGHT).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.acks.acquire_many(acks)).await;
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
}
