//! Events over Redis Streams (docs/events.md) against a real redis-server and real app servers:
//! publish and dedupe, bad input, Redis down, batch publish (`publish`); the delivery envelope
//! and headers, order, retries, gauges, shutdown (`delivery`); dead letters and replay, the
//! CLI (`dead_letters`); competing consumers, takeover from a dead consumer, forgetting dead
//! consumers (`consumers`); Redis restarts and a subscriber SIGKILLed mid-stream (`faults`);
//! the same contract on RabbitMQ, `events.broker: amqp` (`amqp`).
//!
//! The publish → deliver latency run is `cargo bench --bench events_latency`.

#[path = "../support/mod.rs"]
mod support;

mod amqp;
mod consumers;
mod dead_letters;
mod delivery;
mod faults;
mod publish;

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{send, Answer, RedisServer};

/// `POST /v1/events/{event_type}` with `body` and `headers` on the local API at `api`.
#[must_use = "check the answer's status"]
async fn publish(
    api: SocketAddr,
    event_type: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::post(format!("/v1/events/{event_type}")).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    send(api, req).await.expect("publish answered")
}

/// An ndjson batch of `lines` for `event_type`, named `id` when given (its events are then
/// `{id}:{line}`).
fn batch(event_type: &str, id: Option<&str>, lines: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post(format!("/v1/events/{event_type}"))
        .header("host", "localhost")
        .header("content-type", "application/x-ndjson");
    if let Some(id) = id {
        req = req.header("x-event-id", id);
    }
    req.body(Full::new(Bytes::from(lines.to_owned()))).unwrap()
}

async fn api_get(api: SocketAddr, path: &str) -> Answer {
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(api, req).await.expect("answered")
}

async fn api_post(api: SocketAddr, path: &str, body: &str) -> Answer {
    let req = Request::post(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    send(api, req).await.expect("answered")
}

fn xlen(redis: &RedisServer, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut redis.conn())
        .unwrap()
}

fn pending(redis: &RedisServer, key: &str, group: &str) -> usize {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .query(&mut redis.conn())
        .unwrap();
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as usize,
            _ => 0,
        },
        _ => 0,
    }
}

fn dlq_entries(redis: &RedisServer, event_type: &str) -> Vec<HashMap<String, String>> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("mesh:dlq:{{{event_type}}}"))
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .unwrap();
    entries.into_iter().map(|(_, f)| f).collect()
}

/// `XGROUP CREATE key group $ MKSTREAM`: the group a meshlet would create, made by hand.
fn create_group(conn: &mut redis::Connection, key: &str, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(group)
        .arg("$")
        .arg("MKSTREAM")
        .query(conn)
        .unwrap();
}
