//! One message's delivery on RabbitMQ (docs/events.md, "RabbitMQ"), by the task that owns
//! it: POST it to the app with the same request and the same verdicts as on Redis Streams
//! ([`crate::events::app`]); 2xx → ack; a rejection, or no attempts left → a dead letter
//! (published with a confirm, then the message acked); otherwise wait the doubling,
//! jittered backoff holding the message, then requeue it (`basic.nack requeue`), which
//! bumps the quorum queue's delivery count: `x-event-attempt` is that count plus one, so it
//! survives meshlet restarts. A dead-letter publish that fails requeues the message: it is
//! delivered again later (at least once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};

use super::connection::{AmqpError, AMQP_IO_TIMEOUT};
use super::consume::AmqpSubscriber;
use super::message::{self, DLQ_ID};
use super::topology::short;
use crate::control::Shutdown;
use crate::events::app::{Answer, Delivery as AppDelivery, Verdict};
use crate::events::envelope::{child_traceparent, now_rfc3339, Entry};

impl AmqpSubscriber {
    /// Owns `delivery` until it is acked, dead-lettered or requeued.
    pub(super) async fn deliver(self: Arc<Self>, delivery: Delivery, shutdown: Shutdown) {
        let tag = delivery.delivery_tag.to_string();
        let entry = message::entry(
            tag,
            &delivery.properties,
            delivery.routing_key.as_str(),
            &delivery.data,
        );
        let published_ms = humantime::parse_rfc3339(entry.get("timestamp"))
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(crate::events::envelope::now_ms, |d| d.as_millis() as u64);
        let _held = self.held.hold(published_ms);
        let attempt = message::delivery_count(&delivery.properties) + 1;
        let max = u64::from(self.sub.max_attempts.get());
        if attempt > max {
            // Returned to the queue after its last delivery (its meshlet died meanwhile).
            self.dead_letter(&delivery, &entry, "exhausted", attempt - 1, None)
                .await;
            return;
        }
        let answer = self.post(&entry, attempt).await;
        match answer.verdict() {
            Verdict::Ack => {
                self.metrics.ok.inc();
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::warn!(r#type = %self.sub.event_type, event_id = entry.get("event_id"), error = %e, "ack failed; the broker delivers the event again");
                }
            }
            Verdict::Reject => {
                self.dead_letter(&delivery, &entry, "rejected", attempt, Some(answer))
                    .await;
            }
            Verdict::Retry if attempt >= max => {
                self.dead_letter(&delivery, &entry, "exhausted", attempt, Some(answer))
                    .await;
            }
            Verdict::Retry => {
                self.metrics.retry.inc();
                tracing::debug!(r#type = %self.sub.event_type, event_id = entry.get("event_id"), attempt, answer = %answer.label(), "delivery failed; will retry");
                // At shutdown the message is requeued at once: another meshlet takes it.
                let _ = shutdown.sleep(self.backoff(attempt)).await;
                requeue(&delivery).await;
            }
        }
    }

    async fn post(&self, entry: &Entry, attempt: u64) -> Answer {
        let started = Instant::now();
        let answer = self
            .app
            .post(
                AppDelivery {
                    path: &self.sub.path,
                    envelope: entry.envelope(),
                    event_id: entry.get("event_id"),
                    event_type: self.sub.event_type.as_str(),
                    attempt,
                    traceparent: child_traceparent(entry.get("traceparent")),
                },
                self.sub.timeout.get(),
            )
            .await;
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    /// The backoff before delivery `attempt + 1` (the same as on Redis Streams).
    fn backoff(&self, attempt: u64) -> Duration {
        crate::events::app::redelivery_backoff(&self.sub, attempt)
    }

    /// Publishes the dead letter to `{prefix}.{service}.{type}.dlq` (confirmed), then acks
    /// the message; a failed publish requeues it instead.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        entry: &Entry,
        reason: &str,
        attempts: u64,
        last: Option<Answer>,
    ) {
        self.metrics.dead_letter.inc();
        let last_status = last.map(Answer::label).unwrap_or_default();
        let attempts_text = attempts.to_string();
        let failed_at = now_rfc3339();
        let dlq_id = uuid::Uuid::now_v7().to_string();
        let extra = [
            ("group", self.group.as_str()),
            ("reason", reason),
            ("attempts", attempts_text.as_str()),
            ("last_status", last_status.as_str()),
            ("failed_at", failed_at.as_str()),
            (DLQ_ID, dlq_id.as_str()),
        ];
        let mut headers = message::event_headers(entry);
        headers.extend(extra);
        let props = message::properties(&headers);
        let payload = entry.get("payload").as_bytes();
        let dlq = self.names.dead_letters(self.sub.event_type.as_str());
        match self.publish_to(&dlq, payload, props).await {
            Ok(()) => {
                match reason {
                    "rejected" => self.metrics.rejected.inc(),
                    _ => self.metrics.exhausted.inc(),
                }
                tracing::warn!(r#type = %self.sub.event_type, event_id = entry.get("event_id"), reason, attempts, last_status, dlq_id, "event dead-lettered");
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::warn!(r#type = %self.sub.event_type, error = %e, "ack after dead-lettering failed; the event may be dead-lettered twice");
                }
            }
            Err(e) => {
                tracing::warn!(r#type = %self.sub.event_type, event_id = entry.get("event_id"), error = %e, "dead-letter publish failed; the event is requeued and will be delivered again");
                requeue(delivery).await;
            }
        }
    }

    /// Publishes `payload` to `queue` through the default exchange, confirmed.
    async fn publish_to(
        &self,
        queue: &str,
        payload: &[u8],
        props: lapin::BasicProperties,
    ) -> Result<(), AmqpError> {
        let session = self.broker.session().await?;
        let confirm = session
            .publish
            .basic_publish(
                "".into(),
                short(queue)?,
                BasicPublishOptions::default(),
                payload,
                props,
            )
            .await?;
        match tokio::time::timeout(AMQP_IO_TIMEOUT, confirm).await {
            Err(_) => Err(AmqpError::Timeout(AMQP_IO_TIMEOUT)),
            Ok(Err(e)) => Err(AmqpError::Broker(e)),
            Ok(Ok(c)) if c.is_nack() => Err(AmqpError::Nacked),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// Returns the message to the queue for another delivery (the quorum queue counts it). A
/// channel already gone has returned it by itself.
async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.nack(options).await {
        tracing::debug!(error = %e, "requeue failed; the closed channel returned the message");
    }
}
