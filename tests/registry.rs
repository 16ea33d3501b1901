//! The Redis registry end to end: hand registration, removal and TTL expiry seen within
//! 2 s, self-registration, two meshlets talking, and Redis killed mid-traffic.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// `name`'s meshlet: one worker, on `redis` with a 3 s ttl and 1 s heartbeats.
fn meshlet(name: &str, redis: &RedisServer) -> MeshletSpec {
    MeshletSpec::new(name)
        .workers(1)
        .redis(redis)
        .registry("ttl: 3s, heartbeat: 1s")
}

/// The caller, `orders`, resyncing every 5 s.
fn orders(redis: &RedisServer) -> MeshletSpec {
    meshlet("orders", redis).registry("resync: 5s")
}

async fn status_of(out: SocketAddr, url: &str) -> u16 {
    get_via(out, url).await.status.as_u16()
}

#[tokio::test]
async fn an_instance_registered_by_hand_gets_traffic_and_leaves_within_2s() {
    let redis = RedisServer::start();
    let up = Upstream::start("inventory-1").await;
    let s = orders(&redis).start().await;
    until_ready(&s).await;
    let out = s.addresses.outbound;
    assert_eq!(
        status_of(out, "http://inventory/").await,
        404,
        "unknown before registration"
    );

    let mut conn = redis.conn();
    register_by_hand(&mut conn, "inventory", "inv-1", up.addr, 30_000);
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || async {
            status_of(out, "http://inventory/").await == 200
        })
        .await
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let a = get_via(out, "http://inventory/x").await;
    assert_eq!(a.json()["upstream"], "inventory-1");

    deregister_by_hand(&mut conn, "inventory", "inv-1");
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || async {
            status_of(out, "http://inventory/").await == 503
        })
        .await
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let a = get_via(out, "http://inventory/").await;
    assert_eq!(a.header("x-mesh-error"), "no_endpoints");
}

#[tokio::test]
async fn an_instance_whose_ttl_passes_is_dropped_without_any_message() {
    let redis = RedisServer::start();
    let up = Upstream::start("short-lived").await;
    let s = orders(&redis).start().await;
    until_ready(&s).await;
    let out = s.addresses.outbound;
    let mut conn = redis.conn();
    register_by_hand(&mut conn, "ephemeral", "e-1", up.addr, 1_200);
    let registered = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || async {
            status_of(out, "http://ephemeral/").await == 200
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            status_of(out, "http://ephemeral/").await == 503
        })
        .await
    );
    let gone_after = registered.elapsed();
    assert!(
        gone_after >= Duration::from_millis(1_150) && gone_after < Duration::from_millis(2_500),
        "dropped at its expiry, not at a resync: {gone_after:?}"
    );
}

#[tokio::test]
async fn two_meshlets_talk_and_a_callee_registers_then_deregisters_itself() {
    let redis = RedisServer::start();
    let app = Upstream::start("inventory-app").await;
    let inventory = meshlet("inventory", &redis)
        .service("version: \"2.1\"")
        .app(app.addr)
        .service("metadata: {zone: a}");
    let Pair { callee, caller } = callee_and_caller(&inventory, &orders(&redis)).await;
    let inbound = callee
        .addresses
        .inbound
        .expect("inbound listener with an app");
    let out = caller.addresses.outbound;

    assert!(until_status(out, "http://inventory/", 200, Duration::from_secs(2)).await);
    let a = get_via(out, "http://inventory/items").await;
    let j = a.json();
    assert_eq!(
        j["upstream"], "inventory-app",
        "app reached through both meshlets"
    );
    assert_eq!(j["uri"], "/items");

    let mut conn = redis.conn();
    let key = format!("mesh:inst:inventory:{}", callee.shared.instance_id);
    let hash: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(&key).query(&mut conn).unwrap();
    assert_eq!(hash["host"], "127.0.0.1");
    assert_eq!(hash["port"], inbound.port().to_string());
    assert_eq!(hash["status"], "up");
    assert_eq!(hash["version"], "2.1");
    assert_eq!(hash["protocol"], "http1");
    assert_eq!(hash["metadata"], r#"{"zone":"a"}"#);
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!(
        ttl > 0 && ttl <= 3_000,
        "hash carries the registry ttl: {ttl}"
    );

    callee.shutdown().await;
    let exists: bool = redis::cmd("EXISTS").arg(&key).query(&mut conn).unwrap();
    assert!(!exists, "deregistered on shutdown");
    assert!(
        eventually(Duration::from_secs(2), || async {
            status_of(out, "http://inventory/").await == 503
        })
        .await
    );
}

#[tokio::test]
async fn redis_killed_and_restarted_mid_traffic_fails_no_request() {
    let mut redis = RedisServer::start();
    let app = Upstream::start("inventory-app").await;
    let inventory = meshlet("inventory", &redis).app(app.addr);
    let Pair { callee, caller } = callee_and_caller(&inventory, &orders(&redis)).await;
    let out = caller.addresses.outbound;
    assert!(until_status(out, "http://inventory/", 200, Duration::from_secs(2)).await);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let a = get_via(out, "http://inventory/").await;
                if a.status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst)
                } else {
                    failed.fetch_add(1, Ordering::SeqCst)
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    // Longer than the registry ttl: expiry must stay suspended while Redis is away.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let during_outage = ok.load(Ordering::SeqCst);
    redis.restart();
    let mut conn = redis.conn();
    let key = format!("mesh:inst:inventory:{}", callee.shared.instance_id);
    assert!(
        eventually(Duration::from_secs(8), || {
            let exists: bool = redis::cmd("EXISTS")
                .arg(&key)
                .query(&mut conn)
                .unwrap_or(false);
            async move { exists }
        })
        .await,
        "callee re-registered after Redis came back empty"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed");
    assert!(
        ok.load(Ordering::SeqCst) > during_outage,
        "traffic went on after the restart"
    );
    let metrics = get_host(caller.addresses.telemetry, "x", "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let errors = text
        .lines()
        .find_map(|l| l.strip_prefix("meshlet_registry_watch_errors_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(errors >= 1.0, "the outage was counted");
}

#[tokio::test]
async fn readiness_waits_for_the_first_snapshot() {
    let redis = RedisServer::start();
    let s = orders(&redis).start().await;
    until_ready(&s).await;
    let ready = get_host(s.addresses.telemetry, "x", "/healthz/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["registry_loaded"], true);

    // Nothing listens on this port: readiness stays false (until the 10 s deadline).
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let s = MeshletSpec::new("orders")
        .workers(1)
        .redis_url(&dead)
        .start()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = get_host(s.addresses.telemetry, "x", "/healthz/ready").await;
    assert_eq!(ready.status, 503);
}

#[tokio::test]
async fn a_failing_app_health_check_drains_the_registration_and_unreadies_the_pod() {
    let redis = RedisServer::start();
    let app = Upstream::start("app").await;
    let s = meshlet("billing", &redis)
        .app(app.addr)
        .service("health: /flaky, health_interval: 100ms")
        .start()
        .await;
    let mut conn = redis.conn();
    let key = format!("mesh:inst:billing:{}", s.shared.instance_id);
    let status = |conn: &mut redis::Connection| -> String {
        redis::cmd("HGET")
            .arg(&key)
            .arg("status")
            .query(conn)
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(3), || {
            let st = status(&mut conn);
            async move { st == "up" }
        })
        .await
    );
    assert!(s.shared.is_ready());

    app.fail_next(1000);
    assert!(
        eventually(Duration::from_secs(3), || {
            let st = status(&mut conn);
            async move { st == "draining" }
        })
        .await
    );
    let ready = get_host(s.addresses.telemetry, "x", "/healthz/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["app_healthy"], false);

    app.fail_next(0);
    assert!(
        eventually(Duration::from_secs(3), || {
            let st = status(&mut conn);
            async move { st == "up" }
        })
        .await
    );
    assert!(eventually(Duration::from_secs(2), || async { s.shared.is_ready() }).await);
}
