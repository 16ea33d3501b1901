//! The hub's errors, turned into answers in one place: docs/errors.md JSON responses for the
//! connect request and the local API, and `error` frame codes on a socket.

use http::header::HeaderValue;
use http::{Response, StatusCode};

use super::auth::AuthError;
use crate::wire::{self, AnswerBody};

/// Why the hub refused something.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    /// Missing or bad token (401).
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// `max_connections` reached (503).
    #[error("the realtime hub is at max_connections ({0})")]
    Overloaded(usize),
    /// A request that is not a WebSocket upgrade on the hub path (400).
    #[error("not a WebSocket upgrade: {0}")]
    NotWebSocket(&'static str),
    /// Malformed API request (400).
    #[error("{0}")]
    BadRequest(String),
    /// API body over the limit (413).
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// Redis unreachable: the message was NOT sent (503).
    #[error("realtime backend unavailable: {0}")]
    Unavailable(String),
    /// The room name is not allowed.
    #[error("invalid room name `{0}`: use 1-200 of A-Z a-z 0-9 . _ : - @ = +")]
    BadRoom(String),
    /// The token's `rooms` claim does not grant this room.
    #[error("room `{0}` is not granted by the token's rooms claim")]
    Forbidden(String),
    /// `client_publish: deny`.
    #[error("clients may not publish here (client_publish: deny)")]
    PublishDenied,
    /// `client_publish: app` without `service.app`.
    #[error("client_publish is `app` but service.app is not configured")]
    NoApp,
    /// The client disconnected while a server-side join was on its way.
    #[error("the client is no longer connected")]
    Gone,
    /// A join beyond `realtime.max_rooms_per_client`; the connection stays.
    #[error(
        "this connection is in {0} rooms already (realtime.max_rooms_per_client); leave one first"
    )]
    TooManyRooms(usize),
    /// `realtime.app_concurrency` client publishes are on their way to the app.
    #[error("{0} client messages are on their way to the app already (realtime.app_concurrency); try again")]
    AppBusy(usize),
}

impl RealtimeError {
    /// The docs/errors.md code, also used as the `code` of an error frame.
    pub fn code(&self) -> &'static str {
        match self {
            RealtimeError::Unauthenticated(_) => "unauthenticated",
            RealtimeError::Overloaded(_) | RealtimeError::AppBusy(_) => "overloaded",
            RealtimeError::TooManyRooms(_) => "too_many_rooms",
            RealtimeError::NotWebSocket(_) | RealtimeError::BadRequest(_) => "bad_request",
            RealtimeError::BodyTooLarge(_) => "body_too_large",
            RealtimeError::Unavailable(_) => "realtime_unavailable",
            RealtimeError::BadRoom(_) => "bad_room",
            RealtimeError::Forbidden(_) => "forbidden",
            RealtimeError::PublishDenied => "publish_denied",
            RealtimeError::NoApp => "no_app",
            RealtimeError::Gone => "gone",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            RealtimeError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            RealtimeError::Overloaded(_)
            | RealtimeError::AppBusy(_)
            | RealtimeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RealtimeError::NotWebSocket(_)
            | RealtimeError::BadRequest(_)
            | RealtimeError::BadRoom(_) => StatusCode::BAD_REQUEST,
            RealtimeError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RealtimeError::Forbidden(_) | RealtimeError::PublishDenied => StatusCode::FORBIDDEN,
            RealtimeError::NoApp => StatusCode::CONFLICT,
            RealtimeError::Gone => StatusCode::GONE,
            RealtimeError::TooManyRooms(_) => StatusCode::CONFLICT,
        }
    }

    /// The docs/errors.md response: `{"error","message","service","request_id"}` and
    /// `x-mesh-error`.
    pub fn to_response(&self, service: &str, request_id: &str) -> Response<AnswerBody> {
        let message = self.to_string();
        let mut resp =
            wire::error_response(self.status(), self.code(), &message, service, request_id);
        if matches!(self, RealtimeError::NotWebSocket(_)) {
            resp.headers_mut()
                .insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        resp
    }
}
