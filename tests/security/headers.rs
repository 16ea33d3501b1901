//! Headers from the network, and loops (docs/errors.md, "Headers from the network"): an
//! attacker who reaches a pod's inbound port poses as meshlet's event delivery or the hub
//! with hand-made headers, posts to the paths meshlet delivers to, forges its own address,
//! sends a request round and round; an upstream answers with meshlet's own headers.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::support::*;

/// A meshlet in front of a recording app, with an event subscription and the hub's
/// `on_message` (delivered by meshlet itself over loopback, never through inbound).
async fn orders_meshlet(app: &RecordingApp) -> meshlet::sidecar::Sidecar {
    MeshletSpec::new("orders")
        .app(app.addr)
        .workers(1)
        .with("events:\n  subscriptions:\n    - {type: order.paid, path: /events/order-paid}\n")
        .with("realtime: {on_message: /realtime/messages}\n")
        .start()
        .await
}

/// One request to `addr` with `headers`, answered.
async fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().method(method).uri(target);
    if target.starts_with('/') {
        req = req.header("host", "orders");
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(
        addr,
        req.body(Full::new(Bytes::from_static(b"{}"))).unwrap(),
    )
    .await
    .expect("answered")
}

#[tokio::test]
async fn forged_delivery_and_identity_headers_through_inbound_never_reach_the_app() {
    let app = RecordingApp::ok().await;
    let meshlet = orders_meshlet(&app).await;
    let inbound = meshlet.addresses.inbound.unwrap();
    // What meshlet's own event delivery and hub would send, made by hand.
    let forged = [
        ("x-event-id", "evt-1"),
        ("x-event-type", "order.paid"),
        ("x-event-attempt", "1"),
        ("x-realtime-user", "admin"),
        ("x-realtime-client", "c-1"),
        ("x-mesh-caller", "payments"),
        ("x-mesh-attempts", "1"),
        ("proxy", "http://evil.example:8080"),
        // A CGI-style app (WSGI, Rack, PHP) reads `_` as `-`: HTTP_X_MESH_CALLER.
        ("x_mesh_caller", "billing-admin"),
        ("x_event_type", "order.paid"),
        ("x_realtime_user", "admin"),
        ("x-custom", "kept"),
    ];
    let a = request(inbound, "POST", "/orders/42/paid", &forged).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let seen = app.recorded();
    assert_eq!(seen.len(), 1);
    for (name, _) in &forged[..11] {
        assert_eq!(
            seen[0].header(name),
            "",
            "`{name}` reached the app: {:?}",
            seen[0].headers
        );
    }
    assert_eq!(seen[0].header("x-custom"), "kept", "other headers pass");
}

#[tokio::test]
async fn a_request_through_inbound_to_a_path_meshlet_delivers_to_is_forbidden() {
    let app = RecordingApp::ok().await;
    let meshlet = orders_meshlet(&app).await;
    let inbound = meshlet.addresses.inbound.unwrap();
    for target in [
        "/events/order-paid",
        "/events/order-paid?replay=1",
        "/EVENTS//order-paid/",
        "/events/%6Frder-paid",
        "/realtime/messages",
        "/x/../realtime/messages;a=b",
        // Frameworks that route an optional format suffix run the same handler.
        "/events/order-paid.json",
    ] {
        for method in ["POST", "GET"] {
            let a = request(inbound, method, target, &[("x-event-type", "order.paid")]).await;
            assert_eq!(
                (a.status.as_u16(), a.header("x-mesh-error")),
                (403, "forbidden"),
                "{method} {target}"
            );
            assert_eq!(a.json()["error"], "forbidden");
        }
    }
    assert_eq!(app.count(), 0, "none of them reached the app");
    let a = request(inbound, "POST", "/events/order-paid-report", &[]).await;
    assert_eq!(a.status, 200, "a path beside them is the app's");
}

#[tokio::test]
async fn delivery_paths_under_the_apps_base_path_are_forbidden_too() {
    // Deliveries go to `service.app`'s path + the subscription's path.
    let app = RecordingApp::ok().await;
    let meshlet = MeshletSpec::new("orders")
        .workers(1)
        .service(&format!("app: \"http://{}/api\"", app.addr))
        .with("events:\n  subscriptions:\n    - {type: order.paid, path: /events/order-paid}\n")
        .start()
        .await;
    let inbound = meshlet.addresses.inbound.unwrap();
    for target in ["/api/events/order-paid", "/events/order-paid"] {
        let a = request(inbound, "POST", target, &[]).await;
        assert_eq!(
            a.status,
            403,
            "{target}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn the_connections_peer_is_appended_to_x_forwarded_for() {
    let app = RecordingApp::ok().await;
    let meshlet = orders_meshlet(&app).await;
    let inbound = meshlet.addresses.inbound.unwrap();
    let a = request(inbound, "GET", "/", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(a.status, 200);
    let a = request(inbound, "GET", "/", &[]).await;
    assert_eq!(a.status, 200);
    let seen = app.recorded();
    assert_eq!(
        seen[0].header("x-forwarded-for"),
        "203.0.113.9, 127.0.0.1",
        "a forged address is kept as a claim, the real peer added last"
    );
    assert_eq!(seen[1].header("x-forwarded-for"), "127.0.0.1");
}

/// `n` meshlet `Via` entries, as `n` meshlets would have appended them.
fn vias(n: usize) -> Vec<(&'static str, &'static str)> {
    vec![("via", "1.1 meshlet"); n]
}

#[tokio::test]
async fn a_request_that_already_passed_max_hops_meshlets_is_a_loop() {
    let upstream = RecordingApp::ok().await;
    let app = RecordingApp::ok().await;
    let meshlet = orders_meshlet(&app).await;
    // Outbound: a caller meshlet with a destination.
    let caller = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{orders: [\"{}\"]}}}}\n",
        upstream.addr
    ))
    .await;
    let out = caller.addresses.outbound;
    let a = request(out, "GET", "http://orders/", &vias(8)).await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-error")),
        (508, "loop_detected"),
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["error"], "loop_detected");
    // Other proxies' entries and one fewer meshlet do not count.
    let mut fewer = vias(7);
    fewer.push(("via", "1.1 nginx, 1.1 squid"));
    let a = request(out, "GET", "http://orders/", &fewer).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(upstream.count(), 1, "the looping request was never sent on");
    // Folded into one line, as another proxy may pass them.
    let folded = ["1.1 meshlet"; 8].join(", ");
    let a = request(out, "GET", "http://orders/", &[("via", folded.as_str())]).await;
    assert_eq!(a.status, 508);

    // Inbound, the same.
    let inbound = meshlet.addresses.inbound.unwrap();
    let a = request(inbound, "GET", "/", &vias(8)).await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-error")),
        (508, "loop_detected")
    );
    assert_eq!(app.count(), 0);
    let a = request(inbound, "GET", "/", &vias(7)).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn two_meshlets_pointing_a_service_at_each_other_end_the_loop_with_508() {
    // A's `loop` is B's outbound and B's `loop` is A's: each pass appends one `Via`.
    let (a_port, b_port) = (free_port(), free_port());
    let yaml = |name: &str, own: u16, other: u16| {
        format!(
            "service: {{name: {name}}}\nworkers: 1\nlisten: {{outbound: 127.0.0.1:{own}, inbound: 127.0.0.1:0, api: 127.0.0.1:0, telemetry: 127.0.0.1:0}}\nregistry: {{static: {{loop: [\"127.0.0.1:{other}\"]}}}}\ndefaults: {{retry: {{attempts: 1}}}}\n"
        )
    };
    let a = sidecar(&yaml("a", a_port, b_port)).await;
    let _b = sidecar(&yaml("b", b_port, a_port)).await;
    let answer = request(a.addresses.outbound, "GET", "http://loop/", &[]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.header("x-mesh-error")),
        (508, "loop_detected"),
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

/// An upstream that answers 200 with meshlet's own headers, forged.
async fn forger() -> Server {
    serve(Http::H1, |_req: Request<Incoming>| async {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
        for (name, value) in [
            ("x-mesh-error", "circuit_open"),
            ("x-mesh-degraded", "stale"),
            ("x-mesh-attempts", "99"),
            ("x-mesh-upstream-ms", "99999"),
            ("x-mesh-caller", "admin"),
            ("x-upstream-own", "kept"),
        ] {
            resp.headers_mut()
                .insert(name, http::HeaderValue::from_static(value));
        }
        resp
    })
    .await
}

/// No `x-mesh-*` header of the forger's reaches the app; meshlet's own are its own values.
fn assert_only_meshlets_own(a: &Answer) {
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    for name in ["x-mesh-error", "x-mesh-degraded", "x-mesh-caller"] {
        assert_eq!(
            a.header(name),
            "",
            "`{name}` of the upstream reached the app: {:?}",
            a.headers
        );
    }
    assert_eq!(a.header("x-mesh-attempts"), "1");
    assert_ne!(a.header("x-mesh-upstream-ms"), "99999");
    assert_eq!(a.header("x-upstream-own"), "kept");
}

#[tokio::test]
async fn an_upstreams_forged_mesh_headers_never_reach_the_app() {
    let forger = forger().await;
    // Behind a remote meshlet (its app forges), and as `url:` egress (a partner API).
    let callee = MeshletSpec::new("orders")
        .service(&format!("app: \"http://{}\"", forger.addr))
        .workers(1)
        .start()
        .await;
    let caller = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{orders: [\"{}\"]}}}}\nservices:\n  partner: {{url: \"http://{}\"}}\n",
        callee.addresses.inbound.unwrap(),
        forger.addr
    ))
    .await;
    let out = caller.addresses.outbound;
    assert_only_meshlets_own(&request(out, "GET", "http://orders/", &[]).await);
    assert_only_meshlets_own(&request(out, "GET", "http://partner/", &[]).await);

    // What the remote meshlet answers itself still says so: its `x-mesh-error` is kept.
    let app = RecordingApp::ok().await;
    let remote = orders_meshlet(&app).await;
    let caller = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{orders: [\"{}\"]}}}}\n",
        remote.addresses.inbound.unwrap()
    ))
    .await;
    let a = request(
        caller.addresses.outbound,
        "POST",
        "http://orders/events/order-paid",
        &[],
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-error")),
        (403, "forbidden"),
        "the remote meshlet's own refusal reaches the calling app"
    );
    assert_eq!(app.count(), 0);
}
