//! Self-registration: this pod's instance in the registry, kept alive by heartbeats,
//! re-registered at once after Redis comes back, marked draining then removed on shutdown.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::{watch, Notify};

use super::connection::{self, Outage};
use super::schema::{self, now_ms, Instance, Keys, Status};

/// This pod's registration; built by the sidecar.
pub struct Registration {
    /// Redis client for the registry.
    pub client: redis::Client,
    /// Key names.
    pub keys: Keys,
    /// Our service name.
    pub service: String,
    /// Our instance (its `status` is replaced by the `status` channel's value).
    pub instance: Instance,
    /// Registry TTL.
    pub ttl: Duration,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Woken after the watcher reconnects: register again at once.
    pub reconnected: Arc<Notify>,
    /// Up or draining (the app's health decides).
    pub status: watch::Receiver<Status>,
}

impl Registration {
    /// Heartbeats until `shutdown` resolves, then marks draining and deregisters.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut conn: Option<MultiplexedConnection> = None;
        let mut outage = Outage::new("self-registration");
        let mut ticker = tokio::time::interval(self.heartbeat);
        let mut announce = true;
        let mut status_open = true;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.reconnected.notified() => announce = true,
                changed = self.status.changed(), if status_open => {
                    // A closed channel only means nobody drives the status any more.
                    status_open = changed.is_ok();
                    announce = true;
                }
                () = &mut shutdown => break,
            }
            match self.beat(&mut conn, announce).await {
                Ok(()) => {
                    outage.recovered();
                    announce = false;
                }
                Err(e) => {
                    conn = None;
                    announce = true;
                    outage.failed(&e);
                }
            }
        }
        if let Err(e) = self.leave(&mut conn).await {
            tracing::warn!(error = %e, "could not deregister; the entry expires after the registry ttl");
        } else {
            tracing::info!(service = %self.service, id = %self.instance.id, "deregistered");
        }
    }

    async fn connection<'a>(
        &self,
        slot: &'a mut Option<MultiplexedConnection>,
    ) -> redis::RedisResult<&'a mut MultiplexedConnection> {
        if slot.is_none() {
            *slot = Some(connection::connect(&self.client).await?);
        }
        // Filled just above when it was empty.
        Ok(slot.as_mut().expect("connection slot filled"))
    }

    async fn beat(
        &self,
        slot: &mut Option<MultiplexedConnection>,
        announce: bool,
    ) -> redis::RedisResult<()> {
        let mut instance = self.instance.clone();
        instance.status = *self.status.borrow();
        instance.last_heartbeat = now_ms();
        let conn = self.connection(slot).await?;
        schema::register(
            conn,
            &self.keys,
            &self.service,
            &instance,
            self.ttl,
            announce,
        )
        .await
    }

    async fn leave(&self, slot: &mut Option<MultiplexedConnection>) -> redis::RedisResult<()> {
        let conn = self.connection(slot).await?;
        schema::mark_draining(conn, &self.keys, &self.service, &self.instance.id).await?;
        schema::deregister(conn, &self.keys, &self.service, &self.instance.id).await
    }
}
