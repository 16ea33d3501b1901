//! The control-plane toolbox, one way of doing each thing that the registry, events and the
//! hub all need: a Redis [`redis::Link`] that comes back after an outage, every Redis key
//! name ([`keys::Keys`]), the HTTP client to the local app ([`app::AppClient`]), the
//! [`shutdown::Shutdown`] every task waits on, the [`context::Context`] the features
//! start from, and the small HTTP server of the local API and telemetry listeners
//! ([`admin`]). Nothing here runs on the request path.

pub mod admin;
pub mod app;
pub mod context;
pub mod keys;
pub mod redis;
pub mod shutdown;

pub use context::Context;
pub use shutdown::Shutdown;
