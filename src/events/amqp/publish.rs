//! Publishing to RabbitMQ (docs/events.md, "RabbitMQ"): each event a persistent message to
//! `{prefix}.events` with its type as routing key, answered only after the broker's
//! publisher confirm. Dedupe inside `dedupe_window` goes through the registry's Redis when
//! there is one: the dedupe key (the same `{prefix}:evid:{type}:{source}:{id}` as on Redis
//! Streams) is read before publishing and written after the confirm. Without Redis, or
//! while it is unreachable, there is no dedupe (at least once: handlers are idempotent).

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::PublisherConfirm;

use super::connection::{AmqpError, Broker, AMQP_IO_TIMEOUT};
use super::message::event_properties;
use super::topology::short;
use crate::control::keys::Keys;
use crate::control::redis::Link;
use crate::events::envelope::NewEvent;
use crate::events::publish::Published;

/// The dedupe keys in the registry's Redis.
pub struct Dedupe {
    /// The registry's Redis.
    pub link: Arc<Link>,
    /// Key names.
    pub keys: Keys,
    /// How long an id is remembered.
    pub window: Duration,
}

/// Publishes events to the exchange.
pub struct AmqpPublisher {
    broker: Arc<Broker>,
    exchange: String,
    dedupe: Option<Dedupe>,
}

impl AmqpPublisher {
    /// A publisher to `exchange` on `broker`, deduping through `dedupe` when given.
    pub fn new(broker: Arc<Broker>, exchange: String, dedupe: Option<Dedupe>) -> Self {
        AmqpPublisher {
            broker,
            exchange,
            dedupe,
        }
    }

    /// Publishes one event; a repeat inside the dedupe window is answered as a duplicate
    /// and not published.
    pub async fn publish(&self, event: &NewEvent) -> Result<Published, AmqpError> {
        let mut results = self.publish_batch(std::slice::from_ref(event)).await?;
        results.pop().unwrap_or(Err(AmqpError::Nacked))
    }

    /// Publishes many events (sent back to back, then every confirm awaited): one result
    /// per event; the outer error is the broker unreachable (nothing published).
    pub async fn publish_batch(
        &self,
        events: &[NewEvent],
    ) -> Result<Vec<Result<Published, AmqpError>>, AmqpError> {
        let seen = self.seen(events).await;
        let session = self.broker.session().await?;
        let exchange = short(&self.exchange)?;
        let mut pending: Vec<Option<Result<PublisherConfirm, lapin::Error>>> =
            Vec::with_capacity(events.len());
        let mut results: Vec<Result<Published, AmqpError>> = Vec::with_capacity(events.len());
        for (event, duplicate) in events.iter().zip(&seen) {
            if *duplicate {
                pending.push(None);
                continue;
            }
            let sent = session
                .publish
                .basic_publish(
                    exchange.clone(),
                    event.event_type.as_str().into(),
                    BasicPublishOptions::default(),
                    event.payload.as_bytes(),
                    event_properties(event),
                )
                .await;
            pending.push(Some(sent));
        }
        let mut confirmed = Vec::new();
        for ((event, duplicate), sent) in events.iter().zip(&seen).zip(pending) {
            let outcome = match sent {
                None => Ok(()),
                Some(Err(e)) => Err(AmqpError::Broker(e)),
                Some(Ok(confirm)) => match tokio::time::timeout(AMQP_IO_TIMEOUT, confirm).await {
                    Err(_) => Err(AmqpError::Timeout(AMQP_IO_TIMEOUT)),
                    Ok(Err(e)) => Err(AmqpError::Broker(e)),
                    Ok(Ok(c)) if c.is_nack() => Err(AmqpError::Nacked),
                    Ok(Ok(_)) => {
                        confirmed.push(event);
                        Ok(())
                    }
                },
            };
            results.push(outcome.map(|()| Published {
                event_id: event.event_id.clone(),
                stream_id: None,
                duplicate: *duplicate,
            }));
        }
        self.remember(&confirmed).await;
        Ok(results)
    }

    /// Which events were already published inside the window. Redis unreachable: none
    /// (publishing goes on without dedupe rather than failing on a store it does not need).
    async fn seen(&self, events: &[NewEvent]) -> Vec<bool> {
        let Some(dedupe) = &self.dedupe else {
            return vec![false; events.len()];
        };
        let mut pipe = redis::pipe();
        for event in events {
            pipe.exists(dedupe_key(dedupe, event));
        }
        let answer = async {
            let mut conn = dedupe.link.get().await?;
            pipe.query_async::<Vec<bool>>(&mut conn).await
        }
        .await;
        match answer {
            Ok(seen) if seen.len() == events.len() => seen,
            Ok(_) => vec![false; events.len()],
            Err(e) => {
                dedupe.link.failed(&e);
                tracing::warn!(error = %e, "redis unreachable: publishing to rabbitmq without dedupe");
                vec![false; events.len()]
            }
        }
    }

    /// Writes the dedupe keys of confirmed events (after the confirm: a key never names
    /// an event the broker does not hold).
    async fn remember(&self, events: &[&NewEvent]) {
        let Some(dedupe) = &self.dedupe else {
            return;
        };
        if events.is_empty() {
            return;
        }
        let window = dedupe.window.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        for event in events {
            pipe.cmd("SET")
                .arg(dedupe_key(dedupe, event))
                .arg(&event.timestamp)
                .arg("PX")
                .arg(window)
                .ignore();
        }
        let written = async {
            let mut conn = dedupe.link.get().await?;
            pipe.query_async::<()>(&mut conn).await
        }
        .await;
        if let Err(e) = written {
            dedupe.link.failed(&e);
            tracing::warn!(error = %e, events = events.len(), "published to rabbitmq but could not write the dedupe keys");
        }
    }
}

fn dedupe_key(dedupe: &Dedupe, event: &NewEvent) -> String {
    dedupe
        .keys
        .event_dedupe(&event.event_type, &event.source, &event.event_id)
}
