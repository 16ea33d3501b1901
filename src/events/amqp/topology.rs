//! The RabbitMQ topology (docs/events.md, "RabbitMQ"): its names and their declaration.
//!
//! - `{prefix}.events`: one durable topic exchange every event is published to, with the
//!   event type as routing key.
//! - `{prefix}.{service}.{type}`: per subscribing service and type, a durable quorum queue
//!   bound to the exchange with the type as binding key; the service's meshlets are its
//!   competing consumers.
//! - `{prefix}.{service}.{type}.dlq`: that service's dead letters of the type (a quorum
//!   queue too, reached through the default exchange only).
//!
//! Declarations are idempotent; queue arguments never depend on a subscription's settings,
//! so changing `max_attempts` or `concurrency` never makes a redeclaration fail.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::connection::AmqpError;

/// Longest AMQP name (a short string).
const MAX_NAME: usize = 255;

/// The names of one service's topology.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
    service: String,
}

impl Names {
    /// Names under `registry.prefix` for `service`.
    pub fn new(prefix: &str, service: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
            service: service.to_owned(),
        }
    }

    /// `{prefix}.events`.
    pub fn exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// `{prefix}.{service}.{type}`.
    pub fn queue(&self, event_type: &str) -> String {
        format!("{}.{}.{event_type}", self.prefix, self.service)
    }

    /// `{prefix}.{service}.{type}.dlq`.
    pub fn dead_letters(&self, event_type: &str) -> String {
        format!("{}.dlq", self.queue(event_type))
    }
}

/// `name` as an AMQP short string, refused when too long (a long prefix, service and type
/// together can pass 255 bytes).
pub fn short(name: &str) -> Result<ShortString, AmqpError> {
    if name.len() > MAX_NAME {
        return Err(AmqpError::NameTooLong(name.to_owned()));
    }
    Ok(ShortString::from(name))
}

/// Declares the durable topic exchange.
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<(), lapin::Error> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
}

/// Declares a durable quorum queue.
pub async fn declare_queue(channel: &Channel, queue: ShortString) -> Result<(), lapin::Error> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(queue, QueueDeclareOptions::durable(), arguments)
        .await
        .map(|_| ())
}

/// Declares a subscription's queue, its binding and its dead-letter queue.
pub async fn declare_subscription(
    channel: &Channel,
    names: &Names,
    event_type: &str,
) -> Result<(), AmqpError> {
    let exchange = names.exchange();
    let queue = short(&names.queue(event_type))?;
    let dlq = short(&names.dead_letters(event_type))?;
    declare_exchange(channel, &exchange).await?;
    declare_queue(channel, queue.clone()).await?;
    declare_queue(channel, dlq).await?;
    channel
        .queue_bind(
            queue,
            exchange.into(),
            event_type.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let names = Names::new("mesh", "risk");
        assert_eq!(names.exchange(), "mesh.events");
        assert_eq!(names.queue("trade.executed"), "mesh.risk.trade.executed");
        assert_eq!(
            names.dead_letters("trade.executed"),
            "mesh.risk.trade.executed.dlq"
        );
        assert!(short(&"a".repeat(256)).is_err());
        assert!(short(&"a".repeat(255)).is_ok());
    }
}
