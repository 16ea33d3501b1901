//! Publishing: one event or an ndjson batch, deduplicated by event id; bad input refused; Redis down
//! or stuck answered fast.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::events::publisher;
use crate::support::{metric, send, RedisServer};
use crate::{batch, publish, xlen};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stores_once_per_event_id() {
    let redis = RedisServer::start();
    let s = publisher(&redis).await;
    let api = s.addresses.api;

    let first = publish(
        api,
        "trade.executed",
        r#"{"px": 1.50}"#,
        &[("x-event-id", "t-1")],
    )
    .await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let first = first.json();
    assert_eq!(first["event_id"], "t-1");
    assert_eq!(first["duplicate"], false);
    let again = publish(
        api,
        "trade.executed",
        r#"{"px": 9}"#,
        &[("x-event-id", "t-1")],
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(again.json()["stream_id"], first["stream_id"]);
    assert_eq!(xlen(&redis, "mesh:events:{trade.executed}"), 1);

    // Idempotency-Key names the event too; without either, a UUIDv7.
    let keyed = publish(api, "trade.executed", "{}", &[("idempotency-key", "k-1")]).await;
    assert_eq!(keyed.json()["event_id"], "k-1");
    let anon = publish(api, "trade.executed", "[1,2]", &[("x-event-version", "3")]).await;
    assert_eq!(anon.status, 202);
    let id = anon.json()["event_id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&id).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 7);

    // The stored entry: every field of docs/events.md.
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("mesh:events:{trade.executed}")
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(entries.len(), 3);
    let stored = &entries[0].1;
    assert_eq!(stored["event_id"], "t-1");
    assert_eq!(stored["event_type"], "trade.executed");
    assert_eq!(stored["source"], "orders");
    assert_eq!(stored["version"], "1");
    assert_eq!(stored["payload"], r#"{"px": 1.50}"#);
    assert_eq!(stored["traceparent"], "");
    let ts = &stored["timestamp"];
    assert!(ts.ends_with('Z') && ts.len() == 24, "RFC 3339 ms UTC: {ts}");
    assert_eq!(entries[2].1["version"], "3");
    // The dedupe key holds the first stream id, expiring with the window.
    let ttl: i64 = redis::cmd("PTTL")
        .arg("mesh:evid:{trade.executed}:orders:t-1")
        .query(&mut redis.conn())
        .unwrap();
    assert!(ttl > 23 * 3600 * 1000, "ttl {ttl}");

    let tel = s.addresses.telemetry;
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_published_total{duplicate="false",type="trade.executed"}"#
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_published_total{duplicate="true",type="trade.executed"}"#
        )
        .await,
        1.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_bad_input() {
    let redis = RedisServer::start();
    let s = publisher(&redis).await;
    let api = s.addresses.api;
    for bad_type in ["bad%20type", &"a".repeat(129), "a/b"] {
        let a = publish(api, bad_type, "{}", &[]).await;
        assert_eq!(a.status, 400, "type {bad_type}");
        assert_eq!(a.header("x-mesh-error"), "bad_request");
    }
    let a = publish(api, "t", "not json", &[]).await;
    assert_eq!(a.status, 400);
    let err = a.json();
    assert_eq!(err["error"], "bad_request");
    assert_eq!(err["service"], "orders");
    assert!(err["request_id"].is_string());
    assert_eq!(publish(api, "t", "", &[]).await.status, 400);
    assert_eq!(
        publish(api, "t", "{}", &[("x-event-version", "two")])
            .await
            .status,
        400
    );
    assert_eq!(
        publish(api, "t", "{}", &[("x-event-id", "has space")])
            .await
            .status,
        400
    );

    let big = format!("\"{}\"", "x".repeat(1024 * 1024));
    let a = publish(api, "t", &big, &[]).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.header("x-mesh-error"), "body_too_large");
    // Exactly at the limit is fine.
    let fits = format!("\"{}\"", "x".repeat(1024 * 1024 - 2));
    assert_eq!(publish(api, "t", &fits, &[]).await.status, 202);
    assert_eq!(xlen(&redis, "mesh:events:{t}"), 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_503_fast_when_redis_is_down_or_stuck() {
    let mut redis = RedisServer::start();
    let s = publisher(&redis).await;
    let api = s.addresses.api;
    assert_eq!(publish(api, "t", "{}", &[]).await.status, 202);

    // Stuck: Redis holds every command for 4 s.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4000)
        .arg("ALL")
        .query(&mut redis.conn())
        .unwrap();
    let started = Instant::now();
    let a = publish(api, "t", "{}", &[("x-event-id", "stuck-1")]).await;
    let took = started.elapsed();
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert_eq!(a.header("x-mesh-error"), "events_unavailable");
    assert!(
        took < Duration::from_millis(2600),
        "bounded wait, took {took:?}"
    );

    // Down: refused at once.
    redis.kill();
    let started = Instant::now();
    let a = publish(api, "t", "{}", &[("x-event-id", "down-1")]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"], "events_unavailable");
    assert!(started.elapsed() < Duration::from_millis(2600));

    // Back (empty): the same id publishes, nothing was silently kept.
    redis.restart();
    let a = publish(api, "t", "{}", &[("x-event-id", "down-1")]).await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publish_answers_a_line_per_event() {
    let redis = RedisServer::start();
    let s = publisher(&redis).await;
    let api = s.addresses.api;
    let batch = |body: &str, id: Option<&str>| batch("b", id, body);
    let a = send(
        api,
        batch("{\"n\":1}\n\n[2]\r\n\"three\"\n", Some("batch-7")),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), "application/x-ndjson");
    let lines: Vec<serde_json::Value> = String::from_utf8(a.body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["event_id"], "batch-7:0");
    assert_eq!(lines[2]["event_id"], "batch-7:2");
    assert!(lines.iter().all(|l| l["duplicate"] == false));
    assert_eq!(xlen(&redis, "mesh:events:{b}"), 3);
    // Sent again (the producer did not see the answer): nothing doubles.
    let again = send(api, batch("{\"n\":1}\n[2]\n\"three\"\n", Some("batch-7")))
        .await
        .unwrap();
    assert!(String::from_utf8(again.body.to_vec())
        .unwrap()
        .lines()
        .all(|l| l.contains("\"duplicate\":true")));
    assert_eq!(xlen(&redis, "mesh:events:{b}"), 3);
    // A bad line refuses the batch whole.
    let bad = send(api, batch("{}\nnope\n", None)).await.unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.json()["message"].as_str().unwrap().contains("line 2"));
    assert_eq!(xlen(&redis, "mesh:events:{b}"), 3);
    // Thousands in one request.
    let many: String = (0..5000).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let started = Instant::now();
    let a = send(api, batch(&many, None)).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-event-count"), "5000");
    eprintln!("batch of 5000 published in {:?}", started.elapsed());
    assert_eq!(xlen(&redis, "mesh:events:{b}"), 5003);
    s.shutdown().await;
}

/// A batch in which one event fails answers 503 with what was confirmed, and the published
/// counter counts the events that were stored (it used to count none of the batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_short_counts_what_it_stored() {
    let redis = RedisServer::start();
    // The dedupe key of line 1000 (the first of the second chunk of 1000) is not a string:
    // the publish script fails there (WRONGTYPE), after the first chunk was stored.
    let _: i64 = redis::cmd("HSET")
        .arg("mesh:evid:{cut}:orders:cut:1000")
        .arg("x")
        .arg("y")
        .query(&mut redis.conn())
        .unwrap();
    let s = publisher(&redis).await;
    let lines: String = (0..1500).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let a = send(s.addresses.api, batch("cut", Some("cut"), &lines))
        .await
        .unwrap();
    assert_eq!(a.status, 503, "{}", String::from_utf8_lossy(&a.body));
    // Redis runs the rest of the pipeline: every event but the poisoned one is stored,
    // and the answer and the counter say so.
    let text = String::from_utf8_lossy(&a.body).into_owned();
    assert!(text.contains("event 1000 (0-based)"), "{text}");
    assert!(
        text.contains("1499 of 1500 events confirmed stored"),
        "{text}"
    );
    assert_eq!(xlen(&redis, "mesh:events:{cut}"), 1499);
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_events_published_total{duplicate="false",type="cut"}"#
        )
        .await,
        1499.0
    );
    s.shutdown().await;
}
