//! Events set-ups (docs/events.md) shared by tests/events and bench/events_latency.rs: a
//! meshlet's config with subscriptions, the wait for its consumer group, and what a
//! [`RecordingApp`] tells about the deliveries it got.

use std::net::SocketAddr;
use std::time::Duration;

use meshlet::sidecar::Sidecar;

use super::app::{RecordedRequest, Recording, RecordingApp};
use super::eventually;
use super::mesh::{sidecar, MeshletSpec};
use super::redis_server::RedisServer;

/// A subscription line with the short durations every test uses; `extra` (`", k: v, ..."`)
/// overrides or adds keys.
pub fn subscription(event_type: &str, extra: &str) -> String {
    let mut keys: Vec<(String, String)> = [
        ("backoff", "20ms"),
        ("max_backoff", "100ms"),
        ("timeout", "500ms"),
        ("start", "earliest"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for pair in extra.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once(':').expect("key: value");
        let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
        match keys.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => keys.push((k, v)),
        }
    }
    let rest: String = keys.iter().map(|(k, v)| format!(", {k}: {v}")).collect();
    format!("    - {{type: {event_type}, path: /events/{event_type}{rest}}}\n")
}

/// The config of a meshlet of `service` on `redis`, in front of `app` when there is one,
/// with the `subs` lines (from [`subscription`]) when not empty.
pub fn config(service: &str, redis: &RedisServer, app: Option<SocketAddr>, subs: &str) -> String {
    let mut spec = MeshletSpec::new(service).redis(redis);
    if let Some(app) = app {
        spec = spec.app(app);
    }
    if !subs.is_empty() {
        spec = spec.with(&format!("events:\n  subscriptions:\n{subs}"));
    }
    spec.yaml()
}

/// Waits until the group exists: only then is a subscriber sure to see what is published.
#[must_use = "assert the answer: `false` means the group never appeared"]
pub async fn group_exists(redis: &RedisServer, key: &str, group: &str) -> bool {
    eventually(Duration::from_secs(5), || async {
        let groups: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query(&mut redis.conn());
        format!("{groups:?}").contains(group)
    })
    .await
}

/// One delivery as the app received it.
pub trait Delivery {
    fn event_id(&self) -> String;
    /// `x-event-attempt`, 0 when absent.
    fn attempt(&self) -> u32;
}

impl Delivery for RecordedRequest {
    fn event_id(&self) -> String {
        self.header("x-event-id").to_owned()
    }

    fn attempt(&self) -> u32 {
        self.header("x-event-attempt").parse().unwrap_or(0)
    }
}

/// The deliveries an app received, by event.
pub trait Deliveries {
    /// Every delivery of `event_id`, in arrival order.
    fn of(&self, event_id: &str) -> Vec<RecordedRequest>;
    /// How many different event ids arrived.
    fn distinct_events(&self) -> usize;
}

impl Deliveries for Recording {
    fn of(&self, event_id: &str) -> Vec<RecordedRequest> {
        self.with_header("x-event-id", event_id)
    }

    fn distinct_events(&self) -> usize {
        self.distinct("x-event-id")
    }
}

impl Deliveries for RecordingApp {
    fn of(&self, event_id: &str) -> Vec<RecordedRequest> {
        self.recording.of(event_id)
    }

    fn distinct_events(&self) -> usize {
        self.recording.distinct_events()
    }
}

/// Starts the meshlet of `service` on `redis` delivering `event_type` to `app` (its
/// subscription: [`subscription`] with `extra`) and waits until its consumer group exists.
pub async fn subscriber(
    service: &str,
    redis: &RedisServer,
    app: &RecordingApp,
    event_type: &str,
    extra: &str,
) -> Sidecar {
    let subs = subscription(event_type, extra);
    let s = sidecar(&config(service, redis, Some(app.addr), &subs)).await;
    let stream = format!("mesh:events:{{{event_type}}}");
    assert!(group_exists(redis, &stream, service).await);
    s
}

/// Starts a meshlet of `orders` on `redis` that publishes and subscribes to nothing.
pub async fn publisher(redis: &RedisServer) -> Sidecar {
    sidecar(&config("orders", redis, None, "")).await
}
