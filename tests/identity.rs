//! Identity end to end with three meshlets, one app and one real redis-server: trace
//! context, request ids, service tokens (forged, expired, wrong audience), allow_from,
//! static auth headers, secrets kept out of views.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde::Serialize;
use support::*;

const SECRET: &str = "identity-test-token-secret-0123456789";

/// `name`'s meshlet: one worker, on `redis` with a 3 s ttl and 1 s heartbeats.
fn on_registry(name: &str, redis: &RedisServer) -> MeshletSpec {
    MeshletSpec::new(name)
        .workers(1)
        .redis(redis)
        .registry("ttl: 3s, heartbeat: 1s")
}

/// A caller that signs its service tokens with [`SECRET`] (60 s).
fn signing_caller(name: &str, redis: &RedisServer) -> MeshletSpec {
    on_registry(name, redis).with(&format!(
        "auth:\n  token: {{secret: [\"{SECRET}\"], ttl: 60s}}\n"
    ))
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

fn token(secret: &str, iss: &str, aud: &str, exp_offset: i64) -> String {
    let now = support::now_ms() / 1000;
    let claims = Claims {
        iss,
        aud,
        iat: now,
        exp: (now as i64 + exp_offset) as u64,
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

#[tokio::test]
async fn a_call_through_two_meshlets_carries_trace_request_id_and_caller_but_never_the_token() {
    let redis = RedisServer::start();
    let app = Upstream::start("inventory-app").await;
    let inventory = on_registry("inventory", &redis).app(app.addr).with(&format!(
        "auth:\n  token: {{secret: [\"{SECRET}\"]}}\n  inbound: {{require: true, allow_from: [orders]}}\n"
    ));
    let Pair {
        callee: inventory,
        caller: orders,
    } = callee_and_caller(&inventory, &signing_caller("orders", &redis)).await;
    let game = signing_caller("game", &redis).start().await;
    let out = orders.addresses.outbound;
    assert!(until_status(out, "http://inventory/", 200, Duration::from_secs(3)).await);

    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get("http://inventory/items")
        .header("traceparent", parent)
        .header("tracestate", "vendor=1")
        .header("x-request-id", "req-123")
        .header("authorization", "Bearer the-callers-own")
        .header("x-mesh-caller", "spoofed")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send(out, req).await.unwrap();
    assert_eq!(a.status, 200);
    let h = &a.json()["headers"];
    let seen = h["traceparent"].as_str().unwrap();
    assert_eq!(&seen[..36], &parent[..36], "trace id kept");
    assert_ne!(&seen[36..52], &parent[36..52], "span id changed");
    assert!(seen.ends_with("-01"));
    assert_eq!(h["tracestate"], "vendor=1");
    assert_eq!(h["x-request-id"], "req-123");
    assert_eq!(
        h["x-mesh-caller"], "orders",
        "verified caller, not the spoofed one"
    );
    assert!(
        h.get("x-mesh-token").is_none(),
        "the token never reaches the app: {h}"
    );
    assert_eq!(h["authorization"], "Bearer the-callers-own");

    let a = get_via(out, "http://inventory/").await;
    let h = &a.json()["headers"];
    assert_eq!(
        h["traceparent"].as_str().unwrap().len(),
        55,
        "a trace is started when none came in"
    );
    assert_eq!(h["x-request-id"].as_str().unwrap().len(), 32);

    let denied = get_via(game.addresses.outbound, "http://inventory/").await;
    assert_eq!(
        (denied.status.as_u16(), denied.header("x-mesh-error")),
        (403, "forbidden")
    );

    let inbound = inventory.addresses.inbound.unwrap();
    let direct = get_host(inbound, "inventory", "/").await;
    assert_eq!(
        (direct.status.as_u16(), direct.header("x-mesh-error")),
        (401, "unauthenticated")
    );
    assert_eq!(direct.json()["error"], "unauthenticated");
    assert_eq!(direct.json()["message"], "missing or invalid service token");

    let bad_tokens = [
        token("attacker-secret", "orders", "inventory", 60),
        token(SECRET, "orders", "inventory", -120),
        token(SECRET, "orders", "payments", 60),
        "not.a.jwt".to_owned(),
    ];
    for bad in bad_tokens {
        let req = Request::get("/")
            .header("host", "inventory")
            .header("x-mesh-token", bad.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = send(inbound, req).await.unwrap();
        assert_eq!(a.status, 401, "{bad}");
    }
    let good = Request::get("/")
        .header("host", "inventory")
        .header("x-mesh-token", token(SECRET, "orders", "inventory", 60))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send(inbound, good).await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(app.hits() >= 3);
}

#[tokio::test]
async fn static_auth_headers_are_set_and_secrets_never_shown() {
    let api = Upstream::start("partner-api").await;
    let internal = Upstream::start("internal").await;
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), "file-key-123\n").unwrap();
    std::env::set_var("MESHLET_TEST_WEATHER_KEY", "weather-secret-xyz");
    let s = sidecar(&format!(
        "service: {{name: orders}}\nworkers: 1\nregistry: {{static: {{search: [\"{}\"]}}}}\nauth: {{token: {{secret: \"{SECRET}\"}}}}\nservices:\n  weather:\n    url: \"http://{}/v2\"\n    auth: {{header: Authorization, value: \"Bearer ${{MESHLET_TEST_WEATHER_KEY}}\"}}\n  search:\n    auth: {{header: X-Api-Key, file: \"{}\"}}\n",
        internal.addr,
        api.addr,
        key_file.path().display()
    ))
    .await;
    let out = s.addresses.outbound;
    let req = Request::get("http://weather/forecast")
        .header("authorization", "Bearer app-sent")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send(out, req).await.unwrap();
    let j = a.json();
    assert_eq!(j["uri"], "/v2/forecast");
    assert_eq!(
        j["headers"]["host"],
        api.addr.to_string(),
        "egress gets the partner's own Host"
    );
    assert_eq!(
        j["headers"]["authorization"], "Bearer weather-secret-xyz",
        "egress: meshlet's header replaces the app's"
    );
    assert!(
        j["headers"].get("x-mesh-token").is_none(),
        "no mesh token toward egress"
    );
    assert!(j["headers"].get("x-mesh-caller").is_none());

    let a = get_via(out, "http://search/q").await;
    let h = &a.json()["headers"];
    assert_eq!(h["x-api-key"], "file-key-123");
    assert!(
        h["x-mesh-token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "mesh destinations get a token"
    );

    let text = String::from_utf8_lossy(
        &get_host(s.addresses.api, "localhost", "/v1/config")
            .await
            .body,
    )
    .to_string();
    for secret in ["weather-secret-xyz", SECRET] {
        assert!(!text.contains(secret), "{secret} leaked into /v1/config");
    }
    let debug = format!("{:?}", s.shared.config.load().config);
    assert!(
        !debug.contains("weather-secret-xyz") && !debug.contains(SECRET),
        "Debug output redacts secrets"
    );
}

/// A TLS server on 127.0.0.1 with a certificate from a CA made at run time.
async fn tls_upstream() -> (std::net::SocketAddr, tempfile::NamedTempFile) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    meshlet::identity::tls::install_crypto_provider();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let answer = |req: Request<hyper::body::Incoming>| async move {
                    let body = format!("{{\"tls\":true,\"path\":\"{}\"}}", req.uri().path());
                    http::Response::new(Full::new(Bytes::from(body)))
                };
                serve_connection(tls, Http::H1, answer).await;
            });
        }
    });
    (addr, ca_file)
}

#[tokio::test]
async fn https_egress_is_verified_against_the_configured_ca() {
    let (addr, ca) = tls_upstream().await;
    let s = sidecar(&format!(
        "service: {{name: orders}}\nworkers: 1\nservices:\n  partner: {{url: \"https://{addr}/api\", ca: \"{}\"}}\n  stranger: {{url: \"https://{addr}\"}}\n",
        ca.path().display()
    ))
    .await;
    let a = get_via(s.addresses.outbound, "http://partner/forecast").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.json(),
        serde_json::json!({"tls": true, "path": "/api/forecast"})
    );
    let a = get_via(s.addresses.outbound, "http://stranger/").await;
    assert_eq!(a.status, 502, "a certificate from an unknown CA is refused");
    assert!(
        a.json()["message"].as_str().unwrap().contains("TLS"),
        "{}",
        a.json()
    );
}

#[tokio::test]
async fn mutual_tls_between_meshlets_both_ways() {
    let redis = RedisServer::start();
    let app = Upstream::start("inventory-app").await;
    let mesh = MeshCerts::new();
    let on_redis = |name: &str| MeshletSpec::new(name).workers(1).redis(&redis);
    let Pair { callee, caller } = callee_and_caller(
        &on_redis("inventory")
            .app(app.addr)
            .with(&mesh.tls_yaml("inventory")),
        &on_redis("orders").with(&mesh.tls_yaml("orders")),
    )
    .await;
    let out = caller.addresses.outbound;
    assert!(until_status(out, "http://inventory/", 200, Duration::from_secs(3)).await);
    let a = get_via(out, "http://inventory/x").await.json();
    assert_eq!(a["upstream"], "inventory-app");
    assert_eq!(
        a["headers"]["x-mesh-caller"], "orders",
        "without token keys, the client certificate names the caller"
    );

    // Plain HTTP to the inbound port gets no answer: TLS with a client certificate is required.
    let inbound = callee.addresses.inbound.unwrap();
    let plain = send(
        inbound,
        Request::get("/")
            .header("host", "inventory")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert!(plain.is_err(), "{plain:?}");

    // A meshlet whose certificate comes from another CA is refused.
    let stranger_mesh = MeshCerts::new();
    let stranger = on_redis("game")
        .with(&stranger_mesh.tls_yaml("game"))
        .start()
        .await;
    until_ready(&stranger).await;
    let a = get_via(stranger.addresses.outbound, "http://inventory/").await;
    assert_eq!(a.status, 502, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("x-mesh-error"), "upstream_unavailable");
    let hits = app.hits();
    assert!(hits >= 2);
}
