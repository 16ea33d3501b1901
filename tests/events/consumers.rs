//! Consumer groups: competing consumers of one service, takeover from a dead consumer, and
//! dead consumers removed from the group.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::events::{config, group_exists, publisher, subscription, Deliveries, Delivery};
use crate::support::{eventually, metric, send, sidecar, RecordingApp, RedisServer};
use crate::{api_get, batch, create_group, pending, publish};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meshlets_of_one_service_share_the_stream() {
    let redis = RedisServer::start();
    let app = RecordingApp::ok().await;
    let subs = subscription("s", ", concurrency: 4");
    let a = sidecar(&config("ledger", &redis, Some(app.addr), &subs)).await;
    let b = sidecar(&config("ledger", &redis, Some(app.addr), &subs)).await;
    // A second service subscribing gets its own copy.
    let other = RecordingApp::ok().await;
    let c = sidecar(&config(
        "audit",
        &redis,
        Some(other.addr),
        &subscription("s", ""),
    ))
    .await;
    assert!(group_exists(&redis, "mesh:events:{s}", "ledger").await);
    assert!(group_exists(&redis, "mesh:events:{s}", "audit").await);
    let lines: String = (0..200).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let req = batch("s", None, &lines);
    assert_eq!(send(a.addresses.api, req).await.unwrap().status, 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.count() >= 200 && other.count() >= 200
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in app.recorded() {
        *seen.entry(r.event_id()).or_default() += 1;
    }
    assert_eq!(seen.len(), 200);
    assert!(
        seen.values().all(|n| *n == 1),
        "each event once across the two meshlets"
    );
    assert_eq!(other.count(), 200);
    let ta = metric(
        a.addresses.telemetry,
        r#"meshlet_events_delivered_total{outcome="ok",type="s"}"#,
    )
    .await;
    let tb = metric(
        b.addresses.telemetry,
        r#"meshlet_events_delivered_total{outcome="ok",type="s"}"#,
    )
    .await;
    assert_eq!(ta + tb, 200.0);
    assert!(
        ta > 0.0 && tb > 0.0,
        "both consumers took a share: {ta} + {tb}"
    );
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_over_entries_left_pending_by_a_dead_consumer() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    create_group(&mut conn, "mesh:events:{z}", "risk");
    // Published by a meshlet without subscriptions.
    let publisher = publisher(&redis).await;
    assert_eq!(
        publish(
            publisher.addresses.api,
            "z",
            r#"{"z":1}"#,
            &[("x-event-id", "z-1")],
        )
        .await
        .status,
        202
    );
    // A consumer reads it and dies without acking.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("risk")
        .arg("ghost")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg("mesh:events:{z}")
        .arg(">")
        .query(&mut conn)
        .unwrap();
    assert_eq!(pending(&redis, "mesh:events:{z}", "risk"), 1);

    let app = RecordingApp::ok().await;
    let started = Instant::now();
    let s = sidecar(&config(
        "risk",
        &redis,
        Some(app.addr),
        &subscription("z", ""),
    ))
    .await;
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);
    let took = started.elapsed();
    let got = &app.recorded()[0];
    assert_eq!(got.event_id(), "z-1");
    assert_eq!(got.attempt(), 2, "the ghost's delivery counts");
    assert!(
        took >= Duration::from_millis(900),
        "only after 2 x timeout idle: {took:?}"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            pending(&redis, "mesh:events:{z}", "risk") == 0
        })
        .await
    );
    s.shutdown().await;
    publisher.shutdown().await;
}

/// Names of the consumers of `group` on `key`.
fn consumers(redis: &RedisServer, key: &str, group: &str) -> Vec<String> {
    let info: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(key)
        .arg(group)
        .query(&mut redis.conn())
        .unwrap();
    let mut names: Vec<String> = info
        .iter()
        .filter_map(|c| match c.get("name") {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// `XGROUP CREATECONSUMER`: a consumer that never read anything.
fn create_consumer(conn: &mut redis::Connection, key: &str, group: &str, name: &str) {
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(key)
        .arg(group)
        .arg(name)
        .query(conn)
        .unwrap();
}

/// `XADD key * field value ...`
fn add_entry(conn: &mut redis::Connection, key: &str, fields: &[(&str, &str)]) {
    let mut xadd = redis::cmd("XADD");
    xadd.arg(key).arg("*");
    for (field, value) in fields {
        xadd.arg(*field).arg(*value);
    }
    let _: String = xadd.query(conn).unwrap();
}

/// `XREADGROUP GROUP group consumer STREAMS key >`: `consumer` reads, and so holds, every
/// new entry.
fn read_as(conn: &mut redis::Connection, key: &str, group: &str, consumer: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query(conn)
        .unwrap();
}

/// A dead meshlet's consumer stays in the group after its entries were taken over, until it
/// has been idle 10 × the takeover idle time; then it is removed, and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_dead_meshlets_are_removed_once_nothing_is_pending() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let key = "mesh:events:{f}";
    create_group(&mut conn, key, "risk");
    // Two dead meshlets: one never got anything, one died holding an entry.
    create_consumer(&mut conn, key, "risk", "ghost-idle");
    add_entry(&mut conn, key, &[("event_id", "f-1"), ("payload", "{}")]);
    read_as(&mut conn, key, "risk", "ghost-holding");
    assert_eq!(pending(&redis, key, "risk"), 1);

    let app = RecordingApp::ok().await;
    // timeout 100ms: takeover after 200 ms idle, forgetting after 2 s. Two live meshlets
    // of the service.
    let subs = subscription("f", ", timeout: 100ms");
    let s = sidecar(&config("risk", &redis, Some(app.addr), &subs)).await;
    let peer = sidecar(&config("risk", &redis, Some(app.addr), &subs)).await;
    let consumer_of = |api| async move {
        // The route answers a JSON object with a string `consumer` (asserted by its test).
        api_get(api, "/v1/events").await.json()["consumer"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let live = [
        consumer_of(s.addresses.api).await,
        consumer_of(peer.addresses.api).await,
    ];
    let only_live = |names: Vec<String>| names.iter().all(|n| live.contains(n));
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.of("f-1").len() == 1
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            only_live(consumers(&redis, key, "risk"))
        })
        .await,
        "dead consumers removed: {:?}",
        consumers(&redis, key, "risk")
    );
    assert_eq!(pending(&redis, key, "risk"), 0);
    // Up to Redis 7.0 a live meshlet on a quiet stream may be removed too (its idle time
    // counts from its last read that returned entries): delivery goes on all the same, and
    // the consumer that gets an entry is back in the group.
    let publisher = publisher(&redis).await;
    for i in 2..12 {
        let id = format!("f-{i}");
        assert_eq!(
            publish(publisher.addresses.api, "f", "{}", &[("x-event-id", &id)])
                .await
                .status,
            202
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            (2..12).all(|i| app.of(&format!("f-{i}")).len() == 1)
        })
        .await,
        "delivery goes on"
    );
    let now = consumers(&redis, key, "risk");
    assert!(
        !now.is_empty() && only_live(now.clone()),
        "the consumers that got entries are back: {now:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            pending(&redis, key, "risk") == 0
        })
        .await
    );
    for m in [s, peer, publisher] {
        m.shutdown().await;
    }
}

/// The removal script itself: a consumer with pending entries is never removed, however
/// idle, nor the caller's own consumer.
#[test]
fn forgetting_consumers_spares_pending_entries_and_the_caller() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let key = "mesh:events:{g}";
    create_group(&mut conn, key, "risk");
    for name in ["me", "idle"] {
        create_consumer(&mut conn, key, "risk", name);
    }
    add_entry(&mut conn, key, &[("event_id", "g-1")]);
    read_as(&mut conn, key, "risk", "busy");
    // Min idle -1: every consumer counts as idle long enough.
    let removed: Vec<String> = meshlet::events::scripts::FORGET_CONSUMERS
        .key(key)
        .arg("risk")
        .arg("me")
        .arg(-1)
        .invoke(&mut conn)
        .unwrap();
    assert_eq!(removed, vec!["idle".to_owned()]);
    assert_eq!(consumers(&redis, key, "risk"), vec!["busy", "me"]);
    assert_eq!(pending(&redis, key, "risk"), 1);
}
