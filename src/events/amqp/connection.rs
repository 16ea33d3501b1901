//! The connection to RabbitMQ (docs/events.md, "RabbitMQ"): one AMQP connection per meshlet,
//! made lazily with a bounded connect time and replaced on the next use once it died. It
//! carries one channel in confirm mode for every publish (events, dead letters) and a
//! channel of its own for each subscription and each operator request. Loops that need the
//! broker back retry with [`Backoff`](crate::control::redis::Backoff) and log an outage once
//! when it starts and once when it ends ([`BrokerOutage`]), like the Redis paths.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};

use super::topology;

/// How long a connect, a declaration or a publisher confirm may take before it counts as
/// failed: a broker that is down never hangs a publish or a task.
pub const AMQP_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a broker step failed.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The client or the broker reported an error (connection refused, channel closed...).
    #[error("rabbitmq: {0}")]
    Broker(#[from] lapin::Error),
    /// No answer in time.
    #[error("rabbitmq did not answer within {0:?}")]
    Timeout(Duration),
    /// The broker refused the message (a negative publisher confirm).
    #[error("rabbitmq refused the message (negative publisher confirm)")]
    Nacked,
    /// A name longer than AMQP allows (255 bytes).
    #[error("`{0}` is longer than the 255 bytes AMQP allows in a name")]
    NameTooLong(String),
}

/// Runs a broker step within [`AMQP_IO_TIMEOUT`].
pub async fn bounded<T, F>(step: F) -> Result<T, AmqpError>
where
    F: Future<Output = Result<T, lapin::Error>>,
{
    tokio::time::timeout(AMQP_IO_TIMEOUT, step)
        .await
        .map_err(|_| AmqpError::Timeout(AMQP_IO_TIMEOUT))?
        .map_err(AmqpError::Broker)
}

/// One live connection and its publishing channel (confirm mode, exchange declared).
pub struct Session {
    /// The connection.
    pub conn: Connection,
    /// Publishes with publisher confirms.
    pub publish: Channel,
}

impl Session {
    fn alive(&self) -> bool {
        self.conn.status().connected() && self.publish.status().connected()
    }
}

/// The broker at `events.amqp.url`.
pub struct Broker {
    url: String,
    /// Shown in the broker's connection list: service and instance.
    name: String,
    exchange: String,
    /// Serializes (re)connects: one connect for many waiting callers, not a stampede.
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl Broker {
    /// A broker at `url` (no I/O yet); `exchange` is declared on every new connection so
    /// publishing never meets a missing exchange.
    pub fn new(url: &str, name: String, exchange: String) -> Broker {
        Broker {
            url: url.to_owned(),
            name,
            exchange,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The live session, connecting first when there is none or it died.
    pub async fn session(&self) -> Result<Arc<Session>, AmqpError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref().filter(|s| s.alive()) {
            return Ok(session.clone());
        }
        *current = None;
        let session = Arc::new(
            tokio::time::timeout(AMQP_IO_TIMEOUT * 2, self.open())
                .await
                .map_err(|_| AmqpError::Timeout(AMQP_IO_TIMEOUT * 2))??,
        );
        *current = Some(session.clone());
        Ok(session)
    }

    /// The live session if there is one, without connecting (for gauges).
    pub fn current(&self) -> Option<Arc<Session>> {
        let current = self.current.try_lock().ok()?;
        current.as_ref().filter(|s| s.alive()).cloned()
    }

    /// A new channel on the live connection.
    pub async fn channel(&self) -> Result<Channel, AmqpError> {
        let session = self.session().await?;
        bounded(session.conn.create_channel()).await
    }

    async fn open(&self) -> Result<Session, AmqpError> {
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.clone().into());
        let conn = bounded(Connection::connect(&self.url, properties)).await?;
        let publish = bounded(conn.create_channel()).await?;
        bounded(publish.confirm_select(ConfirmSelectOptions::default())).await?;
        bounded(topology::declare_exchange(&publish, &self.exchange)).await?;
        Ok(Session { conn, publish })
    }
}

/// Logs a broker outage once when it starts and once when it ends, not once per retry.
#[derive(Debug)]
pub struct BrokerOutage {
    what: String,
    since: Option<Instant>,
}

impl BrokerOutage {
    /// A tracker for `what` (e.g. "events subscription trade.executed").
    pub fn new(what: String) -> Self {
        BrokerOutage { what, since: None }
    }

    /// Records a failure; logs only the first of an outage.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(what = %self.what, %error, "rabbitmq unreachable; retrying with backoff");
        }
    }

    /// Records a success; logs the end of an outage.
    pub fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(what = %self.what, down_for = ?since.elapsed(), "rabbitmq reachable again");
        }
    }
}
