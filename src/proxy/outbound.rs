//! The outbound journey (docs/architecture.md): app → meshlet → remote service. One function reads
//! top to bottom: request id, route, forward within the time budget, record, log.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::HOST;
use http::{Request, Response};
use hyper::body::Incoming;

use super::call::{call, Outcome};
use super::destination::{Destination, RoutingTable};
use super::error::{ProxyError, X_MESH_FAULT};
use super::exchange::{Exchange, Tried};
use super::response_body::ResponseBody;
use super::server::{ConnectionHold, Handler};
use super::upgrade;
use crate::config::Limits;
use crate::identity::request_id;
use crate::telemetry::access::tap::Taps;
use crate::telemetry::metrics::DestinationMetrics;
use crate::telemetry::otlp::{Side, SpanExport};

/// Response header: attempts the call took (0 = answered by meshlet before any).
pub static X_MESH_ATTEMPTS: http::HeaderName = http::HeaderName::from_static("x-mesh-attempts");

/// The outbound listener's handler; one per worker, sharing the routing table.
#[derive(Clone)]
pub struct Outbound {
    /// The live routing table, swapped whole by the control plane.
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// Protocol limits.
    pub limits: Limits,
    /// Metric handles for requests that match no destination.
    pub unrouted: Arc<DestinationMetrics>,
    /// Upgraded connections being spliced.
    pub upgraded: prometheus::IntGauge,
    /// OTLP span export, when configured.
    pub spans: Option<Arc<SpanExport>>,
    /// The sidecar's taps (`GET /v1/tap`).
    pub taps: Taps,
}

impl Handler for Outbound {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let mut exchange =
            Exchange::begin(&mut req, self.spans.as_deref(), Side::Client, &self.taps);
        if exchange.method == http::Method::CONNECT && upgrade::extended_connect(&req).is_none() {
            // Boxed: a rare path whose dial would otherwise enlarge every request's future.
            let resp = Box::pin(self.tunnel(req)).await;
            return exchange.finish(&self.unrouted, resp);
        }
        let client_upgrade = upgrade::client_half(&mut req);
        let routed = {
            // Route and stamp under one look at the table; nothing awaits while it is held.
            let table = self.table.load();
            self.route(&table, &req).inspect(|(dest, _)| {
                dest.stamp_identity(&table.identity, req.headers_mut());
            })
        };
        let (dest, strip) = match routed {
            Ok(found) => found,
            Err(e) => {
                exchange.count_error(&self.unrouted, &e);
                let resp = exchange.error_response("", &e);
                return exchange.finish(&self.unrouted, resp);
            }
        };
        // A routing loop (a registry entry that leads back here, directly or round other
        // meshlets) ends at `limits.max_hops`; counted under the destination it loops on.
        let hops = super::headers::meshlet_hops(req.headers());
        let max_hops = self.limits.max_hops.get();
        let Outcome {
            result,
            attempts,
            fault_delayed,
            upstream,
        } = if hops >= max_hops {
            let looped = ProxyError::LoopDetected {
                hops,
                max: max_hops,
            };
            Outcome {
                result: Err(looped),
                attempts: 0,
                fault_delayed: false,
                upstream: None,
            }
        } else {
            let replay_limit = self.limits.replay_buffer.as_usize();
            call(&dest, req, strip, replay_limit).await
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                exchange.count_error(&dest.metrics, &e);
                if exchange.grpc {
                    dest.metrics.count_grpc(u32::from(e.grpc_status()));
                }
                exchange.error_response(&dest.name, &e)
            }
        };
        resp.headers_mut().insert(
            X_MESH_ATTEMPTS.clone(),
            super::headers::number(u64::from(attempts)),
        );
        if fault_delayed {
            // An abort after the delay keeps its `abort`.
            resp.headers_mut()
                .entry(&X_MESH_FAULT)
                .or_insert(http::HeaderValue::from_static("delay"));
        }
        let idle = self.limits.idle_timeout.get();
        resp.body_mut().set_idle_timeout(idle);
        upgrade::splice_if_switched(client_upgrade, &mut resp, idle, &self.upgraded);
        let tried = Tried {
            attempts,
            upstream: upstream.as_deref().map(|e| &e.authority),
        };
        exchange.finish_tried(&dest.metrics, resp, tried)
    }
}

impl Outbound {
    /// `CONNECT host:port` (an app's HTTPS through `HTTP_PROXY`): a tunnel only to a host
    /// configured as egress (`services.X.url`); anything else is 403.
    async fn tunnel(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let request_id = request_id::ensure(req.headers_mut());
        let target = req.uri().authority().map(|a| a.as_str().to_owned());
        let table = self.table.load();
        let allowed = target.as_deref().and_then(|t| {
            table.destinations().find(|d| {
                d.egress.is_some()
                    && d.endpoints
                        .first()
                        .is_some_and(|e| e.authority.as_str() == t)
            })
        });
        let Some(dest) = allowed.cloned() else {
            let e = ProxyError::Forbidden(format!("CONNECT {}", target.unwrap_or_default()));
            return e.to_response("", &request_id, false);
        };
        let target = dest.endpoints[0].authority.to_string();
        let connect_timeout = dest.policy.connect_timeout.get();
        drop(table);
        // Dial before answering: a target that cannot be reached gets a 502, not a 200
        // followed by a closed connection.
        let dialed =
            tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&target)).await;
        let upstream = match dialed {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let e = ProxyError::UpstreamUnavailable(format!("connect to {target} failed: {e}"));
                return e.to_response(&dest.name, &request_id, false);
            }
            Err(_) => {
                let e = ProxyError::UpstreamUnavailable(format!("connect to {target} timed out"));
                return e.to_response(&dest.name, &request_id, false);
            }
        };
        let hold = req.extensions_mut().remove::<ConnectionHold>();
        let client = hyper::upgrade::on(&mut req);
        let idle = self.limits.idle_timeout.get();
        let gauge = self.upgraded.clone();
        tokio::spawn(async move {
            let _hold = hold;
            let Ok(client) = client.await else {
                tracing::debug!(%target, "CONNECT tunnel: the client went away");
                return;
            };
            upgrade::splice_io(hyper_util::rt::TokioIo::new(client), upstream, idle, gauge).await;
        });
        Response::new(ResponseBody::empty())
    }

    /// The destination: absolute-form URI host, else `Host` (port ignored), when either
    /// names a known service; else the longest route prefix; else `no_route`. An unknown
    /// name or IP literal is never dialled: meshlet is not an open proxy.
    fn route(
        &self,
        table: &RoutingTable,
        req: &Request<Incoming>,
    ) -> Result<(Arc<Destination>, usize), ProxyError> {
        let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        let max_uri = self.limits.max_uri_bytes.as_usize();
        if uri_len > max_uri {
            return Err(ProxyError::UriTooLong(max_uri));
        }
        let host = request_host(req);
        if let Some(dest) = host.and_then(|h| table.by_host(h)) {
            return Ok((dest.clone(), 0));
        }
        if let Some((dest, strip)) = table.by_path(req.uri().path()) {
            return Ok((dest.clone(), strip));
        }
        Err(ProxyError::NoRoute {
            host: host.unwrap_or("").to_owned(),
            path: req.uri().path().to_owned(),
        })
    }
}

/// The host a request names, without port: the URI's (absolute form, h2 `:authority`),
/// else the `Host` header's.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(host) = req.uri().host() {
        return Some(host.trim_start_matches('[').trim_end_matches(']'));
    }
    let raw = req.headers().get(HOST)?.to_str().ok()?;
    let host = match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    };
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

#[cfg(test)]
mod tests {
    use super::request_host;
    use http::Request;

    #[test]
    fn host_comes_from_the_uri_then_the_header_without_port() {
        let r = Request::get("http://inventory:8080/x").body(()).unwrap();
        assert_eq!(request_host(&r), Some("inventory"));
        let r = Request::get("/x")
            .header("host", "inventory:15001")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), Some("inventory"));
        let r = Request::get("/x")
            .header("host", "[::1]:15001")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), Some("::1"));
        let r = Request::get("/x").body(()).unwrap();
        assert_eq!(request_host(&r), None);
    }
}
