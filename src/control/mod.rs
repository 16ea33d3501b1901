//! The control-plane toolbox, one way of doing each thing that the registry, events and the
//! hub all need: a Redis [`redis::Link`] that comes back after an outage, every Redis key
//! name ([`keys::Keys`]), the HTTP client to the local app ([`app::AppClient`]), the
//! [`shutdown::Shutdown`] every task waits on, the [`context::Context`] the features
//! start from, and the small HTTP server of the local API and telemetry listeners
//! ([`admin`]). Nothing here runs on the request path.

pub(crate) mod admin;
pub(crate) mod app;
pub mod cli;
pub(crate) mod context;
pub mod keys;
pub mod redis;
pub(crate) mod shutdown;
pub use shutdown::signalled;

pub(crate) use context::Context;
pub(crate) use shutdown::Shutdown;
