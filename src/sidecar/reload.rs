//! Live changes: the routing table is rebuilt whenever the registry snapshot changes, and
//! the config file is re-read every second (and on SIGHUP). A valid new config is swapped
//! in whole; an invalid one is rejected, logged and counted, and the old one keeps serving.

use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use crate::config::{Config, ConfigError, LoadedConfig};
use crate::control::Shutdown;

/// How often the config file is checked for changes. Polling (a read and a hash) rather
/// than inotify: Kubernetes swaps ConfigMap files through symlinks, which file watches miss,
/// and a one-second poll keeps "edit → effect" under 2 s everywhere.
const CONFIG_POLL: Duration = Duration::from_secs(1);

/// Rebuilds the routing table after every new registry snapshot.
pub(super) async fn rebuild_on_change(shared: Arc<Shared>, shutdown: Shutdown) {
    let mut snapshots = shared.snapshot.clone();
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() { return; }
                shared.rebuild();
            }
            () = &mut stop => return,
        }
    }
}

/// Re-reads the config file every [`CONFIG_POLL`] and on SIGHUP.
pub(super) async fn reload_on_change(shared: Arc<Shared>, shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).ok();
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut poll = tokio::time::interval(CONFIG_POLL);
    loop {
        let sighup = async {
            match hangup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = poll.tick() => {}
            () = sighup => {
                tracing::info!("SIGHUP: re-reading the config file");
                shared.last_seen_hash.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            () = &mut stop => return,
        }
        if let Err(e) = reload(&shared) {
            tracing::error!(error = %e, "config reload rejected; the previous config keeps serving");
        }
    }
}

/// Re-reads the config file when its content changed: validates, swaps, rebuilds. An
/// invalid file is rejected, logged and counted; the old config keeps serving.
fn reload(shared: &Shared) -> Result<bool, ConfigError> {
    let current = shared.config.load_full();
    let Some(path) = current.path.clone() else {
        return Ok(false);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| {
        shared.metrics.reload.errors.inc();
        ConfigError::Read {
            path: path.clone(),
            source,
        }
    })?;
    let hash = crate::config::content_hash(&text);
    {
        let mut seen = shared
            .last_seen_hash
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *seen == hash {
            return Ok(false);
        }
        *seen = hash;
    }
    let next = match LoadedConfig::from_text(&text, &path.display().to_string()) {
        Ok(mut next) => {
            next.path = Some(path);
            next
        }
        Err(e) => {
            shared.metrics.reload.errors.inc();
            return Err(e);
        }
    };
    warn_if_restart_needed(&current.config, &next.config);
    let hash = next.hash.clone();
    shared.config.store(Arc::new(next));
    shared.rebuild();
    shared.metrics.reload.reloads.inc();
    tracing::info!(%hash, "config reloaded");
    Ok(true)
}

/// Settings that only take effect at start: say so rather than pretend.
fn warn_if_restart_needed(old: &Config, new: &Config) {
    let mut changed = Vec::new();
    let mut check = |what: &'static str, differs: bool| {
        if differs {
            changed.push(what);
        }
    };
    check("service", json(&old.service) != json(&new.service));
    let timers = |c: &Config| (c.registry.ttl, c.registry.heartbeat, c.registry.resync);
    check("registry.ttl/heartbeat/resync", timers(old) != timers(new));
    check("shutdown_grace", old.shutdown_grace != new.shutdown_grace);
    check(
        "events/realtime",
        old.events.subscriptions.len() != new.events.subscriptions.len()
            || json(&old.realtime) != json(&new.realtime),
    );
    let (a, b) = (&old.listen, &new.listen);
    check(
        "listen",
        a.outbound != b.outbound
            || a.inbound != b.inbound
            || a.api != b.api
            || a.telemetry != b.telemetry,
    );
    check("workers", old.workers != new.workers);
    check(
        "registry.redis/prefix",
        old.registry.redis != new.registry.redis || old.registry.prefix != new.registry.prefix,
    );
    check("limits", json(&old.limits) != json(&new.limits));
    check(
        "tls/telemetry/events",
        json(&(&old.tls, &old.telemetry, &old.events))
            != json(&(&new.tls, &new.telemetry, &new.events)),
    );
    if !changed.is_empty() {
        tracing::warn!(fields = ?changed, "these settings changed but apply only after a restart");
    }
}

/// A config section in its serialized form, for comparing sections without `PartialEq`.
fn json<T: serde::Serialize>(section: &T) -> String {
    serde_json::to_string(section).unwrap_or_default()
}
