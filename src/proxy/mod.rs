//! The data plane: listeners, routing, forwarding.
//!
//! A request on the outbound listener goes [`outbound`] → [`destination`] (route) →
//! [`forward`] (balance, rewrite, send over an [`upstream`] pooled connection) and streams
//! back as a [`body::ResponseBody`]. [`inbound`] is the mirror toward the local app.
//! Every error meshlet answers itself is a [`error::ProxyError`], rendered in one place.

pub mod body;
pub mod call;
pub mod destination;
pub mod error;
mod exchange;
pub mod forward;
pub mod headers;
pub mod inbound;
pub mod outbound;
pub mod park;
pub mod server;
pub mod tls;
pub mod upgrade;
pub mod upstream;
