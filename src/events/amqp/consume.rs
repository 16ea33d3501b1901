//! One subscription's consumer on RabbitMQ (docs/events.md, "RabbitMQ"): a channel of its
//! own with `basic.qos(prefetch)`, the queue, binding and dead-letter queue declared, then
//! `basic.consume` on `{prefix}.{service}.{type}` (the service's meshlets compete for its
//! messages). Each message is handed, once a delivery slot (`concurrency`) is free, to a
//! task that owns it until it is acked, dead-lettered or requeued ([`super::deliver`]).
//! Nothing is acked before the app answered, so the messages a dead meshlet held go back to
//! the queue (the broker's own rule for a closed channel).
//!
//! A lost connection ends the consumer; it is made again with backoff, one log line per
//! outage. At shutdown the consumer is cancelled, POSTs in flight finish (bounded by
//! `timeout`), and closing the channel returns everything not acked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::connection::{bounded, AmqpError, Broker, BrokerOutage};
use super::topology::{declare_subscription, short, Names};
use crate::config::Subscription;
use crate::control::redis::Backoff;
use crate::control::Shutdown;
use crate::events::app::Poster;
use crate::events::envelope::now_ms;
use crate::events::metrics::SubscriptionMetrics;

/// How often the lag gauge is read (the queue's ready messages).
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Everything one subscription's tasks share.
pub struct AmqpSubscriber {
    /// The subscription as configured.
    pub sub: Subscription,
    /// Queue, exchange and DLQ names.
    pub names: Names,
    /// The subscribing service (the `group` of a dead letter).
    pub group: String,
    /// Consumer tag prefix: this meshlet's instance id.
    pub consumer: String,
    /// The broker.
    pub broker: Arc<Broker>,
    /// The app.
    pub app: Poster,
    /// Metric handles (the same families as on Redis Streams).
    pub metrics: SubscriptionMetrics,
    /// `events.amqp.prefetch`.
    pub prefetch: u16,
    /// One permit per delivery in flight (`concurrency`).
    pub slots: Arc<Semaphore>,
    /// Messages this meshlet holds unacked, with their publish time (ms), for the gauges.
    pub held: Held,
}

/// Messages held unacked by this meshlet.
#[derive(Default)]
pub struct Held {
    next: AtomicU64,
    published_ms: Mutex<HashMap<u64, u64>>,
}

/// Removes its message from [`Held`] when dropped.
pub struct HeldGuard<'a> {
    held: &'a Held,
    key: u64,
}

impl Held {
    /// Records a message published at `published_ms` until the guard is dropped.
    pub fn hold(&self, published_ms: u64) -> HeldGuard<'_> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.map().insert(key, published_ms);
        HeldGuard { held: self, key }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.published_ms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many, and the oldest one's publish time.
    fn summary(&self) -> (usize, Option<u64>) {
        let map = self.map();
        (map.len(), map.values().min().copied())
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.held.map().remove(&self.key);
    }
}

impl AmqpSubscriber {
    /// Consumes until `shutdown`; `declared` is told once the first attempt to declare the
    /// topology is over, declared or not (readiness waits for it, never for the broker).
    pub async fn run(self: Arc<Self>, shutdown: Shutdown, declared: oneshot::Sender<()>) {
        tokio::spawn(self.clone().refresh_gauges(shutdown.clone()));
        let mut declared = Some(declared);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut outage = BrokerOutage::new(format!("events subscription {}", self.sub.event_type));
        loop {
            let opened = self.open().await;
            if let Some(tell) = declared.take() {
                let _ = tell.send(());
            }
            match opened {
                Ok((channel, consumer)) => {
                    outage.recovered();
                    backoff.reset();
                    tracing::info!(r#type = %self.sub.event_type, queue = %self.names.queue(self.sub.event_type.as_str()), "consuming from rabbitmq");
                    let lost = self.consume(consumer, &shutdown).await;
                    if shutdown.is_started() {
                        self.finish(&channel).await;
                        return;
                    }
                    outage.failed(&lost);
                }
                Err(e) => outage.failed(&e),
            }
            if !shutdown.sleep(backoff.next_delay()).await {
                return;
            }
        }
    }

    /// A channel with the topology declared and the consumer started.
    async fn open(&self) -> Result<(Channel, Consumer), AmqpError> {
        let event_type = self.sub.event_type.as_str();
        let channel = self.broker.channel().await?;
        bounded(channel.basic_qos(self.prefetch, BasicQosOptions::default())).await?;
        tokio::time::timeout(
            super::connection::AMQP_IO_TIMEOUT,
            declare_subscription(&channel, &self.names, event_type),
        )
        .await
        .map_err(|_| AmqpError::Timeout(super::connection::AMQP_IO_TIMEOUT))??;
        let tag = format!("{}.{event_type}", self.consumer);
        let consumer = bounded(channel.basic_consume(
            short(&self.names.queue(event_type))?,
            short(&tag)?,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await?;
        Ok((channel, consumer))
    }

    /// Hands messages to delivery tasks until the consumer ends (returned as the reason)
    /// or shutdown begins.
    async fn consume(self: &Arc<Self>, mut consumer: Consumer, shutdown: &Shutdown) -> String {
        loop {
            let slot = tokio::select! {
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return "delivery slots closed".to_owned(),
                },
                () = shutdown.wait() => return "shutdown".to_owned(),
            };
            let next = tokio::select! {
                next = consumer.next() => next,
                () = shutdown.wait() => return "shutdown".to_owned(),
            };
            match next {
                Some(Ok(delivery)) => self.spawn_delivery(delivery, slot, shutdown),
                Some(Err(e)) => return e.to_string(),
                None => return "consumer cancelled by the broker".to_owned(),
            }
        }
    }

    fn spawn_delivery(
        self: &Arc<Self>,
        delivery: Delivery,
        slot: OwnedSemaphorePermit,
        shutdown: &Shutdown,
    ) {
        let this = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            this.deliver(delivery, shutdown).await;
            drop(slot);
        });
    }

    /// Shutdown: no new messages; POSTs in flight finish and are acked (bounded by
    /// `timeout`); closing the channel returns every message not acked to the queue.
    async fn finish(&self, channel: &Channel) {
        let tag = format!("{}.{}", self.consumer, self.sub.event_type);
        let _ = bounded(channel.basic_cancel(tag.into(), BasicCancelOptions::default())).await;
        let all = self.sub.concurrency.get();
        let grace = self.sub.timeout.get() + Duration::from_millis(200);
        let _ = tokio::time::timeout(grace, self.slots.acquire_many(all)).await;
        let _ = bounded(channel.close(200, "meshlet shutting down".into())).await;
    }

    /// Lag (the queue's ready messages, read every second on a channel of its own while
    /// the broker is reachable), pending (messages this meshlet holds unacked) and the
    /// oldest of those.
    async fn refresh_gauges(self: Arc<Self>, shutdown: Shutdown) {
        let mut channel: Option<Channel> = None;
        loop {
            if !shutdown.sleep(GAUGE_INTERVAL).await {
                return;
            }
            let (pending, oldest) = self.held.summary();
            self.metrics.pending.set(pending as i64);
            let age = oldest.map_or(0.0, |ms| now_ms().saturating_sub(ms) as f64 / 1000.0);
            self.metrics.oldest_pending.set(age);
            if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                channel = None;
                if let Some(session) = self.broker.current() {
                    channel = bounded(session.conn.create_channel()).await.ok();
                }
            }
            let Some(ch) = &channel else { continue };
            let Ok(queue) = short(&self.names.queue(self.sub.event_type.as_str())) else {
                return;
            };
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match bounded(ch.queue_declare(queue, passive, FieldTable::default())).await {
                Ok(q) => self.metrics.lag.set(i64::from(q.message_count())),
                Err(_) => channel = None,
            }
        }
    }
}
