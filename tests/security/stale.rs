//! The stale cache is shared by every caller of a destination: an attacker on another pod
//! (or another user of the same app) waits for the upstream to fail and asks for the same
//! path, hoping for someone else's copy. docs/policy.md, "What is never kept".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::support::*;

/// An upstream that answers every GET with `headers` and a body naming the request's
/// `authorization`, `cookie` and `user-agent`, until `failing` is set: then 503.
struct Personal {
    server: Server,
    failing: Arc<AtomicBool>,
}

impl Personal {
    async fn start(headers: &'static [(&'static str, &'static str)]) -> Personal {
        let failing = Arc::new(AtomicBool::new(false));
        let fail = failing.clone();
        let server = serve(Http::H1, move |req: Request<Incoming>| {
            let fail = fail.load(Ordering::SeqCst);
            async move {
                if fail {
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"down")));
                    *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    return resp;
                }
                let h = |name| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let body = format!(
                    "page for authorization={} cookie={} user-agent={}",
                    h("authorization"),
                    h("cookie"),
                    h("user-agent")
                );
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                for (name, value) in headers {
                    resp.headers_mut()
                        .append(*name, http::HeaderValue::from_static(value));
                }
                resp
            }
        })
        .await;
        Personal { server, failing }
    }

    fn fail(&self) {
        self.failing.store(true, Ordering::SeqCst);
    }
}

/// A meshlet whose `account` destination is the upstream, under `degrade: {stale: 60s}`.
async fn meshlet_in_front_of(up: &Personal) -> meshlet::sidecar::Sidecar {
    sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{account: [\"{}\"]}}}}\nservices:\n  account: {{retry: {{attempts: 1}}, degrade: {{stale: 60s}}}}\n",
        up.server.addr
    ))
    .await
}

async fn get(out: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(format!("http://account{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(out, req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("answered")
}

/// What a second caller gets once the upstream fails: not a stale copy, but the upstream's
/// own 503, and nothing of the first caller's answer.
fn assert_not_served_stale(a: &Answer, first_callers: &str) {
    let body = String::from_utf8_lossy(&a.body);
    assert_eq!(
        (a.status.as_u16(), a.header("x-mesh-degraded")),
        (503, ""),
        "served a stale copy: {body}"
    );
    assert!(!body.contains(first_callers), "{body}");
    assert!(a.headers.get("set-cookie").is_none(), "{:?}", a.headers);
}

#[tokio::test]
async fn a_cookie_carrying_response_is_not_served_stale_to_another_caller() {
    let up = Personal::start(&[("set-cookie", "session=alice-0001; HttpOnly")]).await;
    let s = meshlet_in_front_of(&up).await;
    let out = s.addresses.outbound;
    let alice = get(out, "/account", &[("user-agent", "alice-browser")]).await;
    assert_eq!(alice.status, 200);
    assert_eq!(alice.header("set-cookie"), "session=alice-0001; HttpOnly");

    up.fail();
    let mallory = get(out, "/account", &[("user-agent", "mallory")]).await;
    assert_not_served_stale(&mallory, "alice-browser");
}

#[tokio::test]
async fn a_response_to_a_request_with_authorization_or_cookie_is_not_cached() {
    let up = Personal::start(&[]).await;
    let s = meshlet_in_front_of(&up).await;
    let out = s.addresses.outbound;
    let alice = get(out, "/profile", &[("authorization", "Bearer alice-token")]).await;
    assert_eq!(alice.status, 200);
    let bob = get(out, "/orders", &[("cookie", "session=bob-0002")]).await;
    assert_eq!(bob.status, 200);

    up.fail();
    let mallory = get(out, "/profile", &[]).await;
    assert_not_served_stale(&mallory, "alice-token");
    let mallory = get(out, "/orders", &[]).await;
    assert_not_served_stale(&mallory, "bob-0002");
    // Nor is anyone's copy served to a request that carries credentials.
    let again = get(out, "/profile", &[("authorization", "Bearer alice-token")]).await;
    assert_eq!(again.status, 503);
}

#[tokio::test]
async fn a_vary_user_agent_response_is_not_cached() {
    let up = Personal::start(&[("vary", "Accept-Encoding, User-Agent")]).await;
    let s = meshlet_in_front_of(&up).await;
    let out = s.addresses.outbound;
    let alice = get(out, "/home", &[("user-agent", "alice-browser")]).await;
    assert_eq!(alice.status, 200);

    up.fail();
    let mallory = get(out, "/home", &[("user-agent", "mallory")]).await;
    assert_not_served_stale(&mallory, "alice-browser");
}

#[tokio::test]
async fn private_and_no_store_answers_are_not_cached() {
    for cache_control in [
        &[("cache-control", "private, max-age=60")][..],
        &[("cache-control", "public"), ("cache-control", "no-store")][..],
    ] {
        let up = Personal::start(cache_control).await;
        let s = meshlet_in_front_of(&up).await;
        let out = s.addresses.outbound;
        let alice = get(out, "/inbox", &[("user-agent", "alice-browser")]).await;
        assert_eq!(alice.status, 200);

        up.fail();
        let mallory = get(out, "/inbox", &[("user-agent", "mallory")]).await;
        assert_not_served_stale(&mallory, "alice-browser");
    }
}

#[tokio::test]
async fn an_answer_meant_for_anyone_is_still_served_stale() {
    let up = Personal::start(&[
        ("vary", "Accept-Encoding"),
        ("cache-control", "public, max-age=5"),
    ])
    .await;
    let s = meshlet_in_front_of(&up).await;
    let out = s.addresses.outbound;
    let first = get(out, "/catalog", &[("user-agent", "crawler")]).await;
    assert_eq!(first.status, 200);

    up.fail();
    let later = get(out, "/catalog", &[("user-agent", "someone")]).await;
    assert_eq!(
        (later.status.as_u16(), later.header("x-mesh-degraded")),
        (200, "stale")
    );
    assert_eq!(later.body, first.body);
}
