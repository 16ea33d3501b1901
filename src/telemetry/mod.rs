//! Telemetry: Prometheus metrics, structured logging and the access line, OTLP spans, the
//! tap (`GET /v1/tap`), and the figures of `GET /v1/stats` worked out from the metrics. What it records is served by the telemetry
//! listener (15020) and the local API (15000); the routes are in `sidecar`.

pub(crate) mod access;
pub(crate) mod log_buffer;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod otlp;
pub(crate) mod stats;
