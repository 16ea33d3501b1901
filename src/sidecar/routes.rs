//! The routes of the two control-plane listeners: telemetry (`/metrics`, `/healthz/*`) and
//! the local API (the admin page at `/`, `/v1/stats`, `/v1/tap`, `/v1/config`, `/v1/registry`, and the
//! `/v1/events` and hub paths handed to those features, or a `not_configured` answer when
//! they are off).
//!
//! Every local API request passes one check first ([`foreign`]): its `Host` must name a
//! loopback address or `localhost`, and its `Origin`, when present, a loopback origin.
//! Otherwise it is answered 403 `forbidden`. That keeps out a web page in a browser on the
//! host, which can send requests to 127.0.0.1 (cross-origin, or through DNS rebinding,
//! where a name the page controls resolves to 127.0.0.1 and `Host` keeps that name). The
//! telemetry listener is not checked: Prometheus scrapes it from other hosts.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::shared::Shared;
use super::stats::{admin_page, StatsView};
use crate::control::admin::{ResponseFuture, Router};
use crate::control::Shutdown;
use crate::events::Events;
use crate::identity::request_id;
use crate::realtime::{self, Realtime};
use crate::telemetry::access::tap::{self, TapError};
use crate::wire::answer::{self, is_get, AnswerBody};
use crate::wire::error_response;

/// The telemetry listener's router.
pub(super) fn telemetry(shared: &Arc<Shared>) -> Router {
    let shared = shared.clone();
    Arc::new(move |req: Request<Incoming>| {
        let resp = telemetry_answer(&shared, &req);
        Box::pin(async move { resp })
    })
}

fn telemetry_answer(shared: &Shared, req: &Request<Incoming>) -> Response<AnswerBody> {
    if is_get(req, "/metrics") {
        answer::respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.encode().into(),
        )
    } else if is_get(req, "/healthz/live") {
        answer::json(StatusCode::OK, &serde_json::json!({"status": "live"}))
    } else if is_get(req, "/healthz/ready") {
        readiness(shared)
    } else {
        answer::not_found(req)
    }
}

fn readiness(shared: &Shared) -> Response<AnswerBody> {
    let ready = shared.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    answer::json(
        status,
        &serde_json::json!({
            "ready": ready,
            "listening": shared.listening.load(Ordering::Acquire),
            "registry_loaded": shared.registry_ready.load(Ordering::Acquire),
            "app_healthy": shared.app_healthy.load(Ordering::Acquire),
        }),
    )
}

/// The local API's router.
pub(super) fn api(
    shared: &Arc<Shared>,
    events: Option<Arc<Events>>,
    realtime: Option<Arc<Realtime>>,
    shutdown: Shutdown,
) -> Router {
    let shared = shared.clone();
    let stats = StatsView::new(shared.clone(), events.is_some(), realtime.is_some());
    Arc::new(move |req: Request<Incoming>| -> ResponseFuture {
        if let Some(why) = foreign(&req) {
            let service = shared.config.load().config.service.name.to_string();
            let resp = error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                why,
                &service,
                &request_id::of(req.headers()),
            );
            return Box::pin(async move { resp });
        }
        if is_get(&req, "/v1/tap") {
            let resp = open_tap(&shared, &req, &shutdown);
            return Box::pin(async move { resp });
        }
        let path = req.uri().path();
        if path.starts_with("/v1/events") {
            return match events.clone() {
                Some(events) => Box::pin(async move { events.handle(req).await }),
                None => unconfigured(&req, "events"),
            };
        }
        if realtime::API_PATHS.iter().any(|p| path.starts_with(p)) {
            return match realtime.clone() {
                Some(hub) => Box::pin(async move { hub.handle_api(req).await }),
                None => unconfigured(&req, "realtime"),
            };
        }
        let resp = api_answer(&shared, &stats, &req);
        Box::pin(async move { resp })
    })
}

/// Why `req` may not use the local API: a `Host` (or h2 `:authority`) that is not a
/// loopback address or `localhost`, or an `Origin` that is not a loopback origin. A
/// request without `Host` (HTTP/1.0) passes: browsers always send one.
fn foreign<B>(req: &Request<B>) -> Option<&'static str> {
    let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
    let hosts = req.headers().get_all(header::HOST).iter();
    for host in authority.into_iter().chain(hosts.map(|h| h.as_bytes())) {
        if !loopback_host(host) {
            return Some(
                "the local API answers only requests for localhost or a loopback address (Host)",
            );
        }
    }
    let mut origins = req.headers().get_all(header::ORIGIN).iter().peekable();
    let has_origin = origins.peek().is_some();
    for origin in origins {
        if !loopback_origin(origin.as_bytes()) {
            return Some("the local API answers no request from a web page that is not on localhost (Origin)");
        }
    }
    // A page's plain GET (`<img src>`, a no-cors fetch) carries no Origin; browsers mark it
    // `Sec-Fetch-Site: cross-site`. Without this a page could hold taps open.
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site && !has_origin {
        return Some(
            "the local API answers no request a web page on another site made (Sec-Fetch-Site)",
        );
    }
    None
}

/// `http(s)://` and a [`loopback_host`], nothing after it (an `Origin` has no path).
fn loopback_origin(origin: &[u8]) -> bool {
    let rest = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    rest.is_some_and(loopback_host)
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a `:port`.
fn loopback_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        if !ip.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback()) {
            return false;
        }
        ("", port)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = name.is_empty() && host.starts_with('[')
        || name.eq_ignore_ascii_case("localhost")
        || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
    port_ok && name_ok
}

/// `GET /v1/tap?service=S&rate=N`: an endless NDJSON stream of answered requests
/// (docs/operations.md, "Tap"), ended by the client going away or by shutdown.
fn open_tap(shared: &Shared, req: &Request<Incoming>, shutdown: &Shutdown) -> Response<AnswerBody> {
    let refuse = |status: StatusCode, code: &'static str, message: &str| {
        let service = shared.config.load().config.service.name.to_string();
        error_response(
            status,
            code,
            message,
            &service,
            &request_id::of(req.headers()),
        )
    };
    let (service, rate) = match tap_query(req.uri().query().unwrap_or("")) {
        Ok(asked) => asked,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, "bad_request", &why),
    };
    match shared.taps.open(service, rate, shutdown.wait()) {
        Ok(stream) => {
            let mut resp = Response::new(AnswerBody::streamed(stream));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/x-ndjson"),
            );
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            resp
        }
        Err(e @ TapError::Overloaded) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            &e.to_string(),
        ),
    }
}

/// `service` (a destination name) and `rate` (lines a second: default
/// [`tap::DEFAULT_RATE`], above [`tap::MAX_RATE`] read as the most) from a tap's query.
fn tap_query(query: &str) -> Result<(Option<String>, u32), String> {
    let mut service = None;
    let mut rate = tap::DEFAULT_RATE;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "service" if !value.is_empty() => service = Some(value.to_owned()),
            "service" => {}
            "rate" => {
                rate = match value.parse::<u32>() {
                    Ok(0) | Err(_) => {
                        return Err(format!(
                            "rate must be a whole number of lines a second, 1 to {}",
                            tap::MAX_RATE
                        ))
                    }
                    Ok(n) => n.min(tap::MAX_RATE),
                }
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}`: the tap takes service and rate"
                ))
            }
        }
    }
    Ok((service, rate))
}

fn unconfigured(req: &Request<Incoming>, section: &str) -> ResponseFuture {
    let resp = answer::json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({
            "error": "not_configured",
            "message": format!("{} {}: the `{section}` section is not configured", req.method(), req.uri().path()),
        }),
    );
    Box::pin(async move { resp })
}

fn api_answer(
    shared: &Shared,
    stats: &Arc<StatsView>,
    req: &Request<Incoming>,
) -> Response<AnswerBody> {
    if is_get(req, "/") {
        admin_page()
    } else if is_get(req, "/v1/stats") {
        stats.answer()
    } else if is_get(req, "/v1/config") {
        let loaded = shared.config.load();
        let loaded_at = loaded
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        answer::json(
            StatusCode::OK,
            &serde_json::json!({
                "source": loaded.source,
                "hash": loaded.hash,
                "loaded_at_ms": loaded_at,
                "config": loaded.config,
            }),
        )
    } else if is_get(req, "/v1/registry") {
        let snapshot = shared.registry_view(&shared.config.load().config);
        answer::json(
            StatusCode::OK,
            &serde_json::json!({
                "instance_id": shared.instance_id,
                "redis_read_at_ms": snapshot.redis_read_at,
                "services": snapshot.services,
            }),
        )
    } else {
        answer::not_found(req)
    }
}

#[cfg(test)]
mod tests {
    use super::{foreign, loopback_host, loopback_origin, tap_query};

    #[test]
    fn a_tap_query_names_a_service_and_a_rate_within_bounds() {
        assert_eq!(tap_query(""), Ok((None, 100)));
        assert_eq!(
            tap_query("service=inventory&rate=5"),
            Ok((Some("inventory".to_owned()), 5))
        );
        assert_eq!(tap_query("rate=5000&service="), Ok((None, 1000)));
        for bad in ["rate=0", "rate=fast", "rate=-1", "verbose=1"] {
            assert!(tap_query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_hosts_with_or_without_a_port() {
        for host in [
            "localhost",
            "LocalHost:15000",
            "127.0.0.1",
            "127.0.0.1:15000",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:15000",
        ] {
            assert!(loopback_host(host.as_bytes()), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:15000",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:15000",
            "0.0.0.0:15000",
            "[::2]:15000",
            "[::1]x",
            "::1",
            "localhost:",
            "localhost:abc",
            "",
        ] {
            assert!(!loopback_host(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn loopback_origins_only() {
        for origin in [
            "http://localhost:3000",
            "https://127.0.0.1",
            "http://[::1]:8080",
        ] {
            assert!(loopback_origin(origin.as_bytes()), "{origin}");
        }
        for origin in [
            "http://evil.example",
            "null",
            "file://",
            "http://localhost:3000/path",
            "ws://localhost",
            "http://localhost.evil.example",
        ] {
            assert!(!loopback_origin(origin.as_bytes()), "{origin}");
        }
    }

    #[test]
    fn a_cross_site_page_request_without_origin_is_foreign() {
        let req = |site: &str| {
            http::Request::get("/v1/tap")
                .header("host", "127.0.0.1:15000")
                .header("sec-fetch-site", site)
                .body(())
                .unwrap()
        };
        assert!(foreign(&req("cross-site")).is_some());
        for fine in ["same-origin", "same-site", "none"] {
            assert!(foreign(&req(fine)).is_none(), "{fine}");
        }
        let from_loopback_page = http::Request::get("/v1/stats")
            .header("host", "127.0.0.1:15000")
            .header("origin", "http://localhost:3000")
            .header("sec-fetch-site", "cross-site")
            .body(())
            .unwrap();
        assert!(foreign(&from_loopback_page).is_none());
    }

    #[test]
    fn an_h2_authority_is_checked_like_a_host() {
        let req = http::Request::get("http://evil.example:15000/v1/config")
            .body(())
            .unwrap();
        assert!(foreign(&req).is_some());
        let req = http::Request::get("http://127.0.0.1:15000/v1/config")
            .body(())
            .unwrap();
        assert!(foreign(&req).is_none());
        let req = http::Request::get("/v1/config").body(()).unwrap();
        assert!(foreign(&req).is_none(), "no Host at all (HTTP/1.0 tools)");
    }
}
