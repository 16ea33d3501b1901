//! The inbound side: remote meshlet → this meshlet → the local app (`service.app`).
//! No routing and no time budget of its own: the caller's meshlet owns the call's budget.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::ResponseBody;
use super::destination::{Destination, RoutingTable};
use super::error::{is_grpc, ProxyError};
use super::forward;
use super::headers::ensure_request_id;
use super::outbound::record;
use super::server::Handler;
use crate::identity::trace::continue_trace;
use crate::realtime::Realtime;
use arc_swap::ArcSwap;

/// The inbound listener's handler.
pub struct Inbound {
    /// The live table (for the identity settings).
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// The local app as a destination with one endpoint (`None` without `service.app`).
    pub app: Option<Arc<Destination>>,
    /// The WebSocket hub, served at `realtime.path`.
    pub realtime: Option<Arc<Realtime>>,
    /// Upgraded connections being spliced.
    pub upgraded: prometheus::IntGauge,
    /// No bytes either way on an upgraded connection for this long: closed.
    pub idle_timeout: std::time::Duration,
    /// OTLP span export, when configured.
    pub spans: Option<Arc<crate::telemetry::otlp::SpanExport>>,
}

impl Inbound {
    fn export(
        &self,
    ) -> Option<(
        &crate::telemetry::otlp::SpanExport,
        crate::telemetry::otlp::Side,
    )> {
        self.spans
            .as_deref()
            .map(|s| (s, crate::telemetry::otlp::Side::Server))
    }
}

impl Handler for Inbound {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        if let Some(hub) = &self.realtime {
            if req.uri().path() == hub.path() {
                return hub.accept(req).await;
            }
        }
        let started = Instant::now();
        let request_id = ensure_request_id(req.headers_mut());
        let sample = self.spans.as_ref().map_or(1.0, |s| s.sample);
        let trace = continue_trace(req.headers_mut(), sample);
        let Some(app) = &self.app else {
            let e = ProxyError::UpstreamUnavailable("no service.app is configured".to_owned());
            return e.to_response("", &request_id, is_grpc(req.headers()));
        };
        let method = req.method().clone();
        let grpc = is_grpc(req.headers());
        let checked = self.table.load().identity.check_inbound(req.headers_mut());
        if let Err(e) = checked {
            app.metrics.count_error(e.code());
            let resp = e.to_response(&app.name, &request_id, grpc);
            return record(
                &app.metrics,
                resp,
                &method,
                &request_id,
                trace,
                started,
                self.export(),
            );
        }
        let client_upgrade = super::upgrade::requested(req.headers(), req.version())
            .map(|_| hyper::upgrade::on(&mut req));
        let resp = match forward::once(app, req).await {
            Ok(resp) => resp,
            Err(e) => {
                app.metrics.count_error(e.code());
                e.to_response(&app.name, &request_id, grpc)
            }
        };
        let mut resp = resp;
        if let Some(client) = client_upgrade {
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut resp);
                let gauge = self.upgraded.clone();
                tokio::spawn(super::upgrade::splice(
                    client,
                    upstream,
                    self.idle_timeout,
                    gauge,
                ));
            }
        }
        record(
            &app.metrics,
            resp,
            &method,
            &request_id,
            trace,
            started,
            self.export(),
        )
    }
}
