//! Events over Redis Streams (docs/events.md): the app POSTs an event to the local API, meshlet
//! stores it once (dedupe by event id, per type and publishing service), and every
//! subscribing service's meshlet delivers it to its app as an HTTP POST, at least once, with
//! retries and dead letters.
//!
//! Layout, one idea a file:
//! - [`envelope`]: the stored entry, the delivered envelope, input checks, reply parsing.
//! - [`scripts`]: the atomic Redis steps (publish, dead-letter, redeliver, takeover, replay).
//! - [`publish`]: single and pipelined batch publishing.
//! - [`deliver`]: a subscription's delivery, a folder: the read loop, the takeover of
//!   abandoned entries, one entry's delivery (retries, ack, dead letter), the gauges, and
//!   reading Redis's replies, a file each.
//! - [`app`]: the HTTP client to the app and the ack/retry/dead-letter verdict.
//! - [`dlq`]: listing and replaying dead letters.
//! - [`amqp`]: the same contract on RabbitMQ (`events.broker: amqp`), a folder of its own.
//! - [`api`]: the `/v1/events` routes of the local API.
//! - [`cli`]: `meshlet events ...` for operators.
//! - [`metrics`]: metric families and handles.
//! - [`error`]: request errors and their docs/errors.md responses.
//!
//! Redis keys (named by `crate::control::keys::Keys`): `{prefix}:events:{type}` (stream),
//! `{prefix}:evid:{type}:{source}:{event_id}` (dedupe, expires after `dedupe_window`),
//! `{prefix}:dlq:{type}` (dead letters).

pub mod amqp;
pub(crate) mod api;
pub(crate) mod app;
pub mod cli;
pub(crate) mod deliver;
pub(crate) mod dlq;
pub(crate) mod envelope;
pub(crate) mod error;
pub(crate) mod metrics;
pub(crate) mod publish;
pub mod scripts;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::config::{Config, EventBroker, Subscription};
use crate::control::keys::Keys;
use crate::control::redis::{Link, Target, REDIS_IO_TIMEOUT};
use crate::control::Context;
use crate::wire::AnswerBody;

pub use error::EventsError;

use amqp::AmqpEvents;
use app::Poster;
use deliver::Subscriber;
use metrics::EventMetrics;
use publish::Publisher;

/// The events module of one sidecar: publishing and DLQ routes for the local API, and a
/// delivery task per subscription.
pub struct Events {
    service: String,
    consumer: String,
    store: Store,
    metrics: Arc<EventMetrics>,
    subscriptions: Vec<Subscription>,
}

/// Where events live (`events.broker`).
enum Store {
    /// Redis Streams on the registry's Redis.
    Redis(Streams),
    /// RabbitMQ (docs/events.md, "RabbitMQ").
    Amqp(Arc<AmqpEvents>),
}

/// The Redis Streams side.
struct Streams {
    keys: Keys,
    link: Arc<Link>,
    publisher: Publisher,
    retention: Duration,
}

impl Events {
    /// Starts when `registry.redis` is set (any service may publish), or on RabbitMQ with
    /// `events.broker: amqp`; spawns one delivery task per `events.subscriptions` entry. The
    /// tasks stop when `context.shutdown` turns true.
    pub async fn start(context: &Context<'_>) -> Option<Arc<Events>> {
        if context.config.events.broker == EventBroker::Amqp {
            return Events::start_amqp(context).await;
        }
        let link = context.redis.clone()?;
        let target = link.target().clone();
        let config = context.config;
        let metrics = Arc::new(EventMetrics::register(context.metrics.registry()));
        let keys = Keys::new(config.registry.prefix.as_str());
        let retention = config.events.retention.get();
        let publisher = Publisher::new(
            link.clone(),
            keys.clone(),
            retention,
            config.events.dedupe_window.get(),
        )
        .replicated(config.events.replicas, metrics.unreplicated.clone());
        let streams = Streams {
            keys,
            link,
            publisher,
            retention,
        };
        for sub in &config.events.subscriptions {
            match streams.subscriber(config, sub, &target, context, &metrics) {
                Some(subscriber) => {
                    tokio::spawn(subscriber.run(context.shutdown.clone()));
                }
                None => tracing::error!(r#type = %sub.event_type, "subscription needs service.app"),
            }
        }
        Some(Arc::new(Events {
            service: config.service.name.to_string(),
            consumer: context.instance_id.to_owned(),
            store: Store::Redis(streams),
            metrics,
            subscriptions: config.events.subscriptions.clone(),
        }))
    }

    /// `events.broker: amqp`: RabbitMQ at `events.amqp.url` (checked at load), dedupe
    /// through the registry's Redis when there is one.
    async fn start_amqp(context: &Context<'_>) -> Option<Arc<Events>> {
        let config = context.config;
        let Some(url) = &config.events.amqp.url else {
            tracing::error!("events.broker: amqp without events.amqp.url; events are off");
            return None;
        };
        let metrics = Arc::new(EventMetrics::register(context.metrics.registry()));
        let amqp = AmqpEvents::start(context, url, &metrics).await;
        Some(Arc::new(Events {
            service: config.service.name.to_string(),
            consumer: context.instance_id.to_owned(),
            store: Store::Amqp(amqp),
            metrics,
            subscriptions: config.events.subscriptions.clone(),
        }))
    }

    /// Answers a local API request under `/v1/events`.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<AnswerBody> {
        api::handle(self, req).await
    }
}

impl Streams {
    fn subscriber(
        &self,
        config: &Config,
        sub: &Subscription,
        target: &Target,
        context: &Context<'_>,
        metrics: &EventMetrics,
    ) -> Option<Arc<Subscriber>> {
        let app = config.service.app.as_ref()?;
        let concurrency = sub.concurrency.get() as usize;
        let block = sub
            .timeout
            .get()
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        Some(Arc::new(Subscriber {
            sub: sub.clone(),
            stream: self.keys.event_stream(sub.event_type.as_str()),
            dlq: self.keys.dead_letters(sub.event_type.as_str()),
            group: config.service.name.to_string(),
            consumer: context.instance_id.to_owned(),
            cmd: self.link.clone(),
            reader: Link::with_response_timeout(target.clone(), block + REDIS_IO_TIMEOUT),
            app: Poster::new(&app.0, config.service.protocol, concurrency)?,
            metrics: metrics.subscription(sub.event_type.as_str()),
            retention: self.retention,
            slots: Arc::new(Semaphore::new(concurrency)),
            acks: Arc::new(Semaphore::new(deliver::ACKS_IN_FLIGHT)),
        }))
    }
}
