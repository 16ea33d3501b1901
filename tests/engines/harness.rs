//! The sets alone, no meshlet: a [`SentinelSet`] fails over to its replica when its master is
//! SIGKILLed and takes the old master back as a replica; a [`ClusterSet`] hands a slot to
//! the replica on `CLUSTER FAILOVER` and to another master on a migration, keys and all.

use std::time::{Duration, Instant};

use crate::support::redis_sets::{Auth, ClusterSet, RedisSet, SentinelSet};
use crate::ONE_SET_AT_A_TIME;

fn info_field(conn: &mut redis::Connection, field: &str) -> String {
    let text: String = redis::cmd("INFO").arg("replication").query(conn).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn a_sentinel_set_fails_over_when_its_master_is_killed() {
    let _one = ONE_SET_AT_A_TIME.blocking_lock();
    let mut set = SentinelSet::start_with(Auth::passwords("datapw", "sentinelpw"));
    assert_eq!(set.sentinel_addrs().len(), 3);
    let master = set.master_addr();
    let replica = set.replica_addrs();
    assert_eq!(replica.len(), 1, "one replica besides {master}");
    let entry = set.registry_entry();
    assert!(
        entry.starts_with("sentinel: {master: mymaster, nodes: [\"127.0.0.1:"),
        "{entry}"
    );
    assert!(
        entry.ends_with(", password: \"datapw\", sentinel_password: \"sentinelpw\"}"),
        "{entry}"
    );

    // Written and confirmed on the replica (what `events.replicas: 1` waits for).
    let mut conn = set.master_conn();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1_000)
        .query(&mut conn)
        .unwrap();
    assert_eq!(acked, 1);

    let killed_at = Instant::now();
    assert_eq!(set.kill_master(), master);
    let switch = set.wait_switch(Duration::from_secs(30));
    eprintln!(
        "sentinel switch {} -> {} seen {:?} after the kill",
        switch.from,
        switch.to,
        switch.at - killed_at
    );
    assert_eq!(switch.from, master);
    assert_eq!(switch.to, replica[0], "the replica was promoted");
    assert_eq!(set.master_addr(), replica[0]);
    let v: String = redis::cmd("GET")
        .arg("k")
        .query(&mut set.master_conn())
        .unwrap();
    assert_eq!(v, "v", "a confirmed write survives the failover");
    assert!(set.replica_addrs().is_empty(), "the old master is down");

    set.revive_killed();
    assert_eq!(
        set.replica_addrs(),
        vec![master],
        "the old master is a replica now"
    );
    let mut conn = set.master_conn();
    assert_eq!(info_field(&mut conn, "connected_slaves"), "1");
}

#[test]
fn a_cluster_set_hands_a_slot_over_on_failover_and_migration() {
    let _one = ONE_SET_AT_A_TIME.blocking_lock();
    let set = ClusterSet::start_with(Some("clusterpw"));
    assert_eq!(set.seed_addrs().len(), 6);
    assert_eq!(set.masters().len(), 3);
    let map = set.slot_map();
    assert_eq!(
        map.iter()
            .map(|r| u32::from(r.end - r.start) + 1)
            .sum::<u32>(),
        16_384
    );
    assert!(map.iter().all(|r| r.replicas.len() == 1), "{map:?}");
    let entry = set.registry_entry();
    assert!(
        entry.starts_with("cluster: {nodes: [\"127.0.0.1:"),
        "{entry}"
    );
    assert!(entry.ends_with(", password: \"clusterpw\"}"), "{entry}");

    // Keys with the same hash tag share a slot.
    let key = "mesh:events:{trade.executed}";
    assert_eq!(set.slot_of(key), set.slot_of("mesh:dlq:{trade.executed}"));
    let mut conn = set.conn_for(key);
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("v")
        .query(&mut conn)
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1_000)
        .query(&mut conn)
        .unwrap();
    assert_eq!(acked, 1);

    let failover = set.failover_master_of(key);
    assert_ne!(failover.from, failover.to);
    assert_eq!(set.master_of(key), failover.to);
    assert_eq!(set.masters().len(), 3, "still three masters");
    let v: String = redis::cmd("GET")
        .arg(key)
        .query(&mut set.conn_for(key))
        .unwrap();
    assert_eq!(v, "v");
    let moved: redis::RedisResult<String> = redis::cmd("GET")
        .arg(key)
        .query(&mut set.conn_to(failover.from));
    assert!(
        moved
            .as_ref()
            .is_err_and(|e| format!("{e:?}").to_lowercase().contains("moved")),
        "the old master redirects: {moved:?}"
    );

    let migration = set.migrate_slot_of(key);
    assert_eq!(migration.from, failover.to);
    assert_ne!(migration.to, migration.from);
    assert_eq!(set.master_of(key), migration.to);
    let v: String = redis::cmd("GET")
        .arg(key)
        .query(&mut set.conn_for(key))
        .unwrap();
    assert_eq!(v, "v", "the key moved with its slot");
}
