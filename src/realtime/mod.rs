//! The realtime hub (DESIGN §9): WebSocket clients on the inbound listener, rooms, users
//! and broadcast across every meshlet of a service.
//!
//! Not built yet: [`Realtime::start`] returns `None`.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::proxy::body::ResponseBody;
use crate::sidecar::Context;
use crate::telemetry::admin;

/// Local API paths the hub answers (on 15000).
pub const API_PATHS: &[&str] = &["/v1/broadcast", "/v1/rooms", "/v1/realtime"];

/// The hub of one sidecar.
pub struct Realtime {
    path: String,
}

impl Realtime {
    /// Starts the hub when `realtime` is configured.
    pub fn start(context: &Context<'_>) -> Option<Arc<Realtime>> {
        let _ = context;
        None
    }

    /// The WebSocket path on the inbound listener.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Answers a WebSocket connect (upgrade or refusal).
    pub async fn accept(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        admin::not_found(&req)
    }

    /// Answers a local API request under [`API_PATHS`].
    pub async fn handle_api(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        admin::not_found(&req)
    }
}
