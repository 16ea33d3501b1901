//! The realtime hub end to end (docs/realtime.md): real WebSocket clients (tokio-tungstenite)
//! against in-process meshlets, two of them sharing one real redis-server. Connecting and its
//! limits (`connections`), messages across meshlets (`broadcast`), rooms, presence and
//! recovery (`rooms`), slow and silent clients and Redis restarts (`liveness`).
//!
//! The connections-and-fan-out measurement is `cargo bench --bench realtime_fanout`.

#[path = "../support/mod.rs"]
mod support;

mod broadcast;
mod connections;
mod liveness;
mod rooms;

use meshlet::sidecar::Sidecar;
use support::realtime::config;
use support::{sidecar, RedisServer};

/// Two meshlets of service `chat` on one redis-server.
async fn pair(redis: &RedisServer, extra: &str) -> (Sidecar, Sidecar) {
    let a = sidecar(&config(Some(redis), extra)).await;
    let b = sidecar(&config(Some(redis), extra)).await;
    (a, b)
}
