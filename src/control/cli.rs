//! What the operator commands that talk to Redis directly (`meshlet registry ...`,
//! `meshlet events ...`) share: their error.

use redis::RedisError;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Redis refused or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// Bad arguments.
    #[error("{0}")]
    Input(String),
    /// RabbitMQ refused or is unreachable (`events.broker: amqp`).
    #[error("{0}")]
    Broker(String),
}
