//! Identity (docs/identity.md), as an attacker would try it: a holder of the token secret
//! mints a token issued in the future, or one that lives ten years; a meshlet holding the
//! certificate of one service signs tokens as another; probes read the 401 body for why a
//! forgery failed. And the honest paths beside them still pass.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::support::*;

/// At least 32 bytes, as `meshlet check` wants.
const SECRET: &str = "security-test-token-secret-0123456789";
/// What every 401 says, whatever the reason (docs/errors.md).
const UNAUTHENTICATED: &str = "missing or invalid service token";

fn now() -> i64 {
    (now_ms() / 1000) as i64
}

/// A token signed with `secret` carrying exactly `claims` (what a secret holder can make).
fn mint(secret: &str, claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// `inventory` in front of `app`, requiring a token signed with [`SECRET`] from `orders`.
async fn guarded_inventory(app: &Upstream) -> meshlet::sidecar::Sidecar {
    MeshletSpec::new("inventory")
        .workers(1)
        .app(app.addr)
        .with(&format!(
            "auth:\n  token: {{secret: [\"{SECRET}\"], ttl: 60s}}\n  inbound: {{require: true, allow_from: [orders]}}\n"
        ))
        .start()
        .await
}

/// Sends `token` straight to `inbound`, as anyone on the pod network can.
async fn with_token(inbound: std::net::SocketAddr, token: &str) -> Answer {
    let req = Request::get("/items")
        .header("host", "inventory")
        .header("x-mesh-token", token)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(inbound, req).await.expect("answered")
}

fn refused_as_unauthenticated(a: &Answer, what: &str) {
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-error")),
        (401, "unauthenticated"),
        "{what}: {}",
        String::from_utf8_lossy(&a.body)
    );
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let app = Upstream::start("inventory-app").await;
    let inventory = guarded_inventory(&app).await;
    let inbound = inventory.addresses.inbound.unwrap();
    let n = now();

    // Minted today to be used next year: a stolen one would stay good until then.
    let next_year = n + 365 * 24 * 3600;
    let later = mint(
        SECRET,
        json!({"iss": "orders", "aud": "inventory", "iat": next_year, "exp": next_year + 60}),
    );
    refused_as_unauthenticated(&with_token(inbound, &later).await, "iat a year ahead");
    let soon = mint(
        SECRET,
        json!({"iss": "orders", "aud": "inventory", "iat": n + 30, "exp": n + 90}),
    );
    refused_as_unauthenticated(&with_token(inbound, &soon).await, "iat 30 s ahead");
    // Without an `iat`, nothing bounds the token's life.
    let no_iat = mint(
        SECRET,
        json!({"iss": "orders", "aud": "inventory", "exp": n + 60}),
    );
    refused_as_unauthenticated(&with_token(inbound, &no_iat).await, "no iat");
    assert_eq!(app.hits(), 0, "none of them reached the app");

    // Within the 5 s skew, and a normal one: accepted.
    for iat in [n + 3, n] {
        let ok = mint(
            SECRET,
            json!({"iss": "orders", "aud": "inventory", "iat": iat, "exp": iat + 60}),
        );
        let a = with_token(inbound, &ok).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json()["headers"]["x-mesh-caller"], "orders");
    }
}

#[tokio::test]
async fn a_token_with_a_ten_year_lifetime_is_refused() {
    let app = Upstream::start("inventory-app").await;
    let inventory = guarded_inventory(&app).await;
    let inbound = inventory.addresses.inbound.unwrap();
    let n = now();

    let ten_years = 10 * 365 * 24 * 3600;
    let forever = mint(
        SECRET,
        json!({"iss": "orders", "aud": "inventory", "iat": n, "exp": n + ten_years}),
    );
    refused_as_unauthenticated(&with_token(inbound, &forever).await, "ten years");
    // Just over the ttl (60 s) plus the 5 s leeway, backdated so that it is still valid.
    let long = mint(
        SECRET,
        json!({"iss": "orders", "aud": "inventory", "iat": n - 30, "exp": n + 36}),
    );
    refused_as_unauthenticated(&with_token(inbound, &long).await, "66 s against a 60 s ttl");
    assert_eq!(app.hits(), 0);

    // ttl + leeway exactly: accepted.
    let edge = mint(
        SECRET,
        json!({"iss": "orders", "aud": "inventory", "iat": n - 30, "exp": n + 35}),
    );
    assert_eq!(with_token(inbound, &edge).await.status, 200);
}

#[tokio::test]
async fn the_401_body_never_says_why_a_token_failed() {
    let app = Upstream::start("inventory-app").await;
    let inventory = guarded_inventory(&app).await;
    let inbound = inventory.addresses.inbound.unwrap();
    let n = now();
    let claims = |aud: &str, exp: i64| json!({"iss": "orders", "aud": aud, "iat": n, "exp": exp});

    let probes = [
        (
            "wrong secret",
            mint("a-guessed-secret", claims("inventory", n + 60)),
        ),
        ("expired", mint(SECRET, claims("inventory", n - 120))),
        ("wrong audience", mint(SECRET, claims("payments", n + 60))),
        ("malformed", "not.a.jwt".to_owned()),
        (
            "ten years",
            mint(SECRET, claims("inventory", n + 315_360_000)),
        ),
    ];
    let mut bodies = Vec::new();
    for (what, token) in &probes {
        let a = with_token(inbound, token).await;
        refused_as_unauthenticated(&a, what);
        let mut body = a.json();
        assert_eq!(body["message"], UNAUTHENTICATED, "{what}: {body}");
        body["request_id"] = json!("");
        bodies.push(body);
    }
    let missing = get_host(inbound, "inventory", "/items").await;
    refused_as_unauthenticated(&missing, "no token");
    assert_eq!(missing.json()["message"], UNAUTHENTICATED);
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "one body for every reason: {bodies:?}"
    );
    for body in &bodies {
        let text = body.to_string().to_lowercase();
        for hint in [
            "signature",
            "expired",
            "audience",
            "aud",
            "base64",
            "json",
            "iat",
        ] {
            assert!(!text.contains(hint), "the body hints `{hint}`: {text}");
        }
    }
}

/// A meshlet named `name` presenting the certificate of `certificate`, with `extra` YAML,
/// that finds `inventory` at `inbound` (a static entry: no Redis to register in).
async fn caller(
    name: &str,
    certificate: &str,
    mesh: &MeshCerts,
    inbound: std::net::SocketAddr,
    extra: &str,
) -> meshlet::sidecar::Sidecar {
    MeshletSpec::new(name)
        .workers(1)
        .with(&format!(
            "registry: {{static: {{inventory: [\"{inbound}\"]}}}}\n"
        ))
        .with(&mesh.tls_yaml(certificate))
        .with(extra)
        .start()
        .await
}

const SIGNING: &str =
    "auth:\n  token: {secret: [\"security-test-token-secret-0123456789\"], ttl: 60s}\n";

#[tokio::test]
async fn a_token_whose_iss_is_not_the_certificates_service_is_forbidden() {
    let app = Upstream::start("inventory-app").await;
    let mesh = MeshCerts::new();
    let inventory = MeshletSpec::new("inventory")
        .workers(1)
        .app(app.addr)
        .with(&mesh.tls_yaml("inventory"))
        .with(&format!(
            "auth:\n  token: {{secret: [\"{SECRET}\"], ttl: 60s}}\n  inbound: {{require: true, allow_from: [orders]}}\n"
        ))
        .start()
        .await;
    let inbound = inventory.addresses.inbound.unwrap();

    // The honest caller: its certificate and its tokens both say `orders`.
    let orders = caller("orders", "orders", &mesh, inbound, SIGNING).await;
    let a = get_via(orders.addresses.outbound, "http://inventory/items").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["headers"]["x-mesh-caller"], "orders");

    // `game` holds a mesh certificate (for `game`) and the shared secret, and runs a
    // meshlet that calls itself `orders`: its tokens say `iss: orders`.
    let impostor = caller("orders", "game", &mesh, inbound, SIGNING).await;
    let hits = app.hits();
    let a = get_via(impostor.addresses.outbound, "http://inventory/items").await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-error")),
        (403, "forbidden"),
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(app.hits(), hits, "the impostor never reached the app");

    // The same with `game` signing as itself: a verified caller, not allowed.
    let game = caller("game", "game", &mesh, inbound, SIGNING).await;
    let a = get_via(game.addresses.outbound, "http://inventory/items").await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-error")),
        (403, "forbidden")
    );
    assert_eq!(app.hits(), hits);
}

#[tokio::test]
async fn with_tls_and_no_token_keys_the_certificate_is_the_caller() {
    let app = Upstream::start("inventory-app").await;
    let mesh = MeshCerts::new();
    let inventory = MeshletSpec::new("inventory")
        .workers(1)
        .app(app.addr)
        .with(&mesh.tls_yaml("inventory"))
        .with("auth:\n  inbound: {allow_from: [orders]}\n")
        .start()
        .await;
    let inbound = inventory.addresses.inbound.unwrap();

    let orders = caller("orders", "orders", &mesh, inbound, "").await;
    let a = get_via(orders.addresses.outbound, "http://inventory/items").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.json()["headers"]["x-mesh-caller"],
        "orders",
        "the app learns the caller from the certificate"
    );

    // A meshlet named `orders` with `game`'s certificate: it is `game`, and not allowed.
    let impostor = caller("orders", "game", &mesh, inbound, "").await;
    let hits = app.hits();
    let a = get_via(impostor.addresses.outbound, "http://inventory/items").await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-error")),
        (403, "forbidden"),
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(app.hits(), hits);
}
