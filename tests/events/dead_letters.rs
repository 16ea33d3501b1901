//! Dead letters: rejected at once or exhausted after the last attempt; listed, paged and
//! replayed over the local API and the CLI.

use std::time::Duration;

use crate::support::events::{config, subscriber, subscription, Deliveries, Delivery};
use crate::support::{eventually, metric, sidecar, RecordedRequest, RecordingApp, RedisServer};
use crate::{api_get, api_post, dlq_entries, pending, publish};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_dead_letters_at_once_as_rejected() {
    let redis = RedisServer::start();
    let app = RecordingApp::answering(|_: &RecordedRequest| 422).await;
    let s = subscriber("notifier", &redis, &app, "p", "").await;
    assert_eq!(
        publish(
            s.addresses.api,
            "p",
            r#"{"poison":true}"#,
            &[("x-event-id", "p-1")],
        )
        .await
        .status,
        202
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            dlq_entries(&redis, "p").len() == 1
        })
        .await
    );
    let dead = &dlq_entries(&redis, "p")[0];
    assert_eq!(dead["event_id"], "p-1");
    assert_eq!(dead["payload"], r#"{"poison":true}"#);
    assert_eq!(dead["source"], "notifier");
    assert_eq!(dead["group"], "notifier");
    assert_eq!(dead["reason"], "rejected");
    assert_eq!(dead["attempts"], "1");
    assert_eq!(dead["last_status"], "422");
    assert!(dead["failed_at"].ends_with('Z'));
    assert_eq!(pending(&redis, "mesh:events:{p}", "notifier"), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count(), 1, "delivered once, not retried");
    assert_eq!(
        metric(
            s.addresses.telemetry,
            r#"meshlet_events_dead_letters_total{reason="rejected",type="p"}"#
        )
        .await,
        1.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausts_after_max_attempts_then_dead_letters() {
    let redis = RedisServer::start();
    let app = RecordingApp::answering(|_: &RecordedRequest| 500).await;
    let s = subscriber("ledger", &redis, &app, "x", ", max_attempts: 3").await;
    assert_eq!(
        publish(s.addresses.api, "x", "{}", &[("x-event-id", "x-1")])
            .await
            .status,
        202
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            dlq_entries(&redis, "x").len() == 1
        })
        .await
    );
    let dead = &dlq_entries(&redis, "x")[0];
    assert_eq!(dead["reason"], "exhausted");
    assert_eq!(dead["attempts"], "3");
    assert_eq!(dead["last_status"], "500");
    let attempts: Vec<u32> = app.of("x-1").iter().map(RecordedRequest::attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert_eq!(pending(&redis, "mesh:events:{x}", "ledger"), 0);
    let tel = s.addresses.telemetry;
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_dead_letters_total{reason="exhausted",type="x"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            tel,
            r#"meshlet_events_delivered_total{outcome="dead_letter",type="x"}"#
        )
        .await,
        1.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_page_and_replay() {
    let redis = RedisServer::start();
    let app = RecordingApp::answering(|_: &RecordedRequest| 400).await;
    let s = subscriber("notifier", &redis, &app, "q", "").await;
    let api = s.addresses.api;
    for i in 0..3 {
        assert_eq!(
            publish(
                api,
                "q",
                &format!("{{\"i\":{i}}}"),
                &[("x-event-id", &format!("q-{i}"))],
            )
            .await
            .status,
            202
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            dlq_entries(&redis, "q").len() == 3
        })
        .await
    );

    let page = api_get(api, "/v1/events/dlq/q?count=2").await;
    assert_eq!(page.status, 200);
    let page = page.json();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["event_id"], "q-0");
    assert_eq!(entries[0]["reason"], "rejected");
    assert_eq!(entries[0]["payload"]["i"], 0);
    let next = page["next"].as_str().unwrap().to_owned();
    let rest = api_get(api, &format!("/v1/events/dlq/q?after={next}&count=2"))
        .await
        .json();
    assert_eq!(rest["entries"].as_array().unwrap().len(), 1);
    assert_eq!(rest["entries"][0]["event_id"], "q-2");
    assert!(rest["next"].is_null());
    assert_eq!(
        api_get(api, "/v1/events/dlq/q?count=zero").await.status,
        400
    );

    // The app is fixed: replay one by id, then the rest.
    app.answer_with(|_| 200);
    let first_id = entries[0]["id"].as_str().unwrap().to_owned();
    let one = api_post(
        api,
        "/v1/events/dlq/q/replay",
        &format!("{{\"ids\":[\"{first_id}\",\"1-1\"]}}"),
    )
    .await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    let one = one.json();
    assert_eq!(one["replayed"], 1);
    assert_eq!(one["events"][0]["event_id"], "q-0");
    assert_eq!(one["missing"][0], "1-1");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.of("q-0").len() == 2
        })
        .await
    );
    assert_eq!(dlq_entries(&redis, "q").len(), 2);
    let all = api_post(api, "/v1/events/dlq/q/replay", "").await.json();
    assert_eq!(all["replayed"], 2);
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 6 }).await);
    // Replayed with the same event id and payload; the DLQ is empty; nothing pending.
    let replayed = app.of("q-2");
    assert_eq!(replayed[1].json()["payload"]["i"], 2);
    assert!(dlq_entries(&redis, "q").is_empty());
    assert!(
        eventually(Duration::from_secs(3), || async {
            pending(&redis, "mesh:events:{q}", "notifier") == 0
        })
        .await
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_publishes_lists_and_replays() {
    let redis = RedisServer::start();
    let bin = env!("CARGO_BIN_EXE_meshlet");
    let url = redis.url();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["events", "--redis", &url])
            .args(args)
            .output()
            .expect("meshlet runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run(&["publish", "c", r#"{"a":1}"#, "--id", "c-1"]);
    let published: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(published["event_id"], "c-1");
    assert_eq!(published["duplicate"], false);
    let out = run(&["publish", "c", r#"{"a":1}"#, "--id", "c-1"]);
    assert!(out.contains("\"duplicate\":true"));
    let tail = run(&["tail", "c", "--from", "0", "--count", "1"]);
    assert!(tail.contains("\"event_id\":\"c-1\""), "{tail}");

    // A dead letter, written the way a meshlet writes one.
    let app = RecordingApp::answering(|_: &RecordedRequest| 404).await;
    let s = sidecar(&config(
        "svc",
        &redis,
        Some(app.addr),
        &subscription("c", ""),
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            dlq_entries(&redis, "c").len() == 1
        })
        .await
    );
    let listed = run(&["dlq", "list", "c"]);
    let dead: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(dead["event_id"], "c-1");
    assert_eq!(dead["reason"], "rejected");
    app.answer_with(|_| 200);
    let id = dead["id"].as_str().unwrap();
    let replayed = run(&["dlq", "replay", "c", "--id", id]);
    assert!(replayed.contains("\"event_id\":\"c-1\""), "{replayed}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.of("c-1").len() == 2
        })
        .await
    );
    assert!(dlq_entries(&redis, "c").is_empty());
    s.shutdown().await;
}
