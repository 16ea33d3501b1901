//! The inbound side: remote meshlet → this meshlet → the local app (`service.app`).
//! No routing and no time budget of its own: the caller's meshlet owns the call's budget.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::destination::{Destination, RoutingTable};
use super::error::ProxyError;
use super::exchange::Exchange;
use super::forward;
use super::server::Handler;
use crate::realtime::Realtime;
use crate::telemetry::otlp::Side;
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
    /// No bytes either way on an upgraded connection or a streamed body for this long: closed.
    pub idle_timeout: std::time::Duration,
    /// OTLP span export, when configured.
    pub spans: Option<Arc<crate::telemetry::otlp::SpanExport>>,
}

impl Handler for Inbound {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        if let Some(hub) = &self.realtime {
            if req.uri().path() == hub.path() {
                return hub.accept(req).await;
            }
        }
        let exchange = Exchange::begin(&mut req, self.spans.as_deref(), Side::Server);
        let Some(app) = &self.app else {
            let e = ProxyError::UpstreamUnavailable("no service.app is configured".to_owned());
            return exchange.error_response("", &e);
        };
        let checked = self.table.load().identity.check_inbound(req.headers_mut());
        if let Err(e) = checked {
            app.metrics.count_error(e.code());
            let resp = exchange.error_response(&app.name, &e);
            return exchange.finish(&app.metrics, resp);
        }
        let client_upgrade = super::upgrade::client_half(&mut req);
        let mut resp = match forward::once(app, req).await {
            Ok(resp) => resp,
            Err(e) => {
                app.metrics.count_error(e.code());
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
        exchange.finish(&app.metrics, resp)
    }
}
