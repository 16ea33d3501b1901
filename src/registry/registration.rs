//! Self-registration: this pod's instance in the registry, kept alive by heartbeats,
//! re-registered at once after Redis comes back, marked draining then removed on shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::schema::{self, now_ms, Instance, Status};
use crate::control::keys::Keys;
use crate::control::redis::{Link, Outage};
use crate::control::Shutdown;

/// This pod's registration; built by the sidecar.
pub struct Registration {
    /// The registry's Redis.
    pub link: Arc<Link>,
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
    /// Heartbeats until shutdown begins, then marks draining and deregisters.
    pub async fn run(mut self, shutdown: Shutdown) {
        let shutdown = shutdown.wait();
        tokio::pin!(shutdown);
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
            match self.beat(announce).await {
                Ok(()) => {
                    outage.recovered();
                    announce = false;
                }
                Err(e) => {
                    self.link.failed(&e);
                    announce = true;
                    outage.failed(&e);
                }
            }
        }
        if let Err(e) = self.leave().await {
            tracing::warn!(error = %e, "could not deregister; the entry expires after the registry ttl");
        } else {
            tracing::info!(service = %self.service, id = %self.instance.id, "deregistered");
        }
    }

    async fn beat(&self, announce: bool) -> redis::RedisResult<()> {
        let mut instance = self.instance.clone();
        instance.status = *self.status.borrow();
        instance.last_heartbeat = now_ms();
        let mut conn = self.link.get().await?;
        schema::register(
            &mut conn,
            &self.keys,
            &self.service,
            &instance,
            self.ttl,
            announce,
        )
        .await
    }

    async fn leave(&self) -> redis::RedisResult<()> {
        let mut conn = self.link.get().await?;
        schema::mark_draining(&mut conn, &self.keys, &self.service, &self.instance.id).await?;
        schema::deregister(&mut conn, &self.keys, &self.service, &self.instance.id).await
    }
}
