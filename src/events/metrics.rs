//! Event metric families, registered on the sidecar's registry, and their handles: one set
//! per subscription resolved at start, publish counters resolved once per event type.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::telemetry::metrics::{define, register};

/// Delivery duration buckets, in seconds: 1 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Event types with their own publish counters; beyond it, publishes count under `_other`
/// (type names come from callers: the label set must stay bounded).
const MAX_PUBLISH_TYPES: usize = 1000;

/// The event metric families.
pub struct EventMetrics {
    published: IntCounterVec,
    delivered: IntCounterVec,
    duration: HistogramVec,
    lag: IntGaugeVec,
    pending: IntGaugeVec,
    oldest: GaugeVec,
    dead_letters: IntCounterVec,
    by_type: Mutex<HashMap<String, Arc<PublishCounters>>>,
    /// Publishes acknowledged under Sentinel/Cluster with no replica to WAIT for.
    pub unreplicated: IntCounter,
}

/// Publish counters of one event type.
pub struct PublishCounters {
    /// Stored (new event).
    pub stored: IntCounter,
    /// Repeat inside the dedupe window.
    pub duplicate: IntCounter,
}

/// Handles of one subscription.
pub struct SubscriptionMetrics {
    /// Delivered, answered 2xx, acked.
    pub ok: IntCounter,
    /// Failed, will be redelivered.
    pub retry: IntCounter,
    /// Dead-lettered.
    pub dead_letter: IntCounter,
    /// One delivery, request to response.
    pub duration: Histogram,
    /// Entries not yet delivered to the group.
    pub lag: IntGauge,
    /// Entries delivered and not acknowledged.
    pub pending: IntGauge,
    /// Age of the oldest pending entry (seconds since it was published).
    pub oldest_pending: Gauge,
    /// Dead letters because the app refused the event (4xx).
    pub rejected: IntCounter,
    /// Dead letters because max_attempts ran out.
    pub exhausted: IntCounter,
}

impl EventMetrics {
    /// Registers the families on `registry` (the one rule: [`register`]).
    pub fn register(registry: &Registry) -> EventMetrics {
        let published = register(
            registry,
            define(IntCounterVec::new(
                Opts::new(
                    "meshlet_events_published_total",
                    "Events published through this meshlet, by type and whether the id was a duplicate.",
                ),
                &["type", "duplicate"],
            )),
        );
        let delivered = register(
            registry,
            define(IntCounterVec::new(
                Opts::new(
                    "meshlet_events_delivered_total",
                    "Delivery attempts to the app, by type and outcome (ok, retry, dead_letter).",
                ),
                &["type", "outcome"],
            )),
        );
        let duration = register(
            registry,
            define(HistogramVec::new(
                HistogramOpts::new(
                    "meshlet_event_delivery_duration_seconds",
                    "One delivery to the app, from request sent to response read.",
                )
                .buckets(BUCKETS.to_vec()),
                &["type"],
            )),
        );
        let lag = register(
            registry,
            define(IntGaugeVec::new(
                Opts::new(
                    "meshlet_events_consumer_lag",
                    "Entries of the stream not yet read by this service's group (XINFO GROUPS lag).",
                ),
                &["type"],
            )),
        );
        let pending = register(
            registry,
            define(IntGaugeVec::new(
                Opts::new(
                    "meshlet_events_pending",
                    "Entries read by this service's group and not yet acknowledged.",
                ),
                &["type"],
            )),
        );
        let oldest = register(
            registry,
            define(GaugeVec::new(
                Opts::new(
                    "meshlet_events_oldest_pending_seconds",
                    "Age of the oldest unacknowledged entry of this service's group.",
                ),
                &["type"],
            )),
        );
        let dead_letters = register(
            registry,
            define(IntCounterVec::new(
                Opts::new(
                    "meshlet_events_dead_letters_total",
                    "Events dead-lettered by this meshlet, by type and reason (rejected, exhausted).",
                ),
                &["type", "reason"],
            )),
        );
        let unreplicated = register(
            registry,
            define(IntCounter::new(
                "meshlet_events_unreplicated_total",
                "Publishes acknowledged under Sentinel/Cluster while the master had no replica connected to WAIT for (docs/events.md).",
            )),
        );
        EventMetrics {
            published,
            delivered,
            duration,
            lag,
            pending,
            oldest,
            dead_letters,
            by_type: Mutex::new(HashMap::new()),
            unreplicated,
        }
    }

    /// Publish counters of `event_type`, resolved on first use.
    pub fn publish(&self, event_type: &str) -> Arc<PublishCounters> {
        let mut map = self.by_type.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(event_type) {
            return c.clone();
        }
        let label = if map.len() >= MAX_PUBLISH_TYPES {
            "_other"
        } else {
            event_type
        };
        let counters = Arc::new(PublishCounters {
            stored: self.published.with_label_values(&[label, "false"]),
            duplicate: self.published.with_label_values(&[label, "true"]),
        });
        if label == event_type {
            map.insert(event_type.to_owned(), counters.clone());
        }
        counters
    }

    /// Handles of the subscription to `event_type`.
    pub fn subscription(&self, event_type: &str) -> SubscriptionMetrics {
        let t = [event_type];
        SubscriptionMetrics {
            ok: self.delivered.with_label_values(&[event_type, "ok"]),
            retry: self.delivered.with_label_values(&[event_type, "retry"]),
            dead_letter: self
                .delivered
                .with_label_values(&[event_type, "dead_letter"]),
            duration: self.duration.with_label_values(&t),
            lag: self.lag.with_label_values(&t),
            pending: self.pending.with_label_values(&t),
            oldest_pending: self.oldest.with_label_values(&t),
            rejected: self
                .dead_letters
                .with_label_values(&[event_type, "rejected"]),
            exhausted: self
                .dead_letters
                .with_label_values(&[event_type, "exhausted"]),
        }
    }
}
