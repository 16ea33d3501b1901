//! Registry hygiene (docs/registry.md, "Which instances are ignored"): whoever can write
//! the registry tries to point callers at the cloud metadata service, at "this machine",
//! at a multicast group, at the caller's own listeners (a request loop, its local API), or
//! slips in names outside the alphabet. Each entry must never be routed to and be counted
//! once in `meshlet_registry_rejected_total{reason}`.
//!
//! No test sends traffic off 127.0.0.0/8, not even against a build without the checks:
//! an entry at a non-loopback address is only ever looked at through `meshlet_endpoints`
//! (asserted 0 before anything is requested), and the startup-error test stops before
//! the runtime runs a single task that could connect.

use std::net::SocketAddr;
use std::time::Duration;

use meshlet::config::LoadedConfig;
use meshlet::sidecar::Sidecar;

use crate::support::*;

/// An address no test ever dials: the sentinel whose arrival in the routing table shows
/// that every entry registered before it has been read.
const SENTINEL_HOST: &str = "192.0.2.1";

/// Registers `service`/`id` at `host:port` the way docs/registry.md tells any writer to.
fn register_at(conn: &mut redis::Connection, service: &str, id: &str, host: &str, port: u16) {
    register_host_by_hand(conn, service, id, host, port, 30_000);
}

async fn endpoints(s: &Sidecar, service: &str) -> f64 {
    metric(
        s.addresses.telemetry,
        &format!("meshlet_endpoints{{service=\"{service}\"}}"),
    )
    .await
}

async fn rejected(s: &Sidecar, reason: &str) -> f64 {
    metric(
        s.addresses.telemetry,
        &format!("meshlet_registry_rejected_total{{reason=\"{reason}\"}}"),
    )
    .await
}

/// Registers a sentinel (`sentinel`/`id`) and waits until the caller's table holds it:
/// every entry written before it has been read by then.
async fn until_read(s: &Sidecar, conn: &mut redis::Connection, id: &str, expected: f64) {
    register_at(conn, "sentinel", id, SENTINEL_HOST, 9);
    assert!(
        eventually(Duration::from_secs(5), || async {
            endpoints(s, "sentinel").await == expected
        })
        .await,
        "the caller never read the sentinel"
    );
}

/// `service` is known but has nothing to dial: `503 no_endpoints`, not a call.
async fn answers_no_endpoints(s: &Sidecar, service: &str) {
    let a = get_via(s.addresses.outbound, &format!("http://{service}/")).await;
    assert_eq!(
        a.header("x-mesh-error"),
        "no_endpoints",
        "{service}: {} {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.status, 503);
}

/// The caller: one worker on `redis`, resyncing every second.
fn caller(redis: &RedisServer) -> MeshletSpec {
    MeshletSpec::new("orders")
        .workers(1)
        .redis(redis)
        .registry("ttl: 10s, heartbeat: 1s, resync: 1s")
}

#[tokio::test]
async fn metadata_unspecified_and_multicast_addresses_are_never_routed_to_and_counted_once() {
    let redis = RedisServer::start();
    let up = Upstream::start("attacker").await;
    let s = caller(&redis).start().await;
    until_ready(&s).await;
    let mut conn = redis.conn();

    register_at(&mut conn, "metadata", "m-1", "169.254.169.254", 80);
    register_at(&mut conn, "metadata6", "m-1", "fe80::1", 80);
    register_at(&mut conn, "mapped", "m-1", "::ffff:169.254.169.254", 80);
    register_at(&mut conn, "group", "g-1", "224.0.0.1", 80);
    register_at(&mut conn, "group6", "g-1", "ff02::1", 80);
    // 0.0.0.0 is "this machine" to connect(): without the check it reaches `up`.
    register_at(&mut conn, "anyhost", "a-1", "0.0.0.0", up.addr.port());
    register_at(&mut conn, "anyhost6", "a-1", "::", up.addr.port());
    // A number the resolver would read as 127.0.0.1, and a host that is no host at all.
    register_at(&mut conn, "numeric", "n-1", "2130706433", up.addr.port());
    register_at(&mut conn, "junk", "j-1", "evil.example/x", 80);
    until_read(&s, &mut conn, "s-1", 1.0).await;

    for service in [
        "metadata",
        "metadata6",
        "mapped",
        "group",
        "group6",
        "anyhost",
        "anyhost6",
        "numeric",
        "junk",
    ] {
        assert_eq!(
            endpoints(&s, service).await,
            0.0,
            "{service} has an endpoint"
        );
    }
    for service in ["metadata", "group", "anyhost", "anyhost6", "numeric"] {
        answers_no_endpoints(&s, service).await;
    }
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(rejected(&s, "link_local").await, 3.0);
    assert_eq!(rejected(&s, "multicast").await, 2.0);
    assert_eq!(rejected(&s, "unspecified").await, 2.0);
    assert_eq!(rejected(&s, "bad_host").await, 2.0);

    // More changes and resyncs rebuild the table; each entry stays counted once.
    until_read(&s, &mut conn, "s-2", 2.0).await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    until_read(&s, &mut conn, "s-3", 3.0).await;
    assert_eq!(rejected(&s, "link_local").await, 3.0);
    assert_eq!(rejected(&s, "multicast").await, 2.0);
    assert_eq!(rejected(&s, "unspecified").await, 2.0);
    assert_eq!(rejected(&s, "bad_host").await, 2.0);
}

#[tokio::test]
async fn names_outside_the_alphabet_are_never_routed_to_and_counted() {
    let redis = RedisServer::start();
    let up = Upstream::start("attacker").await;
    let s = caller(&redis).start().await;
    until_ready(&s).await;
    let mut conn = redis.conn();
    let long = "a".repeat(129);

    // A good address under a bad instance id: the service stays known, without endpoints.
    register_at(&mut conn, "inventory", "x:y", "127.0.0.1", up.addr.port());
    // Good addresses under service names a Host header can still carry.
    register_at(&mut conn, "inv~entory", "i-1", "127.0.0.1", up.addr.port());
    register_at(&mut conn, &long, "i-1", "127.0.0.1", up.addr.port());
    until_read(&s, &mut conn, "s-1", 1.0).await;

    assert_eq!(endpoints(&s, "inventory").await, 0.0);
    answers_no_endpoints(&s, "inventory").await;
    for service in ["inv~entory", long.as_str()] {
        let a = get_via(s.addresses.outbound, &format!("http://{service}/")).await;
        assert_eq!(a.status, 404, "{service}: {}", a.status);
        assert_eq!(a.header("x-mesh-error"), "no_route");
    }
    let text = get_host(s.addresses.telemetry, "x", "/metrics").await;
    let text = String::from_utf8_lossy(&text.body);
    assert!(
        !text.contains("inv~entory") && !text.contains(&long),
        "a rejected name became a metric label"
    );
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(rejected(&s, "bad_name").await, 3.0);
}

#[tokio::test]
async fn entries_at_the_callers_own_listeners_are_never_dialled() {
    let redis = RedisServer::start();
    let app = Upstream::start("orders-app").await;
    // Telemetry on the wildcard address: an entry at 127.0.0.1:<its port> reaches it too.
    let s = caller(&redis)
        .app(app.addr)
        .with("listen: {outbound: 127.0.0.1:0, inbound: 127.0.0.1:0, api: 127.0.0.1:0, telemetry: 0.0.0.0:0}\n")
        .start()
        .await;
    until_ready(&s).await;
    let a = s.addresses;
    let inbound = a.inbound.expect("an inbound listener with an app");
    let mut conn = redis.conn();

    // Its own outbound: a request loop until descriptors run out.
    register_at(&mut conn, "loop", "l-1", "127.0.0.1", a.outbound.port());
    register_at(
        &mut conn,
        "loop6",
        "l-1",
        "::ffff:127.0.0.1",
        a.outbound.port(),
    );
    // Its own local API (events, broadcast) and telemetry, and its own inbound.
    register_at(&mut conn, "api", "a-1", "localhost", a.api.port());
    register_at(
        &mut conn,
        "telemetry",
        "t-1",
        "127.0.0.1",
        a.telemetry.port(),
    );
    register_at(&mut conn, "inbound", "i-1", "127.0.0.1", inbound.port());
    until_read(&s, &mut conn, "s-1", 1.0).await;

    for service in ["loop", "loop6", "api", "telemetry", "inbound"] {
        assert_eq!(
            endpoints(&s, service).await,
            0.0,
            "{service} has an endpoint"
        );
    }
    for service in ["loop", "loop6", "api", "telemetry", "inbound"] {
        answers_no_endpoints(&s, service).await;
    }
    assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Its own registration is left out too, but it is expected: not counted.
    assert_eq!(rejected(&s, "own_listener").await, 5.0);

    // A callee on another port of the same host is still reached.
    let up = Upstream::start("inventory").await;
    register_at(&mut conn, "inventory", "inv-1", "127.0.0.1", up.addr.port());
    assert!(until_status(a.outbound, "http://inventory/", 200, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn loopback_entries_follow_allow_loopback_and_its_default_follows_the_redis_url() {
    let redis = RedisServer::start();
    let up = Upstream::start("local").await;
    let refusing = caller(&redis)
        .registry("allow_loopback: false")
        .start()
        .await;
    let allowing = caller(&redis)
        .registry("allow_loopback: true")
        .start()
        .await;
    let default = caller(&redis).start().await; // a loopback Redis: one machine
    for s in [&refusing, &allowing, &default] {
        until_ready(s).await;
    }
    let mut conn = redis.conn();
    register_at(&mut conn, "inventory", "inv-1", "127.0.0.1", up.addr.port());
    register_at(&mut conn, "inventory6", "inv-1", "::1", up.addr.port());
    register_at(&mut conn, "byname", "b-1", "localhost", up.addr.port());
    for s in [&refusing, &allowing, &default] {
        until_read(s, &mut conn, "s-1", 1.0).await;
    }

    for service in ["inventory", "inventory6", "byname"] {
        assert_eq!(endpoints(&refusing, service).await, 0.0, "{service}");
    }
    answers_no_endpoints(&refusing, "inventory").await;
    answers_no_endpoints(&refusing, "byname").await;
    assert_eq!(rejected(&refusing, "loopback").await, 3.0);

    for s in [&allowing, &default] {
        let a = get_via(s.addresses.outbound, "http://inventory/").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["upstream"], "local");
        assert_eq!(endpoints(s, "inventory6").await, 1.0);
        assert_eq!(endpoints(s, "byname").await, 1.0);
        assert_eq!(rejected(s, "loopback").await, 0.0);
    }
}

#[tokio::test]
async fn registering_127_0_0_1_into_a_redis_elsewhere_fails_at_start_naming_both_fixes() {
    // No POD_IP in the test environment, no service.advertise, a Redis on another machine
    // (never reached: start must fail before anything connects).
    assert!(
        std::env::var("POD_IP").map_or(true, |v| v.is_empty()),
        "run without POD_IP"
    );
    let yaml = format!(
        "service: {{name: orders, app: \"http://127.0.0.1:9\"}}\n\
         registry: {{redis: \"redis://10.255.255.1:6379/0\"}}\n{FREE_PORTS}"
    );
    let loaded = LoadedConfig::from_text(&yaml, "test.yaml").expect("valid config");
    // Should start succeed, fail at once: this runtime has not polled a task yet, and
    // ending the test drops them all unrun, so nothing dials 10.255.255.1.
    let error = match Sidecar::start(loaded).await {
        Ok(_) => panic!("a pod registering 127.0.0.1 into a remote Redis must not start"),
        Err(e) => e.to_string(),
    };
    for named in ["service.advertise", "POD_IP", "127.0.0.1", "10.255.255.1"] {
        assert!(error.contains(named), "{named} not named in: {error}");
    }
}

#[tokio::test]
async fn static_entries_are_the_operators_own_and_are_not_filtered() {
    let up = Upstream::start("local").await;
    let addr: SocketAddr = up.addr;
    let s = sidecar(&format!(
        "service: {{name: orders}}\nregistry: {{static: {{inventory: [\"{addr}\"], anyhost: [\"0.0.0.0:{}\"]}}}}\n",
        addr.port()
    ))
    .await;
    let a = get_via(s.addresses.outbound, "http://inventory/").await;
    assert_eq!(a.status, 200);
    let a = get_via(s.addresses.outbound, "http://anyhost/").await;
    assert_eq!(
        a.status, 200,
        "the operator's own 0.0.0.0 entry is used as written"
    );
    for reason in ["loopback", "unspecified"] {
        assert_eq!(rejected(&s, reason).await, 0.0);
    }
}
