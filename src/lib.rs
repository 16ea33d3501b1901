//! # meshlet
//!
//! A small sidecar proxy for service-to-service calls. It runs beside each service; the app
//! sends plain HTTP to `127.0.0.1:15001` and meshlet finds the target service in a Redis
//! registry (or the static one of its config), picks a live endpoint and forwards the call
//! over a pooled connection, with the policy, identity and telemetry the mesh agreed on.
//!
//! ## The request's journey (outbound)
//!
//! ```text
//! app ──HTTP──▶ accept      proxy::server   (HTTP/1.1 + h2c, one runtime per worker)
//!             ▶ route       proxy::outbound (absolute URI, Host, or path-prefix route)
//!             ▶ policy      timeout budget  (policy: balance; retries and breakers next)
//!             ▶ balance     policy::balance (power of two choices on in-flight requests)
//!             ▶ forward     proxy::forward → proxy::upstream (per-worker connection pool)
//!             ◀ response    streamed back; metrics and the access line recorded
//! ```
//!
//! ## Layout
//!
//! - [`config`]: the YAML contract: types, defaults, validation with line numbers.
//! - [`registry`]: discovery (local snapshot fed by a Redis watcher) and self-registration.
//! - [`proxy`]: listeners, routing table, forwarding, upstream pool, error responses.
//! - [`policy`]: per-destination resilience: breakers, retries, budgets, degradation, balancing.
//! - [`identity`]: request ids, trace context, service tokens, static auth headers.
//! - [`telemetry`]: metrics, logs, the telemetry and local-API servers.
//! - [`events`]: events over Redis Streams, published and delivered over localhost HTTP.
//! - [`realtime`]: the WebSocket hub: rooms, users, broadcast across instances.
//! - [`operator`]: `meshlet stat`, `tap` and `doctor`: asking a running meshlet.
//! - [`sidecar`]: wiring: builds all of the above from a config and shuts it down.
//! - [`demo`]: the embedded demo upstream behind `meshlet demo`.
//! - `fuzzing` (feature `fuzzing` only): the entry points of the cargo-fuzz targets in `fuzz/`.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod demo;
pub mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod operator;
pub(crate) mod policy;
pub(crate) mod proxy;
pub(crate) mod realtime;
pub mod registry;
pub mod sidecar;
pub mod telemetry;
pub(crate) mod wire;
