//! The hub's metric families, registered once in the sidecar's registry; handles for every
//! label value are resolved here so the message path only increments.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::telemetry::metrics::{define, register};

/// Fan-out buckets in seconds: 10 µs to 100 ms.
const FANOUT_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

/// Handles of the realtime families.
#[derive(Clone)]
pub struct RealtimeMetrics {
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Local rooms with at least one member.
    pub rooms: IntGauge,
    /// Frames received from clients.
    pub messages_in: IntCounter,
    /// Frames sent to clients.
    pub messages_out: IntCounter,
    /// Clients closed with 4408 because their send queue overflowed.
    pub slow_dropped: IntCounter,
    /// Time to queue one broadcast for every local recipient.
    pub fanout: Histogram,
    /// Connect outcomes.
    pub connects: Connects,
    /// Disconnect reasons.
    pub disconnects: Disconnects,
}

/// `meshlet_realtime_connects_total{result}` handles.
#[derive(Clone)]
pub struct Connects {
    /// Upgraded.
    pub accepted: IntCounter,
    /// 401.
    pub unauthenticated: IntCounter,
    /// 503 at `max_connections`.
    pub overloaded: IntCounter,
    /// Not a WebSocket upgrade.
    pub bad_request: IntCounter,
}

/// `meshlet_realtime_disconnects_total{reason}` handles.
#[derive(Clone)]
pub struct Disconnects {
    /// The client closed or went away.
    pub client: IntCounter,
    /// No pong within `ping_timeout`.
    pub ping_timeout: IntCounter,
    /// Send queue overflow (4408).
    pub slow: IntCounter,
    /// Forbidden room (4403).
    pub forbidden: IntCounter,
    /// meshlet shutting down (1001).
    pub shutdown: IntCounter,
    /// A frame over the size limit (1009).
    pub too_big: IntCounter,
    /// Protocol or I/O error.
    pub error: IntCounter,
}

impl RealtimeMetrics {
    /// Builds and registers every family (the one rule: [`register`]).
    pub fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| register(registry, define(IntGauge::new(name, help)));
        let counter =
            |name: &str, help: &str| register(registry, define(IntCounter::new(name, help)));
        let connects = register(
            registry,
            define(IntCounterVec::new(
                Opts::new(
                    "meshlet_realtime_connects_total",
                    "WebSocket connect attempts by result.",
                ),
                &["result"],
            )),
        );
        let disconnects = register(
            registry,
            define(IntCounterVec::new(
                Opts::new(
                    "meshlet_realtime_disconnects_total",
                    "WebSocket connections closed, by reason.",
                ),
                &["reason"],
            )),
        );
        let fanout = register(
            registry,
            define(Histogram::with_opts(
                HistogramOpts::new(
                    "meshlet_realtime_fanout_duration_seconds",
                    "Time to queue one message for every local recipient.",
                )
                .buckets(FANOUT_BUCKETS.to_vec()),
            )),
        );
        RealtimeMetrics {
            connections: gauge(
                "meshlet_realtime_connections",
                "Open WebSocket connections.",
            ),
            rooms: gauge(
                "meshlet_realtime_rooms",
                "Rooms with at least one member on this meshlet.",
            ),
            messages_in: counter(
                "meshlet_realtime_messages_in_total",
                "Frames received from WebSocket clients.",
            ),
            messages_out: counter(
                "meshlet_realtime_messages_out_total",
                "Frames sent to WebSocket clients.",
            ),
            slow_dropped: counter(
                "meshlet_realtime_slow_clients_dropped_total",
                "Clients closed with 4408 because they fell behind.",
            ),
            fanout,
            connects: Connects {
                accepted: connects.with_label_values(&["accepted"]),
                unauthenticated: connects.with_label_values(&["unauthenticated"]),
                overloaded: connects.with_label_values(&["overloaded"]),
                bad_request: connects.with_label_values(&["bad_request"]),
            },
            disconnects: Disconnects {
                client: disconnects.with_label_values(&["client"]),
                ping_timeout: disconnects.with_label_values(&["ping_timeout"]),
                slow: disconnects.with_label_values(&["slow"]),
                forbidden: disconnects.with_label_values(&["forbidden"]),
                shutdown: disconnects.with_label_values(&["shutdown"]),
                too_big: disconnects.with_label_values(&["too_big"]),
                error: disconnects.with_label_values(&["error"]),
            },
        }
    }
}
