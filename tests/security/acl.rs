//! Redis with a user per service (docs/security.md, "Redis: a user per service"): the ACL
//! rules are read from the page itself, so the example there is the one tested here. Each
//! service's meshlet registers, heartbeats, watches and deregisters with its own user; that
//! user cannot write another service's registry keys, the way a compromised pod would try.

use std::time::Duration;

use crate::support::*;

/// The `ACL SETUSER inventory …` line of docs/security.md, as arguments after `ACL`.
fn documented_rules() -> Vec<String> {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
        .expect("docs/security.md");
    let line = page
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ACL SETUSER inventory "))
        .expect("docs/security.md shows `ACL SETUSER inventory …`");
    line.split_whitespace()
        .skip(1)
        .map(|arg| arg.trim_matches('\'').to_owned())
        .collect()
}

/// Creates the user of `service` with password `password`, from the documented rules.
fn create_user(admin: &mut redis::Connection, service: &str, password: &str) {
    let mut cmd = redis::cmd("ACL");
    for arg in documented_rules() {
        let arg = match arg.as_str() {
            ">INVENTORY_PASSWORD" => format!(">{password}"),
            _ => arg.replace("inventory", service),
        };
        cmd.arg(arg);
    }
    let () = cmd
        .query(admin)
        .expect("the documented ACL rules are valid");
}

fn url_of(redis: &RedisServer, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@127.0.0.1:{}/0", redis.port)
}

/// Runs one command as `conn`'s user; the error code when Redis refuses it.
fn refused(conn: &mut redis::Connection, args: &[&str]) -> Option<String> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<redis::Value>(conn) {
        Ok(_) => None,
        Err(e) => Some(e.code().unwrap_or("?").to_owned()),
    }
}

#[tokio::test]
async fn a_service_user_registers_itself_but_cannot_write_another_services_keys() {
    let redis = RedisServer::start();
    let mut admin = redis.conn();
    create_user(&mut admin, "inventory", "inventory-pw");
    create_user(&mut admin, "orders", "orders-pw");

    let app = Upstream::start("inventory-app").await;
    let inventory = MeshletSpec::new("inventory")
        .app(app.addr)
        .workers(1)
        .redis_url(&url_of(&redis, "inventory", "inventory-pw"))
        .registry("heartbeat: 200ms, ttl: 3s")
        .start()
        .await;
    let orders = MeshletSpec::new("orders")
        .workers(1)
        .redis_url(&url_of(&redis, "orders", "orders-pw"))
        .start()
        .await;
    // inventory registered with its own user, and orders found it with its own.
    assert!(
        until_status(
            orders.addresses.outbound,
            "http://inventory/items",
            200,
            Duration::from_secs(10)
        )
        .await,
        "orders never reached inventory through the registry; ACL LOG: {:?}",
        redis::cmd("ACL")
            .arg("LOG")
            .query::<redis::Value>(&mut admin)
    );
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg("mesh:svc:inventory")
        .arg(0)
        .arg(-1)
        .query(&mut admin)
        .unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let orders_ids: Vec<String> = redis::cmd("ZRANGE")
        .arg("mesh:svc:orders")
        .arg(0)
        .arg(-1)
        .query(&mut admin)
        .unwrap();
    assert!(
        orders_ids.is_empty(),
        "orders has no app: it registers nothing"
    );
    register_by_hand(
        &mut admin,
        "orders",
        "orders-1",
        "127.0.0.1:9".parse().unwrap(),
        60_000,
    );
    // Heartbeats keep going under the ACL: the score moves forward.
    let score = |admin: &mut redis::Connection| -> f64 {
        redis::cmd("ZSCORE")
            .arg("mesh:svc:inventory")
            .arg(&ids[0])
            .query(admin)
            .unwrap()
    };
    let first = score(&mut admin);
    assert!(
        eventually(Duration::from_secs(3), || {
            let now = score(&mut redis.conn());
            async move { now > first }
        })
        .await,
        "no heartbeat under the ACL"
    );

    // A compromised inventory pod holds inventory's Redis user and tries orders' entries.
    let mut attacker = redis::Client::open(url_of(&redis, "inventory", "inventory-pw"))
        .and_then(|c| c.get_connection())
        .expect("inventory's user logs in");
    for attempt in [
        // pose as an instance of orders, to receive its traffic
        &[
            "HSET",
            "mesh:inst:orders:evil",
            "host",
            "10.9.9.9",
            "port",
            "80",
        ][..],
        &["ZADD", "mesh:svc:orders", "9999999999999", "evil"],
        // move or drain orders' real instance
        &["HSET", "mesh:inst:orders:orders-1", "host", "10.9.9.9"],
        &["HSET", "mesh:inst:orders:orders-1", "status", "draining"],
        &["PEXPIRE", "mesh:inst:orders:orders-1", "1"],
        // take orders out of the registry
        &["ZREM", "mesh:svc:orders", "orders-1"],
        &["DEL", "mesh:inst:orders:orders-1"],
        &["DEL", "mesh:svc:orders"],
        &["DEL", "mesh:services"],
        &["SREM", "mesh:services", "orders"],
        &["RENAME", "mesh:svc:orders", "mesh:svc:inventory"],
        // or reach past the registry
        &["FLUSHALL"],
        &["CONFIG", "SET", "requirepass", "x"],
        &[
            "EVAL",
            "return redis.call('DEL', KEYS[1])",
            "1",
            "mesh:svc:orders",
        ],
        &["PUBLISH", "mesh:rt:orders:all", "{}"],
    ] {
        assert_eq!(
            refused(&mut attacker, attempt).as_deref(),
            Some("NOPERM"),
            "inventory's user may run {attempt:?}"
        );
    }
    let still: Vec<String> = redis::cmd("ZRANGE")
        .arg("mesh:svc:orders")
        .arg(0)
        .arg(-1)
        .query(&mut admin)
        .unwrap();
    assert_eq!(still, ["orders-1"]);
    let host: String = redis::cmd("HGET")
        .arg("mesh:inst:orders:orders-1")
        .arg("host")
        .query(&mut admin)
        .unwrap();
    assert_eq!(host, "127.0.0.1");

    // Its own entry it may write, and its meshlet deregisters on shutdown.
    assert_eq!(
        refused(
            &mut attacker,
            &["HSET", "mesh:inst:inventory:spare", "host", "10.0.0.8"]
        ),
        None
    );
    let _: () = redis::cmd("DEL")
        .arg("mesh:inst:inventory:spare")
        .query(&mut attacker)
        .unwrap();
    inventory.shutdown().await;
    let left: usize = redis::cmd("ZCARD")
        .arg("mesh:svc:inventory")
        .query(&mut admin)
        .unwrap();
    assert_eq!(left, 0, "inventory's meshlet deregistered under its ACL");
    orders.shutdown().await;
}
