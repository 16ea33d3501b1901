//! Events on RabbitMQ (`events.broker: amqp`, docs/events.md "RabbitMQ"): the same HTTP
//! contract as Redis Streams (publish 202 / 200 duplicate / 503 `events_unavailable`,
//! deliveries POSTed with the same headers and verdicts, dead letters listed and replayed
//! by the same API and CLI) on an AMQP 0-9-1 broker.
//!
//! Layout, one idea a file:
//! - [`connection`]: the connection, made and re-made lazily with bounded times; outages
//!   logged once.
//! - [`topology`]: the exchange, queue and dead-letter queue names and their declaration.
//! - [`message`]: an event as a message (body = payload, fields as headers) and back.
//! - [`publish`]: publishing with publisher confirms; dedupe through the registry's Redis.
//! - [`consume`]: a subscription's consumer (competing consumers, prefetch, slots).
//! - [`deliver`]: one message's delivery: POST, ack, retry by requeue, dead letter.
//! - [`dlq`]: listing and replaying this service's dead letters.
//! - [`cli`]: `meshlet events ...` when the config says `broker: amqp`.

pub mod cli;
pub(crate) mod connection;
pub(crate) mod consume;
pub(crate) mod deliver;
pub(crate) mod dlq;
pub(crate) mod message;
pub(crate) mod publish;
pub(crate) mod topology;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};

use crate::config::{AmqpUrl, Config, Subscription};
use crate::control::keys::Keys;
use crate::control::Context;
use crate::events::app::Poster;
use crate::events::metrics::EventMetrics;

use connection::Broker;
use consume::{AmqpSubscriber, Held};
use publish::{AmqpPublisher, Dedupe};
use topology::Names;

/// Longest a start waits for the subscriptions' first declaration: a broker that is down
/// delays readiness by at most this, never blocks it.
const DECLARE_WAIT: Duration = Duration::from_secs(5);

/// The RabbitMQ side of one sidecar's events.
pub struct AmqpEvents {
    /// The broker.
    pub broker: Arc<Broker>,
    /// This service's names.
    pub names: Names,
    /// Publishing.
    pub publisher: AmqpPublisher,
}

impl AmqpEvents {
    /// Connects lazily to `url`, starts one consumer per subscription and returns once each
    /// has declared its queues and binding, or tried and failed (the broker down), or
    /// [`DECLARE_WAIT`] passed.
    pub async fn start(
        context: &Context<'_>,
        url: &AmqpUrl,
        metrics: &EventMetrics,
    ) -> Arc<AmqpEvents> {
        let config = context.config;
        let service = config.service.name.as_str();
        let names = Names::new(config.registry.prefix.as_str(), service);
        let broker = Arc::new(Broker::new(
            url.expose(),
            format!("meshlet {service} {}", context.instance_id),
            names.exchange(),
        ));
        let dedupe = context.redis.clone().map(|link| Dedupe {
            link,
            keys: Keys::new(config.registry.prefix.as_str()),
            window: config.events.dedupe_window.get(),
        });
        let publisher = AmqpPublisher::new(broker.clone(), names.exchange(), dedupe);
        let events = Arc::new(AmqpEvents {
            broker,
            names,
            publisher,
        });
        let mut declared = Vec::new();
        for sub in &config.events.subscriptions {
            let Some(subscriber) = events.subscriber(context, sub, metrics) else {
                continue;
            };
            let (tell, told) = oneshot::channel();
            tokio::spawn(subscriber.run(context.shutdown.clone(), tell));
            declared.push(told);
        }
        let all = futures_util::future::join_all(declared);
        if tokio::time::timeout(DECLARE_WAIT, all).await.is_err() {
            tracing::warn!("rabbitmq topology not declared within {DECLARE_WAIT:?}; going on");
        }
        events
    }

    fn subscriber(
        &self,
        context: &Context<'_>,
        sub: &Subscription,
        metrics: &EventMetrics,
    ) -> Option<Arc<AmqpSubscriber>> {
        let config: &Config = context.config;
        let Some(app) = config.service.app.as_ref() else {
            tracing::error!(r#type = %sub.event_type, "subscription needs service.app");
            return None;
        };
        let dlq = self.names.dead_letters(sub.event_type.as_str());
        if let Err(e) = topology::short(&dlq) {
            // Never declarable: retrying would only repeat the failure.
            tracing::error!(r#type = %sub.event_type, error = %e, "subscription not started");
            return None;
        }
        let concurrency = sub.concurrency.get() as usize;
        Some(Arc::new(AmqpSubscriber {
            sub: sub.clone(),
            names: self.names.clone(),
            group: config.service.name.to_string(),
            consumer: context.instance_id.to_owned(),
            broker: self.broker.clone(),
            app: Poster::new(&app.0, config.service.protocol, concurrency)?,
            metrics: metrics.subscription(sub.event_type.as_str()),
            prefetch: config.events.amqp.prefetch,
            slots: Arc::new(Semaphore::new(concurrency)),
            held: Held::default(),
        }))
    }
}
