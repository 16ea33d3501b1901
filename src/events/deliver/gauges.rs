//! The subscription's gauges: consumer lag, pending entries and the oldest pending entry's
//! age, read from XINFO GROUPS and XPENDING every second while delivery runs.

use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, Value};

use super::reply::pairs;
use super::Subscriber;
use crate::control::Shutdown;
use crate::events::envelope::{as_array, as_int, as_string, id_ms, now_ms};

/// How often lag and pending gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

impl Subscriber {
    /// Lag, pending and oldest-pending gauges from XINFO GROUPS and XPENDING.
    pub(super) async fn refresh_gauges(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            if !shutdown.sleep(GAUGE_INTERVAL).await {
                return;
            }
            if let Err(e) = self.read_gauges().await {
                self.cmd.failed(&e);
            }
        }
    }

    async fn read_gauges(&self) -> Result<(), RedisError> {
        let mut conn = self.cmd.get().await?;
        let (groups, pending): (Value, Value) = redis::pipe()
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .query_async(&mut conn)
            .await?;
        for group in as_array(&groups).unwrap_or_default() {
            let info = pairs(group);
            let field = |name: &str| info.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
            if field("name").and_then(as_string).as_deref() != Some(self.group.as_str()) {
                continue;
            }
            if let Some(n) = field("pending").and_then(as_int) {
                self.metrics.pending.set(n);
            }
            if let Some(n) = field("lag").and_then(as_int) {
                self.metrics.lag.set(n);
            }
        }
        let oldest = as_array(&pending)
            .and_then(|p| p.get(1))
            .and_then(as_string)
            .and_then(|id| id_ms(&id))
            .map_or(0.0, |ms| now_ms().saturating_sub(ms) as f64 / 1000.0);
        self.metrics.oldest_pending.set(oldest);
        Ok(())
    }
}
