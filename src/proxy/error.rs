//! The errors the data plane answers itself (docs/errors.md), turned into responses in one
//! place: the JSON answer of [`crate::wire::error_response`], or a trailers-only gRPC status
//! toward a gRPC client.

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use super::response_body::ResponseBody;
use crate::identity::Rejection;
use crate::wire;

/// Response header on an answer a fault shaped: `abort` on an injected abort, `delay` on
/// the real answer to a call an injected delay held (docs/policy.md, "Fault injection").
pub static X_MESH_FAULT: http::HeaderName = http::HeaderName::from_static("x-mesh-fault");

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
    /// `fault.abort` answered this call instead of the upstream (docs/policy.md).
    #[error("fault injected: aborted with {}", .0.as_u16())]
    FaultInjected(StatusCode),
    /// A `rate_limit` token bucket is empty; holds `Retry-After` in seconds.
    #[error("rate limit reached; retry after {0}s")]
    RateLimited(u64),
    /// Inbound identity missing or invalid.
    #[error("{0}")]
    Unauthenticated(String),
    /// Inbound caller not allowed.
    #[error("caller `{0}` is not allowed")]
    Forbidden(String),
    /// Request target longer than `limits.max_uri_bytes`.
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    /// Inbound: a path meshlet itself delivers to its app (an event subscription's, the
    /// hub's `on_message`); no one may post there through the inbound listener.
    #[error(
        "`{0}` is where meshlet delivers to its app; it is not served on the inbound listener"
    )]
    DeliveryPath(String),
    /// The request already went through `limits.max_hops` meshlets: a routing loop.
    #[error("the request already passed {hops} meshlets (limits.max_hops {max}): a routing loop")]
    LoopDetected {
        /// meshlet `Via` entries the request arrived with.
        hops: u32,
        /// `limits.max_hops`.
        max: u32,
    },
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
            ProxyError::FaultInjected(_) => "fault_injected",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::Unauthenticated(_) => "unauthenticated",
            ProxyError::Forbidden(_) | ProxyError::DeliveryPath(_) => "forbidden",
            ProxyError::UriTooLong(_) => "uri_too_long",
            ProxyError::LoopDetected { .. } => "loop_detected",
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
            ProxyError::Forbidden(_) | ProxyError::DeliveryPath(_) => StatusCode::FORBIDDEN,
            ProxyError::LoopDetected { .. } => StatusCode::LOOP_DETECTED,
            ProxyError::FaultInjected(status) => *status,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The gRPC status a gRPC client gets for this error (docs/errors.md).
    pub fn grpc_status(&self) -> u8 {
        match self {
            ProxyError::Timeout(_) => 4,      // DEADLINE_EXCEEDED
            ProxyError::NoRoute { .. } => 12, // UNIMPLEMENTED
            ProxyError::Unauthenticated(_) => 16,
            ProxyError::Forbidden(_) | ProxyError::DeliveryPath(_) => 7, // PERMISSION_DENIED
            ProxyError::UriTooLong(_) | ProxyError::RateLimited(_) => 8, // RESOURCE_EXHAUSTED
            ProxyError::FaultInjected(status) => crate::policy::fault::grpc_status(*status),
            _ => 14, // UNAVAILABLE (`loop_detected` included: no route ends it)
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
            let mut resp = wire::grpc::trailers_only(self.grpc_status(), self.code());
            if let ProxyError::FaultInjected(_) = self {
                resp.headers_mut()
                    .insert(X_MESH_FAULT.clone(), HeaderValue::from_static("abort"));
            }
            return resp.map(Into::into);
        }
        let request_id = request_id.to_str().unwrap_or("");
        let message = self.to_string();
        let mut resp =
            wire::error_response(self.status(), self.code(), &message, service, request_id);
        let h = resp.headers_mut();
        match self {
            ProxyError::CircuitOpen(secs) => {
                h.insert(RETRY_AFTER, HeaderValue::from(*secs));
            }
            ProxyError::ReadOnly(_) => {
                h.insert("x-mesh-degraded", HeaderValue::from_static("read_only"));
            }
            ProxyError::FaultInjected(_) => {
                h.insert(X_MESH_FAULT.clone(), HeaderValue::from_static("abort"));
            }
            ProxyError::RateLimited(secs) => {
                h.insert(RETRY_AFTER, HeaderValue::from(*secs));
            }
            _ => {}
        }
        resp.map(Into::into)
    }
}

impl From<Rejection> for ProxyError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Unauthenticated(reason) => ProxyError::Unauthenticated(reason),
            Rejection::Forbidden(caller) => ProxyError::Forbidden(caller),
        }
    }
}
