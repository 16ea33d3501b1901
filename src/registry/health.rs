//! The local app's health: `service.health` is polled every `service.health_interval`.
//! While it fails, this pod's registration turns `draining` (callers stop sending) and
//! readiness says not ready; when it passes again, both come back. Until the first check
//! passes the pod is not ready, so traffic never reaches an app that is still starting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::USER_AGENT;
use http::Request;
use http_body_util::Full;
use tokio::sync::watch;

use super::schema::Status;
use crate::control::app::AppClient;
use crate::control::Shutdown;

/// Longest wait for one health answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The health poller; built by the sidecar.
pub struct HealthCheck {
    /// The app (HTTP/1.1; the sidecar keeps no idle connection for it).
    pub app: AppClient,
    /// The health path.
    pub path: String,
    /// Poll interval.
    pub interval: Duration,
    /// Registration status to drive.
    pub status: watch::Sender<Status>,
    /// Readiness flag to drive.
    pub healthy: Arc<AtomicBool>,
}

impl HealthCheck {
    /// Polls until shutdown begins.
    pub async fn run(self, shutdown: Shutdown) {
        let shutdown = shutdown.wait();
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(self.interval);
        let mut first = true;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = &mut shutdown => return,
            }
            let ok = probe(&self.app, &self.path, PROBE_TIMEOUT.min(self.interval)).await;
            let was = self.healthy.swap(ok, Ordering::AcqRel);
            if was != ok || first {
                if ok {
                    tracing::info!(path = %self.path, "app healthy; registration up");
                } else {
                    tracing::warn!(path = %self.path, "app health check failed; registration draining");
                }
            }
            first = false;
            let next = if ok { Status::Up } else { Status::Draining };
            self.status.send_if_modified(|s| {
                let changed = *s != next;
                *s = next;
                changed
            });
        }
    }
}

/// One GET of the health path: healthy on a 2xx within `timeout` (the body is not read).
async fn probe(app: &AppClient, path: &str, timeout: Duration) -> bool {
    let Some(uri) = app.uri(path) else {
        return false;
    };
    let Ok(req) = Request::get(uri)
        .header(USER_AGENT, "meshlet-health")
        .body(Full::default())
    else {
        return false;
    };
    matches!(app.status(req, timeout).await, Ok(s) if s.is_success())
}
