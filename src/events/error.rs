//! Why an events request failed, and the one place that turns it into the DESIGN §7 JSON
//! error (`{"error","message","service","request_id"}` + `x-mesh-error`).

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::proxy::body::ResponseBody;

/// Header naming the error code (DESIGN §7).
const X_MESH_ERROR: &str = "x-mesh-error";

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
            EventsError::Unavailable(_) | EventsError::RedisDown(_) => "events_unavailable",
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
            EventsError::Unavailable(_) | EventsError::RedisDown(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EventsError::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    /// The response for this error.
    pub fn to_response(&self, service: &str, request_id: &str) -> Response<ResponseBody> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "service": service,
            "request_id": request_id,
        });
        let mut bytes = body.to_string().into_bytes();
        bytes.push(b'\n');
        let mut resp = Response::new(ResponseBody::full(bytes));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(X_MESH_ERROR, HeaderValue::from_static(self.code()));
        resp
    }
}
