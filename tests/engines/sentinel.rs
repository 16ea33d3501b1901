//! On `registry.sentinel`: the shared flows, and the master SIGKILLed under a publish load
//! (docs/scaling.md: every acknowledged event survives; within 10 s of the sentinels'
//! switch the meshlets write to the new master without a restart, re-register and the hub
//! broadcasts again).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::flows::{self, chat, hub_addr, meshlet, stream_key, subscriber, Load};
use crate::support::realtime::{join, join_as};
use crate::support::redis_sets::{Auth, RedisSet, SentinelSet};
use crate::support::{eventually, metric, now_ms, until_status, RecordingApp};
use crate::{blocking, ONE_SET_AT_A_TIME};

/// docs/scaling.md: the new master is written within 10 s of `+switch-master`.
const AFTER_SWITCH: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshlets_register_route_and_deregister() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let set = blocking(SentinelSet::start);
    flows::register_route_deregister(&set).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_is_found_through_any_sentinel_that_answers() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let mut set = blocking(SentinelSet::start);
    // The first sentinel a meshlet is given is gone.
    set.kill_sentinel(0);
    flows::register_route_deregister(&set).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_dead_lettered_and_replayed() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    // With passwords on the data nodes and on the sentinels.
    let set = blocking(|| SentinelSet::start_with(Auth::passwords("datapw", "sentinelpw")));
    flows::publish_deliver_dead_letter_replay(&set).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_publish_is_refused_and_its_retry_is_a_duplicate() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let set = blocking(SentinelSet::start);
    flows::unconfirmed_publish_is_refused_then_a_duplicate(&set).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_broadcasts_across_two_meshlets() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let set = blocking(SentinelSet::start);
    flows::hub_broadcasts_across_two_meshlets(&set, "lobby").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_loses_no_acknowledged_event() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let mut set = blocking(|| SentinelSet::start_with(Auth::passwords("datapw", "sentinelpw")));
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
    join(&mut alice, "lobby", None).await;
    join(&mut bob, "lobby", None).await;
    assert!(
        flows::until_room_broadcast_reaches(
            a.addresses.api,
            "lobby",
            &mut [&mut alice, &mut bob],
            Duration::from_secs(5)
        )
        .await
        .is_some(),
        "the hub works before the failure"
    );

    let load = Load::start(orders.addresses.api, "trade", "t", 5_000);
    assert!(eventually(Duration::from_secs(5), || async { load.acked() >= 20 }).await);
    let unreplicated = "meshlet_events_unreplicated_total";
    let tel = orders.addresses.telemetry;
    assert_eq!(metric(tel, unreplicated).await, 0.0, "WAIT saw the replica");
    let killed_at = Instant::now();
    let switch = blocking(|| {
        set.kill_master();
        set.wait_switch(Duration::from_secs(30))
    });
    let switch_ms = now_ms() - switch.at.elapsed().as_millis() as u64;
    eprintln!(
        "switch {} -> {} seen {:?} after the kill",
        switch.from,
        switch.to,
        switch.at - killed_at
    );

    // The hub: a room broadcast posted on B reaches alice (on A) and bob (on B) again.
    let hub_back = flows::until_room_broadcast_reaches(
        b.addresses.api,
        "lobby",
        &mut [&mut alice, &mut bob],
        Duration::from_secs(20),
    )
    .await;
    // Writes: the first publish acknowledged after the switch (the old master is dead, so
    // it was written to the new one).
    let first_ack = {
        let log = load.log.clone();
        let found = eventually(Duration::from_secs(20), || async {
            log.lock().unwrap().first_ack_after(switch.at).is_some()
        })
        .await;
        found
            .then(|| log.lock().unwrap().first_ack_after(switch.at))
            .flatten()
    };
    // Registration: the subscriber's heartbeat reaches the new master.
    let key = format!("mesh:inst:ledger:{}", ledger.shared.instance_id);
    let heartbeat_back = eventually(Duration::from_secs(20), || async {
        let hash: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query(&mut set.conn_for(&key))
            .unwrap_or_default();
        hash.get("last_heartbeat")
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| t >= switch_ms)
    })
    .await;
    let heartbeat_after = switch.at.elapsed();
    let acked_before = load.acked();
    let _ = eventually(Duration::from_secs(10), || async {
        load.acked() >= acked_before + 50
    })
    .await;
    let log = load.finish().await;
    eprintln!(
        "load: {} acknowledged, {} refused, {} duplicates, longest wait for an answer {:?}; first write after the switch {:?}, hub back {:?}, heartbeat within {heartbeat_after:?}",
        log.acked.len(),
        log.refused.len(),
        log.duplicates.len(),
        log.longest_silence(),
        first_ack.map(|t| t - switch.at),
        hub_back.map(|t| t - switch.at),
    );
    let first_ack = first_ack.expect("a publish acknowledged after the switch");
    assert!(
        first_ack - switch.at <= AFTER_SWITCH,
        "first write to the new master {:?} after the switch",
        first_ack - switch.at
    );
    assert!(
        heartbeat_back,
        "the subscriber's registration reached the new master"
    );
    let hub_back = hub_back.expect("a room broadcast reached both clients after the switch");
    assert!(
        hub_back - switch.at <= AFTER_SWITCH,
        "hub back {:?} after the switch",
        hub_back - switch.at
    );
    assert!(until_status(out, "http://ledger/health", 200, Duration::from_secs(5)).await);

    // Nothing acknowledged is lost; a refused publish retried with its id is one event.
    let retried =
        flows::retry_refused(orders.addresses.api, "trade", &log, Duration::from_secs(15)).await;
    let in_stream = blocking(|| flows::stream_event_ids(&set, &stream_key("trade")));
    let stored: std::collections::HashSet<String> = in_stream.iter().cloned().collect();
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

    // The new master has no replica: acknowledged without WAIT, and counted. Once the old
    // master is back as its replica, publishes wait for it again.
    let without_replica = metric(tel, unreplicated).await;
    assert!(
        without_replica > 0.0,
        "publishes without a replica are counted"
    );
    blocking(|| set.revive_killed());
    for i in 0..5 {
        let a = flows::publish(orders.addresses.api, "trade", &format!("after-{i}"), "{}").await;
        assert_eq!(a.status, 202, "{:?}", a.body);
    }
    assert_eq!(
        metric(tel, unreplicated).await,
        without_replica,
        "WAIT again"
    );

    a.shutdown().await;
    b.shutdown().await;
    orders.shutdown().await;
    ledger.shutdown().await;
}

/// A planned failover (`SENTINEL FAILOVER`): the old master is not killed, and answers as a
/// master with no replica from its replica's promotion until the sentinels demote it;
/// whatever it acknowledged then would be lost at the demotion. meshlet refuses (503) a
/// publish no replica confirmed unless every sentinel confirms its master, and drops its
/// connections at `+switch-master` (docs/scaling.md): nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_loses_no_acknowledged_event() {
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let mut set = blocking(SentinelSet::start);
    let orders = meshlet("orders", &set)
        .with("events:\n  replicas: 1\n")
        .start()
        .await;
    let load = Load::start(orders.addresses.api, "plan", "p", 5_000);
    assert!(eventually(Duration::from_secs(5), || async { load.acked() >= 20 }).await);
    let switch = blocking(|| {
        let old = set.fail_over();
        let switch = set.wait_switch(Duration::from_secs(30));
        // Demoted: from here on it holds only what the new master has.
        set.wait_replica(old, Duration::from_secs(30));
        switch
    });
    let acked_before = load.acked();
    assert!(
        eventually(Duration::from_secs(10), || async {
            load.acked() >= acked_before + 20
        })
        .await,
        "publishes are acknowledged again after the switch"
    );
    let log = load.finish().await;
    eprintln!(
        "planned failover {} -> {}: {} acknowledged, {} refused",
        switch.from,
        switch.to,
        log.acked.len(),
        log.refused.len()
    );
    let in_stream = blocking(|| flows::stream_event_ids(&set, &stream_key("plan")));
    let stored: std::collections::HashSet<String> = in_stream.into_iter().collect();
    let mut lost: Vec<String> = log.acked_ids().difference(&stored).cloned().collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "acknowledged, then lost at the demotion: {lost:?}"
    );
    orders.shutdown().await;
}

/// `Sentinels::confirms_master` (asked before acknowledging a publish no replica confirmed)
/// counts the sentinels that answer: one hung sentinel (it accepts connections and never
/// replies) must not veto the others' answer and turn every such publish into a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sentinel_does_not_veto_the_others_confirmation() {
    use meshlet::config::{SentinelConfig, Store, Text};
    use meshlet::control::redis::Target;

    let _one = ONE_SET_AT_A_TIME.lock().await;
    let set = blocking(SentinelSet::start);
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("a local listener");
    let mut nodes: Vec<Text> = set
        .sentinel_addrs()
        .iter()
        .map(|a| Text::from(a.to_string().as_str()))
        .collect();
    nodes.push(Text::from(hung.local_addr().unwrap().to_string().as_str()));
    let config = SentinelConfig {
        master: Text::from(crate::support::redis_sets::MASTER_NAME),
        nodes,
        password: None,
        username: None,
        sentinel_password: None,
        tls: false,
    };
    let Target::Sentinel(sentinels) = Target::new(Store::Sentinel(&config)).unwrap() else {
        panic!("a sentinel target");
    };
    let master = set.master_addr().to_string();
    assert!(
        sentinels.confirms_master(&master).await,
        "three answering sentinels name {master}; the hung fourth must not count"
    );
    assert!(!sentinels.confirms_master("127.0.0.1:1").await);
}
