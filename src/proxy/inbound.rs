//! The inbound side: remote meshlet → this meshlet → the local app (`service.app`).
//! No routing and no time budget of its own: the caller's meshlet owns the call's budget.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use arc_swap::ArcSwap;

use super::destination::{Destination, RoutingTable};
use super::error::ProxyError;
use super::exchange::Exchange;
use super::forward;
use super::response_body::ResponseBody;
use super::server::Handler;
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
}

impl Handler for Inbound {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        if let Some(route) = &self.route {
            if req.uri().path() == route.path() {
                return route.answer(req).map(Into::into);
            }
        }
        let exchange = Exchange::begin(&mut req, self.spans.as_deref(), Side::Server);
        let Some(app) = &self.app else {
            let e = ProxyError::UpstreamUnavailable("no service.app is configured".to_owned());
            return exchange.error_response("", &e);
        };
        let checked = self.table.load().identity.check_inbound(req.headers_mut());
        if let Err(rejected) = checked {
            let e = ProxyError::from(rejected);
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
