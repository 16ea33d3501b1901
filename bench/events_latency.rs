//! Publish → delivery latency of events at ~1k events/s (docs/events.md): one meshlet on its
//! own redis-server publishes 3,000 events over its local API, one per millisecond, and
//! delivers them to a recording app on 127.0.0.1 (`concurrency: 1`); prints p50, p99 and max
//! from each publish to the app's receipt of it.
//!
//!     cargo bench --bench events_latency
//!
//! Needs `redis-server` (`bash .ci/run` installs it). Run without `--bench` (as `cargo test
//! --all-targets` runs bench targets) it only says how to run it. The fuller events figures,
//! beside bare Redis, are `bash bench/events`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::events::{subscriber, Delivery};
use support::{eventually, Client, RecordingApp, RedisServer};

fn main() {
    support::bench_main("events_latency", latency_publish_to_deliver);
}

async fn latency_publish_to_deliver() {
    let redis = RedisServer::start();
    let app = RecordingApp::ok().await;
    let s = subscriber("risk", &redis, &app, "lat", ", concurrency: 1").await;
    let mut client = Client::connect(s.addresses.api).await;
    const N: usize = 3000;
    let mut sent_at = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    for i in 0..N {
        tick.tick().await;
        let id = format!("lat-{i}");
        let req = Request::post("/v1/events/lat")
            .header("host", "localhost")
            .header("x-event-id", &id)
            .body(Full::new(Bytes::from_static(
                b"{\"px\":1.5,\"qty\":10,\"sym\":\"ABC\"}",
            )))
            .unwrap();
        let t = Instant::now();
        let a = client.send(req).await;
        assert_eq!(a.status, 202);
        sent_at.insert(id, t);
    }
    let rate = N as f64 / started.elapsed().as_secs_f64();
    assert!(eventually(Duration::from_secs(10), || async { app.count() == N }).await);
    let mut lat: Vec<Duration> = app
        .recorded()
        .iter()
        .map(|r| r.at - sent_at[&r.event_id()])
        .collect();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    eprintln!(
        "publish→deliver at {rate:.0}/s over {N}: p50 {:?} p99 {:?} max {:?}",
        p(0.5),
        p(0.99),
        lat[lat.len() - 1]
    );
    s.shutdown().await;
}
