//! Telemetry: Prometheus metrics, structured logging and OTLP spans. What it records is
//! served by the telemetry listener (15020, routes in `sidecar`).

pub mod logging;
pub(crate) mod metrics;
pub(crate) mod otlp;
