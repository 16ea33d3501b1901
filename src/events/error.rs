//! Why an events request failed, and the one place that turns it into the docs/errors.md JSON
//! error (`{"error","message","service","request_id"}` + `x-mesh-error`).

use http::{Response, StatusCode};

use crate::wire::{self, AnswerBody};

/// An events request that could not be served.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The type name is outside `[A-Za-z0-9._-]{1,128}`.
    #[error("invalid event type `{0}`: use 1-128 of A-Z a-z 0-9 . _ -")]
    BadType(String),
    /// The body (or an ndjson line) is not JSON.
    #[error("{0}")]
    NotJson(String),
    /// A header or query parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The body is over the limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// Redis did not answer in time or at all: nothing was stored.
    #[error("redis unreachable ({0}): the event was NOT stored; publish again with the same id")]
    Unavailable(String),
    /// Redis unreachable for an operator request (DLQ list or replay).
    #[error("redis unreachable ({0})")]
    RedisDown(String),
    /// RabbitMQ unreachable, or no publisher confirm in time: nothing was published.
    #[error(
        "rabbitmq unreachable ({0}): the event was NOT stored; publish again with the same id"
    )]
    BrokerUnavailable(String),
    /// RabbitMQ unreachable for an operator request (DLQ list or replay).
    #[error("rabbitmq unreachable ({0})")]
    BrokerDown(String),
    /// No such route under `/v1/events`.
    #[error("no {0}")]
    NotFound(String),
}

impl EventsError {
    /// The error code.
    pub fn code(&self) -> &'static str {
        match self {
            EventsError::BadType(_) | EventsError::NotJson(_) | EventsError::BadRequest(_) => {
                "bad_request"
            }
            EventsError::TooLarge(_) => "body_too_large",
            EventsError::Unavailable(_)
            | EventsError::RedisDown(_)
            | EventsError::BrokerUnavailable(_)
            | EventsError::BrokerDown(_) => "events_unavailable",
            EventsError::NotFound(_) => "not_found",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            EventsError::BadType(_) | EventsError::NotJson(_) | EventsError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            EventsError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            EventsError::Unavailable(_)
            | EventsError::RedisDown(_)
            | EventsError::BrokerUnavailable(_)
            | EventsError::BrokerDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            EventsError::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    /// The response for this error.
    pub fn to_response(&self, service: &str, request_id: &str) -> Response<AnswerBody> {
        let message = self.to_string();
        wire::error_response(self.status(), self.code(), &message, service, request_id)
    }
}
