//! Telemetry: Prometheus metrics, logging, and the two small HTTP servers of the control
//! plane (the telemetry listener on 15020 and the local API on 15000).

pub mod admin;
pub mod logging;
pub mod metrics;
pub mod otlp;
