//! The outbound journey (DESIGN §2): app → meshlet → remote service. One function reads
//! top to bottom: request id, route, forward within the time budget, record, log.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::HOST;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::ResponseBody;
use super::call::{call, Outcome};
use super::destination::{Destination, RoutingTable};
use super::error::{is_grpc, ProxyError};
use super::headers::ensure_request_id;
use super::server::Handler;
use super::upgrade;
use crate::config::Limits;
use crate::identity::trace::{continue_trace, TraceContext};
use crate::telemetry::metrics::DestinationMetrics;
use crate::telemetry::otlp::{Finished, Side, SpanExport};

/// Response header: attempts the call took (0 = answered by meshlet before any).
pub static X_MESH_ATTEMPTS: http::HeaderName = http::HeaderName::from_static("x-mesh-attempts");

/// The outbound listener's handler; one per worker, sharing the routing table.
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
}

impl Handler for Outbound {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let request_id = ensure_request_id(req.headers_mut());
        let sample = self.spans.as_ref().map_or(1.0, |s| s.sample);
        let trace = continue_trace(req.headers_mut(), sample);
        let method = req.method().clone();
        let grpc = is_grpc(req.headers());
        if method == http::Method::CONNECT {
            let resp = self.tunnel(req).await;
            return record(
                &self.unrouted,
                resp,
                &method,
                &request_id,
                trace,
                started,
                self.export(),
            );
        }
        let client_upgrade =
            upgrade::requested(req.headers(), req.version()).map(|_| hyper::upgrade::on(&mut req));
        let routed = {
            // Route and stamp under one look at the table; nothing awaits while it is held.
            let table = self.table.load();
            self.route(&table, &req).inspect(|(dest, _)| {
                table.identity.stamp_outbound(req.headers_mut(), dest);
            })
        };
        let (dest, strip) = match routed {
            Ok(found) => found,
            Err(e) => {
                let resp = e.to_response("", &request_id, grpc);
                self.unrouted.count_error(e.code());
                return record(
                    &self.unrouted,
                    resp,
                    &method,
                    &request_id,
                    trace,
                    started,
                    self.export(),
                );
            }
        };
        let replay_limit = self.limits.replay_buffer.as_usize();
        let Outcome { result, attempts } = call(&dest, req, strip, replay_limit).await;
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                dest.metrics.count_error(e.code());
                if grpc {
                    dest.metrics.count_grpc(u32::from(e.grpc_status()));
                }
                e.to_response(&dest.name, &request_id, grpc)
            }
        };
        resp.headers_mut()
            .insert(X_MESH_ATTEMPTS.clone(), http::HeaderValue::from(attempts));
        if let Some(client) = client_upgrade {
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut resp);
                let idle = self.limits.idle_timeout.get();
                tokio::spawn(upgrade::splice(
                    client,
                    upstream,
                    idle,
                    self.upgraded.clone(),
                ));
            }
        }
        record(
            &dest.metrics,
            resp,
            &method,
            &request_id,
            trace,
            started,
            self.export(),
        )
    }
}

impl Outbound {
    fn export(&self) -> Option<(&SpanExport, Side)> {
        self.spans.as_deref().map(|s| (s, Side::Client))
    }

    /// `CONNECT host:port` (an app's HTTPS through `HTTP_PROXY`): a tunnel only to a host
    /// configured as egress (`services.X.url`); anything else is 403.
    async fn tunnel(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let request_id = req
            .headers()
            .get(&super::headers::X_REQUEST_ID)
            .cloned()
            .unwrap_or_else(super::headers::new_request_id);
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
        let client = hyper::upgrade::on(&mut req);
        let idle = self.limits.idle_timeout.get();
        let gauge = self.upgraded.clone();
        tokio::spawn(async move {
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
fn request_host<B>(req: &Request<B>) -> Option<&str> {
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

/// Counts and logs one answered request.
pub(crate) fn record(
    metrics: &DestinationMetrics,
    mut resp: Response<ResponseBody>,
    method: &http::Method,
    request_id: &http::HeaderValue,
    trace: TraceContext,
    started: Instant,
    spans: Option<(&SpanExport, Side)>,
) -> Response<ResponseBody> {
    let elapsed = started.elapsed();
    // The caller gets the id it can quote (the upstream's own, if it set one).
    resp.headers_mut()
        .entry(&super::headers::X_REQUEST_ID)
        .or_insert_with(|| request_id.clone());
    metrics.count_request(method, resp.status());
    metrics.duration.observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "meshlet::access",
        destination = metrics.name(),
        %method,
        status = resp.status().as_u16(),
        duration_us = elapsed.as_micros() as u64,
        request_id = request_id.to_str().unwrap_or(""),
        trace_id = trace.trace_id(),
    );
    if let Some((export, side)) = spans {
        let end = std::time::SystemTime::now();
        let done = Finished {
            destination: metrics.name(),
            method,
            status: resp.status().as_u16(),
            request_id: request_id.to_str().unwrap_or(""),
            start: end.checked_sub(elapsed).unwrap_or(end),
            end,
        };
        export.record(side, &trace, &done);
    }
    resp
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
