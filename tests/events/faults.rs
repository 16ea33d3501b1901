//! Faults mid-stream: Redis restarted empty or with its data, a subscriber SIGKILLed and
//! started again.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::events::{
    config, group_exists, publisher, subscriber, subscription, Deliveries, Delivery,
};
use crate::support::{
    eventually, send, RecordedRequest, Recording, RecordingApp, RedisServer, FREE_PORTS,
};
use crate::{batch, publish};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream_recreates_the_group_and_delivery_resumes() {
    let mut redis = RedisServer::start();
    let app = RecordingApp::ok().await;
    let s = subscriber("risk", &redis, &app, "m", ", start: latest").await;
    let api = s.addresses.api;
    assert_eq!(
        publish(api, "m", "{}", &[("x-event-id", "before")])
            .await
            .status,
        202
    );
    assert!(eventually(Duration::from_secs(5), || async { app.count() == 1 }).await);

    redis.restart(); // empty: stream and group gone
                     // Publish until Redis takes it (the first tries may meet the dead connection).
    let mut stored = false;
    for _ in 0..50 {
        if publish(api, "m", "{}", &[("x-event-id", "after-1")])
            .await
            .status
            == 202
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored, "publish resumes by itself");
    assert_eq!(
        publish(api, "m", "{}", &[("x-event-id", "after-2")])
            .await
            .status,
        202
    );
    // The group is recreated at 0: events published since the restart are not skipped.
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.of("after-1").len() == 1 && app.of("after-2").len() == 1
        })
        .await,
        "delivered after the restart: {:?}",
        app.recorded()
            .iter()
            .map(RecordedRequest::event_id)
            .collect::<Vec<_>>()
    );
    assert!(group_exists(&redis, "mesh:events:{m}", "risk").await);
    s.shutdown().await;
}

/// A subscriber meshlet run as a child process from a config file, so that a test can
/// SIGKILL it and start it again on the same config.
struct ChildMeshlet {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl ChildMeshlet {
    /// Writes `yaml` (plus free ports for every listener) to a config file of its own.
    fn write(yaml: &str) -> ChildMeshlet {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshlet.yaml");
        std::fs::write(&path, format!("{yaml}{}", FREE_PORTS)).unwrap();
        ChildMeshlet { _dir: dir, path }
    }

    fn start(&self) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshlet"))
            .args(["run", "--config"])
            .arg(&self.path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("meshlet starts")
    }
}

/// A subscriber meshlet process killed with SIGKILL mid-stream and started again: every
/// event reaches the app at least once (the dead consumer's pending entries are taken over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_killed_mid_stream_loses_nothing() {
    let redis = RedisServer::start();
    let app = RecordingApp::ok().await;
    app.slow(1);
    let risk = ChildMeshlet::write(&config(
        "risk",
        &redis,
        Some(app.addr),
        &subscription("k", ", concurrency: 4"),
    ));
    let mut first = risk.start();
    assert!(group_exists(&redis, "mesh:events:{k}", "risk").await);
    let publisher = publisher(&redis).await;
    const N: usize = 1500;
    let lines: String = (0..N).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let req = batch("k", Some("k"), &lines);
    assert_eq!(
        send(publisher.addresses.api, req).await.unwrap().status,
        200
    );
    assert!(eventually(Duration::from_secs(10), || async { app.count() >= 200 }).await);
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let at_kill = app.count();
    assert!(at_kill < N, "killed mid-stream ({at_kill} of {N})");
    let mut second = risk.start();
    let all = eventually(Duration::from_secs(20), || async {
        let ids: HashSet<String> = app
            .recorded()
            .iter()
            .map(RecordedRequest::event_id)
            .collect();
        ids.len() == N
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();
    let total = app.count();
    assert!(
        all,
        "every event delivered at least once ({total} deliveries)"
    );
    eprintln!("killed after {at_kill} deliveries; {total} deliveries for {N} events");
    publisher.shutdown().await;
}

/// The "done when" of issue 7: 10,000 events published while the subscriber's meshlet is
/// SIGKILLed and started again, and while Redis (`appendonly yes`) is restarted once; every
/// event id reaches the app at least once. The restart is a graceful SHUTDOWN on the same
/// dir and port, so Redis keeps everything (`appendfsync everysec` would lose up to a
/// second of writes only if the host itself went down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_survive_a_killed_subscriber_and_a_redis_restart() {
    const N: usize = 10_000;
    const BATCH: usize = 100;
    /// Publishing runs at most this far ahead of the app, so it goes on through the kill
    /// and the Redis restart instead of finishing before them.
    const AHEAD: usize = 2_000;
    let mut redis = RedisServer::start_appendonly();
    let app = RecordingApp::ok().await;
    let risk = ChildMeshlet::write(&config(
        "risk",
        &redis,
        Some(app.addr),
        &subscription("r", ", concurrency: 8"),
    ));
    let mut subscriber = risk.start();
    assert!(group_exists(&redis, "mesh:events:{r}", "risk").await);
    let publisher = publisher(&redis).await;
    let producer = Producer::spawn(
        publisher.addresses.api,
        app.recording.clone(),
        N / BATCH,
        BATCH,
        AHEAD,
    );

    assert!(
        eventually(Duration::from_secs(60), || async {
            app.distinct_events() >= 1_500
        })
        .await,
        "delivery started"
    );
    subscriber.kill().expect("SIGKILL");
    let _ = subscriber.wait();
    let at_kill = app.distinct_events();
    let mut subscriber = risk.start();
    assert!(
        eventually(Duration::from_secs(60), || async {
            app.distinct_events() >= 5_000
        })
        .await,
        "delivery resumed after the kill ({} of {N})",
        app.distinct_events()
    );
    let before_restart = producer.published.load(Ordering::SeqCst);
    publish_across_a_redis_restart(&mut redis, publisher.addresses.api, BATCH).await;
    let total = N + BATCH;
    let all = eventually(Duration::from_secs(120), || async {
        app.distinct_events() == total
    })
    .await;
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    producer.task.await.expect("every batch published");
    let seen: HashSet<String> = app
        .recorded()
        .iter()
        .map(RecordedRequest::event_id)
        .collect();
    let missing: Vec<String> = (0..N / BATCH)
        .flat_map(|b| (0..BATCH).map(move |i| format!("r{b}:{i}")))
        .chain((0..BATCH).map(|i| format!("down:{i}")))
        .filter(|id| !seen.contains(id))
        .collect();
    assert!(
        all && missing.is_empty(),
        "{} of {total} event ids never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(seen.len(), total, "nothing but the published ids arrived");
    assert!(
        at_kill < N && before_restart < N,
        "both faults hit mid-stream"
    );
    eprintln!(
        "killed at {at_kill} delivered, Redis restarted at {before_restart} published, {} batch sends repeated; {} deliveries for {total} events",
        producer.resent.load(Ordering::SeqCst),
        app.count()
    );
    publisher.shutdown().await;
}

/// Publishes batches of `r` events in the background.
struct Producer {
    /// Events published so far (whole batches).
    published: Arc<AtomicUsize>,
    /// Batch sends that failed and were sent again.
    resent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    /// `batches` batches of `batch_size` events with ids `r{batch}:{line}`, each sent only while
    /// fewer than `ahead` published events have not reached the app yet (what `received`
    /// recorded). A batch that meets Redis down (503) or a dead connection is sent again with
    /// the same id: the dedupe stores only what is missing.
    fn spawn(
        api: SocketAddr,
        received: Recording,
        batches: usize,
        batch_size: usize,
        ahead: usize,
    ) -> Producer {
        let published = Arc::new(AtomicUsize::new(0));
        let resent = Arc::new(AtomicUsize::new(0));
        let counters = (published.clone(), resent.clone());
        let task = tokio::spawn(async move {
            let (published, resent) = counters;
            let deadline = Instant::now() + Duration::from_secs(120);
            for b in 0..batches {
                let in_reach = eventually(Duration::from_secs(60), || async {
                    published.load(Ordering::SeqCst) < received.distinct_events() + ahead
                })
                .await;
                assert!(in_reach, "the app stopped receiving");
                let lines: String = (0..batch_size)
                    .map(|i| format!("{{\"b\":{b},\"i\":{i}}}\n"))
                    .collect();
                loop {
                    assert!(Instant::now() < deadline, "batch {b} never stored");
                    let req = batch("r", Some(&format!("r{b}")), &lines);
                    match send(api, req).await {
                        Ok(a) if a.status == 200 => break,
                        _ => {
                            resent.fetch_add(1, Ordering::SeqCst);
                            // Redis is restarting: try again shortly.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                published.store((b + 1) * batch_size, Ordering::SeqCst);
            }
        });
        Producer {
            published,
            resent,
            task,
        }
    }
}

/// Shuts `redis` down and starts it again on its data. While it is down a batch of `events`
/// `r` events (id `down`) is refused (not stored), never dropped silently; once Redis is
/// back the same batch is stored.
async fn publish_across_a_redis_restart(redis: &mut RedisServer, api: SocketAddr, events: usize) {
    tokio::task::block_in_place(|| redis.shutdown());
    let outage: String = (0..events).map(|i| format!("{{\"down\":{i}}}\n")).collect();
    let outage_batch = || batch("r", Some("down"), &outage);
    let refused = send(api, outage_batch()).await.unwrap();
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    tokio::task::block_in_place(|| redis.start_again());
    // The first try may meet the dead connection.
    let mut stored = false;
    for _ in 0..100 {
        if send(api, outage_batch()).await.unwrap().status == 200 {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored, "publishing resumes after the restart");
}
