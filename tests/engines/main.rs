//! The registry, events and the realtime hub on the Redis Sentinel and Redis Cluster
//! backends (`registry.sentinel`, `registry.cluster`; docs/registry.md, docs/events.md,
//! docs/realtime.md), against real sets of redis-servers (`support::redis_sets`) and
//! in-process meshlets: the sets themselves (`harness`), the same flows on either backend
//! (`flows`: register, route, deregister; publish, deliver, dead letter, replay; a hub
//! broadcast across two meshlets), run per backend with its failure under load (`sentinel`:
//! the master SIGKILLed; `cluster`: `CLUSTER FAILOVER` of an event stream's master).

#[path = "../support/mod.rs"]
mod support;

mod cluster;
mod flows;
mod harness;
mod sentinel;

/// One set at a time: a set is 5-6 redis-servers on a 2-core machine, and a starved
/// sentinel (1 s down-after) or cluster node (2 s node timeout) fails over on its own.
static ONE_SET_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a harness call that blocks (a set's start, failover waits) without stalling the
/// in-process meshlets on this test's runtime (multi-thread tests only).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
