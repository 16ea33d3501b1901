//! Trust boundaries (docs/security.md), each rule tried the way an attacker on the pod
//! network would try it, against real meshlets, a real redis-server and real upstreams on
//! 127.0.0.1. One module a topic.

mod acl;
mod config;
mod headers;
mod hub;
mod identity;
mod labels;
mod listeners;
mod registry;
mod stale;
#[path = "../support/mod.rs"]
mod support;
