//! `meshlet events ...` on RabbitMQ (docs/events.md, "RabbitMQ"): when the config names
//! `events.broker: amqp`, `publish` and `dlq list|replay` act on the broker as the config's
//! service (its dead-letter queues), printing the same JSON lines as on Redis Streams.
//! `tail` reads a stream without taking anything, which a queue cannot do: it is refused.
//! The CLI publishes without dedupe (that needs a running meshlet's Redis link).

use std::sync::Arc;

use super::connection::{AmqpError, Broker};
use super::dlq;
use super::publish::AmqpPublisher;
use super::topology::Names;
use crate::config::{Config, EventBroker};
use crate::control::cli::CliError;
use crate::events::cli::check_type;
use crate::events::envelope::NewEvent;

/// Where the commands act: the broker and the names of the config's service.
pub struct AmqpTarget {
    broker: Arc<Broker>,
    names: Names,
}

impl AmqpTarget {
    /// The broker of `config` when it says `events.broker: amqp`; `None` on Redis.
    pub fn of(config: &Config) -> Result<Option<AmqpTarget>, CliError> {
        if config.events.broker != EventBroker::Amqp {
            return Ok(None);
        }
        let Some(url) = &config.events.amqp.url else {
            return Err(CliError::Input("events.amqp.url is not set".to_owned()));
        };
        let service = config.service.name.as_str();
        let names = Names::new(config.registry.prefix.as_str(), service);
        let broker = Broker::new(
            url.expose(),
            format!("meshlet cli {service}"),
            names.exchange(),
        );
        Ok(Some(AmqpTarget {
            broker: Arc::new(broker),
            names,
        }))
    }
}

fn broker_error(e: AmqpError) -> CliError {
    CliError::Broker(e.to_string())
}

/// `events publish TYPE JSON [--id ID] [--version N] [--source S]`: prints
/// `{"event_id","duplicate"}` once the broker confirmed the message.
pub async fn publish(
    target: &AmqpTarget,
    event_type: &str,
    json: &str,
    event_id: Option<String>,
    version: u32,
    source: &str,
) -> Result<(), CliError> {
    crate::events::cli::check_publish(event_type, json, event_id.as_deref(), source)?;
    let event = NewEvent::new(
        event_type,
        event_id,
        source,
        version,
        json.to_owned(),
        String::new(),
    );
    let publisher = AmqpPublisher::new(target.broker.clone(), target.names.exchange(), None);
    let published = publisher.publish(&event).await.map_err(broker_error)?;
    println!("{}", serde_json::json!(published));
    Ok(())
}

/// `events dlq list TYPE [--after ID] [--count N]`: this service's dead letters.
pub async fn dlq_list(
    target: &AmqpTarget,
    event_type: &str,
    after: Option<&str>,
    count: usize,
) -> Result<(), CliError> {
    check_type(event_type)?;
    let page = dlq::list(&target.broker, &target.names, event_type, after, count)
        .await
        .map_err(broker_error)?;
    for entry in &page.entries {
        println!("{}", entry.to_json());
    }
    if let Some(next) = page.next {
        eprintln!("more: --after {next}");
    }
    Ok(())
}

/// `events dlq replay TYPE [--id ID ...]`: this service's dead letters back on its queue.
pub async fn dlq_replay(
    target: &AmqpTarget,
    event_type: &str,
    ids: &[String],
) -> Result<(), CliError> {
    check_type(event_type)?;
    if let Some(bad) = ids.iter().find(|id| !dlq::valid_dlq_id(id)) {
        return Err(CliError::Input(format!(
            "`{bad}` is not a dead letter's id"
        )));
    }
    let selected = (!ids.is_empty()).then_some(ids);
    let report = dlq::replay(&target.broker, &target.names, event_type, selected)
        .await
        .map_err(broker_error)?;
    for r in &report.replayed {
        println!("{}", serde_json::json!(r));
    }
    for id in &report.missing {
        eprintln!("not in the dead-letter queue: {id}");
    }
    eprintln!(
        "replayed {} dead letter(s) of {event_type}",
        report.replayed.len()
    );
    Ok(())
}
