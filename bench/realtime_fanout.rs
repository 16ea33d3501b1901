//! The realtime hub's connections and fan-out, roughly (docs/realtime.md): one meshlet,
//! `RT_CLIENTS` WebSocket clients (default 2,000) with small buffers in this process, then 20
//! broadcasts to all of them 100 ms apart. Prints the RSS per held connection (both ends: the
//! clients and the hub share this process) and the broadcast latency p50, p99 and max.
//!
//!     RT_CLIENTS=5000 cargo bench --bench realtime_fanout
//!
//! No Redis needed. Run without `--bench` (as `cargo test --all-targets` runs bench targets)
//! it only says how to run it. The full realtime benchmark (two meshlets, 10,000 clients in
//! worker processes, a slow client) is `bash bench/realtime`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::realtime::{broadcast, config, inbound, next, token};
use support::sidecar;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn main() {
    support::bench_main("realtime_fanout", measure_connections_and_fanout);
}

/// VmRSS of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn measure_connections_and_fanout() {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let n: usize = std::env::var("RT_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let hub = sidecar(&config(None, "  max_connections: 100000\n")).await;
    let addr = inbound(&hub);
    let t = token("load", None);
    let before = rss_kib();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!("ws://{addr}/ws?token={t}")
            .into_client_request()
            .expect("request");
        let cfg = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(cfg))
            .await
            .expect("upgrade");
        next(&mut ws).await;
        clients.push(ws);
    }
    let held = rss_kib();
    println!(
        "{n} connections: RSS +{} KiB = {:.1} KiB per connection (client and server ends)",
        held - before,
        (held - before) as f64 / n as f64
    );
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n * 20)));
    let mut readers = Vec::new();
    for mut ws in clients {
        let latencies = latencies.clone();
        readers.push(tokio::spawn(async move {
            for _ in 0..20 {
                let m = next(&mut ws).await;
                let sent = m["data"].as_u64().expect("timestamp");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_micros() as u64;
                latencies
                    .lock()
                    .expect("lock")
                    .push(now.saturating_sub(sent));
            }
        }));
    }
    for _ in 0..20 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros() as u64;
        broadcast(hub.addresses.api, json!({"all": true}), "t", json!(now)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in readers {
        r.await.expect("reader");
    }
    let mut l = latencies.lock().expect("lock").clone();
    l.sort_unstable();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0;
    println!(
        "broadcast to {n} clients x20: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    hub.shutdown().await;
}
