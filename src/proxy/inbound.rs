//! The inbound side: remote meshlet → this meshlet → the local app (`service.app`).
//! No routing and no time budget of its own: the caller's meshlet owns the call's budget.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::ResponseBody;
use super::destination::{Destination, RoutingTable};
use super::error::ProxyError;
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
        let trace = continue_trace(req.headers_mut());
        let Some(app) = &self.app else {
            let e = ProxyError::UpstreamUnavailable("no service.app is configured".to_owned());
            return e.to_response("", request_id.to_str().unwrap_or(""));
        };
        let method = req.method().clone();
        let checked = self.table.load().identity.check_inbound(req.headers_mut());
        if let Err(e) = checked {
            app.metrics.count_error(e.code());
            let resp = e.to_response(&app.name, request_id.to_str().unwrap_or(""));
            return record(&app.metrics, resp, &method, &request_id, trace, started);
        }
        let resp = match forward::once(app, req).await {
            Ok(resp) => resp,
            Err(e) => {
                app.metrics.count_error(e.code());
                e.to_response(&app.name, request_id.to_str().unwrap_or(""))
            }
        };
        record(&app.metrics, resp, &method, &request_id, trace, started)
    }
}
