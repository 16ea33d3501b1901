//! The data plane: listeners, routing, forwarding. It knows the layers below it (policy,
//! registry, identity, telemetry, wire) and nothing above: features served on the inbound
//! listener (the realtime hub) plug in through [`inbound::InboundRoute`].
//!
//! A request on the outbound listener goes [`server`] (accept, HTTP/1.1 + h2c, [`park`]ing
//! of idle connections) → [`outbound`] (route) → [`destination`] (the routing table) →
//! [`call`] (the policy stack) → [`forward`] (one attempt: rewrite, send over an
//! [`upstream`] pooled connection) and streams back as a [`response_body::ResponseBody`].
//! [`inbound`] is the mirror toward the local app. Every error the data plane answers
//! itself is an [`error::ProxyError`], rendered in one place; [`exchange`] records each
//! answered request (ids, trace, metrics, access line, span).

pub mod call;
pub mod destination;
pub mod error;
mod exchange;
pub mod forward;
pub mod headers;
pub mod inbound;
pub mod listen;
pub mod outbound;
pub mod park;
pub mod request_body;
pub mod response_body;
pub mod server;
pub mod upgrade;
pub mod upstream;
