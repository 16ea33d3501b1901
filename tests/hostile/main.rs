//! Hostile clients on every listener (docs/security.md, "Hostile clients: what each
//! listener does"; docs/reliability.md, "Hostile clients"): slowloris heads and bodies,
//! oversized heads, URIs and bodies, pipelining across a park, CL/TE conflicts, malformed
//! and flooding h2, malformed and endless WebSocket frames, and 10,000 idle connections.
//! Each attack gets the answer the docs name, or a close, never a panic, while a
//! well-behaved client on the same listener keeps its latency. One module per attack
//! family; raw bytes over `TcpStream`, everything on 127.0.0.1.

mod h1;
mod h2;
mod idle;
mod kit;
mod smuggling;
#[path = "../support/mod.rs"]
mod support;
mod websocket;
