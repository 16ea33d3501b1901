//! On `registry.cluster`: the shared flows, and under a publish load the slot of an event
//! stream (and of a hub room) changing hands: `CLUSTER FAILOVER` to its replica, its master
//! SIGKILLed, the slot migrated to another master. Nothing acknowledged is lost, delivery,
//! registration and the hub resume.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::flows::{self, chat, hub_addr, meshlet, stream_key, subscriber, Load};
use crate::support::realtime::{join, join_as};
use crate::support::redis_sets::{ClusterSet, Handover, RedisSet};
use crate::support::{eventually, now_ms, until_status, RecordingApp};
use crate::{blocking, ONE_SET_AT_A_TIME};

/// A generous bound for writes and the hub to resume after the slot changed hands.
const AFTER_FAILOVER: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshlets_register_route_and_deregister() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let set = blocking(ClusterSet::start);
    flows::register_route_deregister(&set).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_dead_lettered_and_replayed() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let set = blocking(|| ClusterSet::start_with(Some("clusterpw")));
    flows::publish_deliver_dead_letter_replay(&set).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_publish_is_refused_and_its_retry_is_a_duplicate() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let set = blocking(ClusterSet::start);
    flows::unconfirmed_publish_is_refused_then_a_duplicate(&set).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_broadcasts_across_two_meshlets() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let set = blocking(ClusterSet::start);
    flows::hub_broadcasts_across_two_meshlets(&set, "lobby").await;
}

/// A room whose slot is on the master of `key` (a handover of that master hits both).
fn room_beside(set: &ClusterSet, key: &str) -> String {
    let master = set.master_of(key);
    (0..500)
        .map(|i| format!("room{i}"))
        .find(|room| set.master_of(&format!("{{{room}}}")) == master)
        .expect("one room in 500 hashes to a given master of three")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_load_loses_no_acknowledged_event() {
    under_load(|set, key| set.failover_master_of(key)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_loses_no_acknowledged_event() {
    under_load(|set, key| set.kill_master_of(key)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_under_load_loses_no_acknowledged_event() {
    under_load(|set, key| set.migrate_slot_of(key)).await;
}

/// A subscriber (`ledger`), a publisher (`orders`) and two hub meshlets with a client each
/// in a room on the stream's master; `disrupt` hands the stream's slot over while `orders`
/// publishes. Afterwards writes, the hub and heartbeats resume within [`AFTER_FAILOVER`],
/// every acknowledged event is in the stream once and delivered, and a refused publish
/// retried with its id is one event.
async fn under_load(disrupt: impl FnOnce(&mut ClusterSet, &str) -> Handover) {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let mut set = blocking(|| ClusterSet::start_with(Some("clusterpw")));
    let stream = stream_key("trade");
    let room = blocking(|| room_beside(&set, &stream));
    let app = RecordingApp::ok().await;
    let ledger = subscriber("ledger", &set, app.addr, "trade", "")
        .start()
        .await;
    let orders = meshlet("orders", &set)
        .with("events:\n  replicas: 1\n")
        .start()
        .await;
    let out = orders.addresses.outbound;
    assert!(until_status(out, "http://ledger/health", 200, Duration::from_secs(5)).await);
    let a = chat(&set).start().await;
    let b = chat(&set).start().await;
    let (mut alice, _) = join_as(hub_addr(&a), "alice").await;
    let (mut bob, _) = join_as(hub_addr(&b), "bob").await;
    join(&mut alice, &room, None).await;
    join(&mut bob, &room, None).await;
    assert!(
        flows::until_room_broadcast_reaches(
            a.addresses.api,
            &room,
            &mut [&mut alice, &mut bob],
            Duration::from_secs(5)
        )
        .await
        .is_some(),
        "the hub works before the slot moves"
    );

    let load = Load::start(orders.addresses.api, "trade", "t", 5_000);
    // Enough events that their dedupe keys make the slot's migration last a while.
    assert!(eventually(Duration::from_secs(10), || async { load.acked() >= 50 }).await);
    let started = Instant::now();
    let handover = blocking(|| disrupt(&mut set, &stream));
    let done = Instant::now();
    let done_ms = now_ms();
    eprintln!(
        "slot {} moved {} -> {} in {:?}",
        handover.slot,
        handover.from,
        handover.to,
        done - started
    );

    let hub_back = flows::until_room_broadcast_reaches(
        b.addresses.api,
        &room,
        &mut [&mut alice, &mut bob],
        Duration::from_secs(20),
    )
    .await;
    let first_ack = {
        let log = load.log.clone();
        let found = eventually(Duration::from_secs(20), || async {
            log.lock().unwrap().first_ack_after(done).is_some()
        })
        .await;
        found
            .then(|| log.lock().unwrap().first_ack_after(done))
            .flatten()
    };
    let key = format!("mesh:inst:ledger:{}", ledger.shared.instance_id);
    let heartbeat_back = eventually(Duration::from_secs(20), || async {
        let hash: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query(&mut set.conn_for(&key))
            .unwrap_or_default();
        hash.get("last_heartbeat")
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| t >= done_ms)
    })
    .await;
    let acked_before = load.acked();
    let _ = eventually(Duration::from_secs(10), || async {
        load.acked() >= acked_before + 50
    })
    .await;
    let log = load.finish().await;
    eprintln!(
        "load: {} acknowledged, {} refused, {} duplicates, longest wait for an answer {:?}; first write after the handover {:?}, hub back {:?}",
        log.acked.len(),
        log.refused.len(),
        log.duplicates.len(),
        log.longest_silence(),
        first_ack.map(|t| t - done),
        hub_back.map(|t| t - done),
    );
    let first_ack = first_ack.expect("a publish acknowledged after the handover");
    assert!(
        first_ack - done <= AFTER_FAILOVER,
        "writes resumed {:?} after",
        first_ack - done
    );
    assert!(
        heartbeat_back,
        "the subscriber keeps its registration fresh"
    );
    let hub_back = hub_back.expect("a room broadcast reached both clients after the handover");
    assert!(
        hub_back - done <= AFTER_FAILOVER,
        "hub back {:?} after",
        hub_back - done
    );
    assert!(until_status(out, "http://ledger/health", 200, Duration::from_secs(5)).await);

    let retried =
        flows::retry_refused(orders.addresses.api, "trade", &log, Duration::from_secs(15)).await;
    assert_eq!(blocking(|| set.master_of(&stream)), handover.to);
    let in_stream = blocking(|| flows::stream_event_ids(&set, &stream));
    let stored: HashSet<String> = in_stream.iter().cloned().collect();
    let mut lost: Vec<String> = log.acked_ids().difference(&stored).cloned().collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "acknowledged but not on the new master: {lost:?}"
    );
    assert_eq!(
        flows::repeated(&in_stream),
        Vec::<String>::new(),
        "an event written twice"
    );
    let mut expected = log.acked_ids();
    expected.extend(retried);
    let missing = flows::missing_deliveries(&app, &expected, Duration::from_secs(30)).await;
    assert!(
        missing.is_empty(),
        "acknowledged, never delivered: {missing:?}"
    );

    a.shutdown().await;
    b.shutdown().await;
    orders.shutdown().await;
    ledger.shutdown().await;
}

/// A pub/sub session on `set`, opened through meshlet's own Redis target (no password).
async fn cluster_pubsub(set: &ClusterSet) -> meshlet::control::redis::PubSub {
    use meshlet::config::{ClusterConfig, Store, Text};
    use meshlet::control::redis::{PubSub, Target};

    let config = ClusterConfig {
        nodes: set
            .masters()
            .iter()
            .map(|a| Text::from(a.to_string().as_str()))
            .collect(),
        password: None,
        username: None,
        tls: false,
    };
    let target = Target::new(Store::Cluster(&config)).unwrap();
    PubSub::open(&target).await.expect("a pub/sub session")
}

/// A room's last client leaves and a new one joins before the hub's pub/sub session read
/// the `sunsubscribe` push of the leave: that push is the session's own, not a slot that
/// moved, so the session goes on and hears the room (docs/realtime.md). Ending it would
/// resubscribe every channel and replay every room's history at each such churn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_left_and_joined_again_keeps_its_pubsub_session() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let set = blocking(ClusterSet::start);
    let mut pubsub = cluster_pubsub(&set).await;
    let channel = vec!["mesh:rt:chat:room:{churn}".to_owned()];
    pubsub.subscribe_sharded(&channel).await.unwrap();
    pubsub.unsubscribe_sharded(&channel).await.unwrap();
    pubsub.subscribe_sharded(&channel).await.unwrap();
    let mut conn = set.conn_for("{churn}");
    let heard: i64 = redis::cmd("SPUBLISH")
        .arg(&channel[0])
        .arg("hello")
        .query(&mut conn)
        .unwrap();
    assert_eq!(heard, 1, "the session is subscribed again");
    let msg = tokio::time::timeout(Duration::from_secs(5), pubsub.next())
        .await
        .expect("an answer within 5 s")
        .expect("the session goes on after its own sunsubscribe");
    assert_eq!(msg.get_payload::<String>().unwrap(), "hello");
}

/// A meshlet holding many rooms and users resubscribes them all after a reconnect. Sent
/// one after another within one 2 s bound, 20,000 never made it (about 13,000 fit on
/// loopback, a few thousand across a network): every new session was cut short the same
/// way and the hub never came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_sharded_channels_are_resubscribed() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let set = blocking(ClusterSet::start);
    let mut pubsub = cluster_pubsub(&set).await;
    let channels: Vec<String> = (0..20_000)
        .map(|i| format!("mesh:rt:chat:user:{{u{i}}}"))
        .collect();
    let started = Instant::now();
    let subscribed = pubsub.subscribe_sharded(&channels).await;
    let took = started.elapsed();
    assert!(subscribed.is_ok(), "{subscribed:?} after {took:?}");
    let last = channels.last().unwrap();
    let mut conn = set.conn_for(&format!("{{u{}}}", 19_999));
    let heard: i64 = redis::cmd("SPUBLISH")
        .arg(last)
        .arg("hi")
        .query(&mut conn)
        .unwrap();
    assert_eq!(heard, 1);
}
