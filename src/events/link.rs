//! A Redis connection that comes back: one multiplexed connection shared by callers,
//! replaced after a connection-level failure (a Redis restart kills it for good), with
//! bounded connect and response times so no caller waits on a dead Redis.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError};

use crate::registry::connection::REDIS_IO_TIMEOUT;

/// A lazily (re)connected multiplexed connection.
pub struct Link {
    client: Client,
    /// Longest wait for one reply; blocking reads need more than [`REDIS_IO_TIMEOUT`].
    response_timeout: Duration,
    current: Mutex<Option<MultiplexedConnection>>,
    /// Serializes reconnects: one connect for many waiting callers, not a stampede.
    connecting: tokio::sync::Mutex<()>,
}

impl Link {
    /// A link for ordinary commands (replies within [`REDIS_IO_TIMEOUT`]).
    pub fn new(client: Client) -> Link {
        Link::with_response_timeout(client, REDIS_IO_TIMEOUT)
    }

    /// A link whose replies may take up to `response_timeout` (BLOCK reads).
    pub fn with_response_timeout(client: Client, response_timeout: Duration) -> Link {
        Link {
            client,
            response_timeout,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The live connection, connecting first if there is none.
    pub async fn get(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let _gate = self.connecting.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_IO_TIMEOUT))
            .set_response_timeout(Some(self.response_timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Reports a failed command: a connection-level failure drops the connection so the
    /// next [`Link::get`] reconnects; a server error reply (NOGROUP, ...) keeps it.
    pub fn failed(&self, error: &RedisError) {
        if !is_server_error(error) {
            self.reset();
        }
    }

    /// Drops the connection.
    pub fn reset(&self) {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Whether Redis answered with an error reply (the connection itself is fine).
pub fn is_server_error(error: &RedisError) -> bool {
    matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
        && !error.is_io_error()
        && error.code().is_some()
}

/// Whether Redis said the consumer group (or its stream) does not exist.
pub fn is_nogroup(error: &RedisError) -> bool {
    error.code() == Some("NOGROUP")
        || error.to_string().contains("NOGROUP")
        || error.detail().is_some_and(|d| d.contains("NOGROUP"))
}

/// Whether Redis said the consumer group exists already.
pub fn is_busygroup(error: &RedisError) -> bool {
    error.code() == Some("BUSYGROUP") || error.to_string().contains("BUSYGROUP")
}
