//! The inbound side: remote meshlet → this meshlet → the local app (`service.app`).
//! No routing and no time budget of its own: the caller's meshlet owns the call's budget.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::ResponseBody;
use super::destination::Destination;
use super::forward;
use super::headers::ensure_request_id;
use super::outbound::record;
use super::server::Handler;

/// The inbound listener's handler.
pub struct Inbound {
    /// The local app as a destination with one endpoint.
    pub app: Arc<Destination>,
}

impl Handler for Inbound {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let request_id = ensure_request_id(req.headers_mut());
        let method = req.method().clone();
        let resp = match forward::once(&self.app, req).await {
            Ok(resp) => resp,
            Err(e) => {
                self.app.metrics.count_error(e.code());
                e.to_response(&self.app.name, request_id.to_str().unwrap_or(""))
            }
        };
        record(&self.app.metrics, resp, &method, &request_id, started)
    }
}
