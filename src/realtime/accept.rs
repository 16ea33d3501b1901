//! The hub's WebSocket endpoint on the inbound listener: checks a connect (an HTTP/1.1
//! upgrade, the client's token, shutdown, a free connection slot), then answers 101 and
//! starts the socket task ([`super::connection`]), or refuses with a docs/errors.md answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::connection;
use super::error::RealtimeError;
use super::hub::{self, Client};
use super::Realtime;
use crate::identity::request_id;
use crate::proxy::inbound::InboundRoute;
use crate::proxy::server::ConnectionHold;
use crate::wire::AnswerBody;

/// The hub's WebSocket path on the inbound listener.
struct WebSocketRoute(Arc<Realtime>);

impl InboundRoute for WebSocketRoute {
    fn path(&self) -> &str {
        &self.0.path
    }

    fn answer(&self, req: Request<Incoming>) -> Response<AnswerBody> {
        self.0.accept(req)
    }
}

impl Realtime {
    /// The hub's WebSocket endpoint, as the inbound listener serves it.
    pub(crate) fn route(self: &Arc<Self>) -> Arc<dyn InboundRoute> {
        Arc::new(WebSocketRoute(self.clone()))
    }

    /// Answers a WebSocket connect: 101 and a socket task, or a docs/errors.md refusal. The
    /// token is checked and a connection slot taken before the upgrade.
    fn accept(self: &Arc<Self>, mut req: Request<Incoming>) -> Response<AnswerBody> {
        match self.admit(&req) {
            Ok((response, client, admission)) => {
                self.metrics.connects.accepted.inc();
                let hub = self.clone();
                // Taken out of the request now, so the task does not keep the request; the
                // socket keeps its place under the listener's `limits.max_connections`.
                let hold = req.extensions_mut().remove::<ConnectionHold>();
                let upgrade = hyper::upgrade::on(req);
                tokio::spawn(async move {
                    let _hold = hold;
                    match upgrade.await {
                        Ok(upgraded) => connection::serve(hub, upgraded, client, admission).await,
                        Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
                    }
                });
                response
            }
            Err(e) => {
                match e {
                    RealtimeError::Unauthenticated(_) => {
                        self.metrics.connects.unauthenticated.inc()
                    }
                    RealtimeError::Overloaded(_) => self.metrics.connects.overloaded.inc(),
                    _ => self.metrics.connects.bad_request.inc(),
                }
                e.to_response(&self.service, &request_id::of(req.headers()))
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn admit(
        self: &Arc<Self>,
        req: &Request<Incoming>,
    ) -> Result<(Response<AnswerBody>, Arc<Client>, hub::Admission), RealtimeError> {
        let key = websocket_key(req)?;
        let identity = self.verifier.verify(req.uri().query(), req.headers())?;
        if self.shutdown.is_started() {
            return Err(RealtimeError::Overloaded(self.hub.connections()));
        }
        let admission = self.hub.admit().ok_or(RealtimeError::Overloaded(
            self.config.max_connections as usize,
        ))?;
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = Arc::from(format!("{}:{n}", self.instance));
        let client = Client::new(id, identity, self.config.send_queue as usize);
        let mut resp = Response::new(AnswerBody::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        // The accept key is base64: always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
        Ok((resp, client, admission))
    }
}

/// The `Sec-WebSocket-Key` of a valid HTTP/1.1 upgrade request.
fn websocket_key(req: &Request<Incoming>) -> Result<String, RealtimeError> {
    if req.method() != Method::GET {
        return Err(RealtimeError::NotWebSocket("the method must be GET"));
    }
    if req.version() != Version::HTTP_11 {
        return Err(RealtimeError::NotWebSocket("WebSocket needs HTTP/1.1"));
    }
    let h = req.headers();
    let has = |name: http::header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has(UPGRADE, "websocket") || !has(CONNECTION, "upgrade") {
        return Err(RealtimeError::NotWebSocket(
            "missing Upgrade: websocket / Connection: Upgrade",
        ));
    }
    if h.get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(RealtimeError::NotWebSocket(
            "Sec-WebSocket-Version must be 13",
        ));
    }
    h.get(SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or(RealtimeError::NotWebSocket("missing Sec-WebSocket-Key"))
}
