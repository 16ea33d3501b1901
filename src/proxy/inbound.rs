//! The inbound side: remote meshlet → this meshlet → the local app (`service.app`).
//! No routing and no time budget of its own: the caller's meshlet owns the call's budget.
//! Before the identity check, the [`Boundary`]: routing loops (`508 loop_detected`),
//! meshlet's own delivery paths (`403 forbidden`), and the request headers only meshlet
//! may tell its app (docs/errors.md, "Headers from the network").

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use arc_swap::ArcSwap;

use super::destination::{Destination, RoutingTable};
use super::error::ProxyError;
use super::exchange::{Exchange, Tried};
use super::forward;
use super::headers::{meshlet_hops, strip_inbound};
use super::response_body::ResponseBody;
use super::server::{Handler, PeerAddr};
use crate::config::Config;
use crate::identity::{PeerIdentity, X_MESH_CALLER};
use crate::policy::clock;
use crate::policy::rate_limit::{self, InboundLimiter};
use crate::telemetry::access::tap::Taps;
use crate::telemetry::otlp::{Side, SpanExport};
use crate::wire::AnswerBody;

/// A feature served on the inbound listener at one exact path, ahead of the app (the
/// realtime hub's WebSocket endpoint). This is all the data plane knows of it.
pub trait InboundRoute: Send + Sync {
    /// The path it answers.
    fn path(&self) -> &str;

    /// Answers a request for [`InboundRoute::path`] (a WebSocket upgrade starts its own
    /// task and answers 101 at once, so this does not wait).
    fn answer(&self, req: Request<Incoming>) -> Response<AnswerBody>;
}

/// The inbound listener's handler.
#[derive(Clone)]
pub struct Inbound {
    /// The live table (for the identity settings).
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// The local app as a destination with one endpoint (`None` without `service.app`).
    pub app: Option<Arc<Destination>>,
    /// A feature served at its own path (the hub at `realtime.path`).
    pub route: Option<Arc<dyn InboundRoute>>,
    /// Upgraded connections being spliced.
    pub upgraded: prometheus::IntGauge,
    /// No bytes either way on an upgraded connection or a streamed body for this long: closed.
    pub idle_timeout: std::time::Duration,
    /// OTLP span export, when configured.
    pub spans: Option<Arc<SpanExport>>,
    /// What is refused or dropped before the app.
    pub boundary: Boundary,
    /// The sidecar's taps (`GET /v1/tap`).
    pub taps: Taps,
}

/// What the inbound side refuses before the app, read from the config at start: `events`,
/// `realtime` and `limits` apply only after a restart, so these are the paths meshlet
/// really delivers to until then (a reload does not move them).
#[derive(Clone, Debug)]
pub struct Boundary {
    /// meshlet's own delivery paths to its app, each as [`canonical_path`] makes it.
    delivery_paths: Vec<Vec<u8>>,
    /// `limits.max_hops`.
    max_hops: u32,
}

impl Boundary {
    /// Every `events.subscriptions[].path` and `realtime.on_message`, and `limits.max_hops`.
    pub fn from_config(config: &Config) -> Boundary {
        let subscriptions = config.events.subscriptions.iter().map(|s| s.path.as_str());
        let on_message = config.realtime.iter().map(|rt| rt.on_message.as_str());
        // Event deliveries go to `service.app`'s own path + the subscription's path: the
        // app serves both spellings' handler, so both are refused.
        let base = config
            .service
            .app
            .as_ref()
            .map(|app| app.0.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let mut delivery_paths: Vec<Vec<u8>> = subscriptions
            .chain(on_message)
            .flat_map(|path| {
                [
                    canonical_path(path),
                    canonical_path(&format!("{base}{path}")),
                ]
            })
            .collect();
        delivery_paths.sort_unstable();
        delivery_paths.dedup();
        Boundary {
            delivery_paths,
            max_hops: config.limits.max_hops.get(),
        }
    }

    /// Whether `canonical` is a delivery path, or one with a format suffix
    /// (`/events/order-paid.json`): frameworks that route an optional format (Rails'
    /// `(.:format)`, Spring MVC's suffix matching) run the same handler for it.
    fn is_delivery_path(&self, canonical: &[u8]) -> bool {
        if self.delivery_paths.iter().any(|p| p == canonical) {
            return true;
        }
        let segment = canonical.iter().rposition(|&b| b == b'/').unwrap_or(0);
        match canonical[segment..].iter().rposition(|&b| b == b'.') {
            Some(dot) if dot > 1 => {
                let stem = &canonical[..segment + dot];
                self.delivery_paths.iter().any(|p| p == stem)
            }
            _ => false,
        }
    }

    /// `508 loop_detected` for a request that already passed `max_hops` meshlets, `403
    /// forbidden` for one to a delivery path (any method; the query is ignored).
    fn admit<B>(&self, req: &Request<B>) -> Result<(), ProxyError> {
        let hops = meshlet_hops(req.headers());
        if hops >= self.max_hops {
            return Err(ProxyError::LoopDetected {
                hops,
                max: self.max_hops,
            });
        }
        if !self.delivery_paths.is_empty() {
            let path = req.uri().path();
            if self.is_delivery_path(&canonical_path(path)) {
                return Err(ProxyError::DeliveryPath(path.to_owned()));
            }
        }
        Ok(())
    }
}

/// A path as an app's router may read it, for comparing with the delivery paths: the
/// query and fragment cut, `%XX` decoded (`%2F` too), `\` read as `/`, each segment's
/// `;parameters` cut, empty and `.` segments dropped, `..` resolved, ASCII lowercased.
/// `/Events//Orders/;x=1?y` and `/events/orders` are one path: whichever way a router
/// folds them, a request cannot reach a delivery path by spelling it differently.
fn canonical_path(path: &str) -> Vec<u8> {
    let path = path.split(['?', '#']).next().unwrap_or("").as_bytes();
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        let escaped = match (path[i], path.get(i + 1), path.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(path[i]);
                i += 1;
            }
        }
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|b| *b == b'/' || *b == b'\\') {
        let segment = segment.split(|b| *b == b';').next().unwrap_or_default();
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            named => segments.push(named),
        }
    }
    let mut canonical = Vec::with_capacity(decoded.len() + 1);
    for segment in segments {
        canonical.push(b'/');
        canonical.extend(segment.iter().map(u8::to_ascii_lowercase));
    }
    if canonical.is_empty() {
        canonical.push(b'/');
    }
    canonical
}

/// `auth.inbound.rate_limit`: takes a token from the verified caller's bucket (the identity
/// check sets `x-mesh-caller` only to a verified caller: the token's `iss`, or under mutual
/// TLS the certificate's service), else from the one the unauthenticated share.
fn rate_limited(limiter: &InboundLimiter, headers: &http::HeaderMap) -> Option<ProxyError> {
    let caller = headers.get(&X_MESH_CALLER).and_then(|v| v.to_str().ok());
    let wait = limiter.take(caller, clock::now_ns()).err()?;
    Some(ProxyError::RateLimited(rate_limit::retry_after_secs(wait)))
}

impl Handler for Inbound {
    /// The peer address goes to `x-forwarded-for`.
    const PEER_ADDR: bool = true;

    async fn handle(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        if let Some(route) = &self.route {
            if req.uri().path() == route.path() {
                return route.answer(req).map(Into::into);
            }
        }
        let mut exchange =
            Exchange::begin(&mut req, self.spans.as_deref(), Side::Server, &self.taps);
        let Some(app) = &self.app else {
            let e = ProxyError::UpstreamUnavailable("no service.app is configured".to_owned());
            return exchange.error_response("", &e);
        };
        if let Err(e) = self.boundary.admit(&req) {
            exchange.count_error(&app.metrics, &e);
            let resp = exchange.error_response(&app.name, &e);
            return exchange.finish(&app.metrics, resp);
        }
        // Before the identity check, which then sets `x-mesh-caller` for a verified caller.
        let peer_addr = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        strip_inbound(req.headers_mut(), peer_addr);
        let table = self.table.load();
        // Under mutual TLS, the service the client certificate names (`server::serve_tls`);
        // a plain listener never has one to look up.
        let peer = if table.identity.mutual_tls() {
            req.extensions_mut().remove::<PeerIdentity>()
        } else {
            None
        };
        let checked = table
            .identity
            .check_inbound(req.headers_mut(), peer.as_ref());
        // After the identity check, which named the verified caller; unset, one branch.
        let limited = match (&checked, &table.inbound_limit) {
            (Ok(()), Some(limiter)) => rate_limited(limiter, req.headers()),
            _ => None,
        };
        drop(table); // not held across the forward below
        if let Err(rejected) = checked {
            let e = ProxyError::from(rejected);
            exchange.count_error(&app.metrics, &e);
            let resp = exchange.error_response(&app.name, &e);
            return exchange.finish(&app.metrics, resp);
        }
        if let Some(e) = limited {
            app.metrics.rate_limited.inc();
            exchange.count_error(&app.metrics, &e);
            let resp = exchange.error_response(&app.name, &e);
            return exchange.finish(&app.metrics, resp);
        }
        let client_upgrade = super::upgrade::client_half(&mut req);
        let mut resp = match forward::once(app, req).await {
            Ok(resp) => resp,
            Err(e) => {
                exchange.count_error(&app.metrics, &e);
                exchange.error_response(&app.name, &e)
            }
        };
        resp.body_mut().set_idle_timeout(self.idle_timeout);
        super::upgrade::splice_if_switched(
            client_upgrade,
            &mut resp,
            self.idle_timeout,
            &self.upgraded,
        );
        // One attempt on the app, when it has its endpoint.
        let upstream = app.endpoints.first().map(|e| &e.authority);
        let tried = Tried {
            attempts: u32::from(upstream.is_some()),
            upstream,
        };
        exchange.finish_tried(&app.metrics, resp, tried)
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_path;

    #[test]
    fn a_delivery_path_spelled_another_way_is_the_same_path() {
        let want = canonical_path("/events/orders");
        for spelled in [
            "/events/orders",
            "/events/orders/",
            "/events/orders?x=1",
            "//events///orders",
            "/Events/ORDERS",
            "/events/%6Frders",
            "/events%2Forders",
            "/events/orders;jsessionid=1",
            "/events/./orders",
            "/x/../events/orders",
            "/events\\orders",
        ] {
            assert_eq!(canonical_path(spelled), want, "{spelled}");
        }
        for other in ["/events/orders2", "/events", "/events/orders/x", "/%zz"] {
            assert_ne!(canonical_path(other), want, "{other}");
        }
        assert_eq!(canonical_path(""), b"/");
        assert_eq!(canonical_path("/../.."), b"/");
        assert_eq!(canonical_path("/a%"), b"/a%");
    }
}
