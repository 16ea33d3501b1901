//! Events over Redis Streams (DESIGN §8): publish on the local API, delivery to the app
//! as HTTP POSTs, at least once, with dead letters.
//!
//! Not built yet: [`Events::start`] returns `None`, and the local API answers
//! `/v1/events/...` with `not_configured`.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::proxy::body::ResponseBody;
use crate::sidecar::Context;
use crate::telemetry::admin;

/// The events module of one sidecar.
pub struct Events {
    _private: (),
}

impl Events {
    /// Starts publishing and delivery tasks when `events` and `registry.redis` are set.
    pub fn start(context: &Context<'_>) -> Option<Arc<Events>> {
        let _ = context;
        None
    }

    /// Answers a local API request under `/v1/events`.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        admin::not_found(&req)
    }
}
