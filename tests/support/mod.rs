//! Test harness: a real `redis-server` per test (own port, own temp dir), or a Sentinel or
//! Cluster set of them (`redis_sets`), real HTTP
//! upstreams and apps on 127.0.0.1, in-process sidecars (alone or as a callee + caller
//! pair), a tiny HTTP client, and `eventually` for state that changes in the background (no
//! fixed sleeps where a signal exists).
//!
//! Each test binary compiles this module whole and uses part of it.

#![allow(dead_code)]

mod app;
mod client;
pub mod events;
mod mesh;
pub mod rabbitmq;
pub mod realtime;
mod redis_server;
pub mod redis_sets;
mod server;
mod tls;
mod upstream;

use std::future::Future;
use std::time::{Duration, Instant};

// Each test binary uses part of what is re-exported here.
#[allow(unused_imports)]
pub use {
    app::{RecordedRequest, Recording, RecordingApp},
    client::{get_host, get_via, metric, send, Answer, Client},
    mesh::{
        callee_and_caller, sidecar, sidecar_from_file, until_status, MeshletSpec, Pair, FREE_PORTS,
    },
    redis_server::{deregister_by_hand, register_by_hand, register_host_by_hand, RedisServer},
    server::{serve, serve_connection, serve_on, Http, Server},
    tls::MeshCerts,
    upstream::Upstream,
};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls `check` every 20 ms until it returns true or `within` passes; returns whether it did.
/// A test asserts the answer (an ignored one would make the wait a test that cannot fail).
#[must_use = "assert the answer: `false` means the condition never held"]
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the sidecar's registry snapshot is loaded (readiness signal).
pub async fn until_ready(s: &meshlet::sidecar::Sidecar) {
    assert!(
        eventually(Duration::from_secs(10), || async { s.shared.is_ready() }).await,
        "sidecar did not become ready"
    );
}

/// A measurement's `main`: runs `measure` on a two-thread runtime when cargo passes
/// `--bench`, else (`cargo test --all-targets` runs bench targets too) says how to run it.
pub fn bench_main<F: std::future::Future<Output = ()>>(name: &str, measure: impl FnOnce() -> F) {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("{name}: a measurement; run it with `cargo bench --bench {name}`");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(measure());
}
