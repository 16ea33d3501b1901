//! The errors meshlet answers itself (docs/errors.md), turned into responses in one place:
//! a JSON body `{"error","message","service","request_id"}` and an `x-mesh-error` header.

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::body::ResponseBody;

/// Header naming the error code on every response meshlet makes itself.
pub const X_MESH_ERROR: &str = "x-mesh-error";

/// Why meshlet answered instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No service matches the request.
    #[error("no service matches host `{host}` or path `{path}`")]
    NoRoute {
        /// Host the request named (may be empty).
        host: String,
        /// Request path.
        path: String,
    },
    /// The service has no live instance.
    #[error("service has no live endpoints")]
    NoEndpoints,
    /// Connect or reset failures.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The call's time budget ran out.
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
    /// Breaker open and no degrade answer.
    #[error("circuit open; retry after {0}s")]
    CircuitOpen(u64),
    /// Unsafe method refused while degraded.
    #[error("service is degraded to read-only; {0} refused")]
    ReadOnly(http::Method),
    /// Concurrency cap reached.
    #[error("too many requests in flight")]
    Overloaded,
    /// Inbound identity missing or invalid.
    #[error("{0}")]
    Unauthenticated(String),
    /// Inbound caller not allowed.
    #[error("caller `{0}` is not allowed")]
    Forbidden(String),
    /// Request target longer than `limits.max_uri_bytes`.
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    /// Request body over a limit.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// Request head over `limits.max_header_bytes`.
    #[error("request headers larger than {0} bytes")]
    HeadersTooLarge(usize),
}

impl ProxyError {
    /// The docs/errors.md code.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::NoEndpoints => "no_endpoints",
            ProxyError::UpstreamUnavailable(_) => "upstream_unavailable",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::CircuitOpen(_) => "circuit_open",
            ProxyError::ReadOnly(_) => "read_only",
            ProxyError::Overloaded => "overloaded",
            ProxyError::Unauthenticated(_) => "unauthenticated",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::UriTooLong(_) => "uri_too_long",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::HeadersTooLarge(_) => "headers_too_large",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints
            | ProxyError::CircuitOpen(_)
            | ProxyError::ReadOnly(_)
            | ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// The gRPC status a gRPC client gets for this error (docs/errors.md).
    pub fn grpc_status(&self) -> u8 {
        match self {
            ProxyError::Timeout(_) => 4,      // DEADLINE_EXCEEDED
            ProxyError::NoRoute { .. } => 12, // UNIMPLEMENTED
            ProxyError::Unauthenticated(_) => 16,
            ProxyError::Forbidden(_) => 7, // PERMISSION_DENIED
            ProxyError::BodyTooLarge(_)
            | ProxyError::UriTooLong(_)
            | ProxyError::HeadersTooLarge(_) => 8, // RESOURCE_EXHAUSTED
            _ => 14,                       // UNAVAILABLE
        }
    }

    /// The response meshlet sends for this error: JSON, or a trailers-only gRPC status
    /// toward a gRPC client.
    pub fn to_response(
        &self,
        service: &str,
        request_id: &HeaderValue,
        grpc: bool,
    ) -> Response<ResponseBody> {
        if grpc {
            return self.to_grpc_response();
        }
        let request_id = request_id.to_str().unwrap_or("");
        let message = self.to_string();
        let mut resp = error_response(self.status(), self.code(), &message, service, request_id);
        let h = resp.headers_mut();
        match self {
            ProxyError::CircuitOpen(secs) => {
                h.insert(RETRY_AFTER, HeaderValue::from(*secs));
            }
            ProxyError::ReadOnly(_) => {
                h.insert("x-mesh-degraded", HeaderValue::from_static("read_only"));
            }
            _ => {}
        }
        resp
    }

    fn to_grpc_response(&self) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::empty());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        // The code names are plain ASCII: no percent-encoding needed.
        h.insert("grpc-message", HeaderValue::from_static(self.code()));
        h.insert(X_MESH_ERROR, HeaderValue::from_static(self.code()));
        resp
    }
}

/// The docs/errors.md error answer every part of meshlet gives: a JSON body
/// `{"error","message","service","request_id"}` and an `x-mesh-error` header.
pub fn error_response(
    status: StatusCode,
    code: &'static str,
    message: &str,
    service: &str,
    request_id: &str,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": code,
        "message": message,
        "service": service,
        "request_id": request_id,
    });
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    let mut resp = Response::new(ResponseBody::full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(X_MESH_ERROR, HeaderValue::from_static(code));
    resp
}

/// Whether a request is gRPC (its errors must be gRPC statuses).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
