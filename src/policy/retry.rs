//! Which failed attempts are retried, and how long to wait before the next one.

use std::time::Duration;

use http::header::{HeaderName, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode};

use crate::config::{RetryOn, RetryPolicy};
use crate::wire::grpc;

/// Header a client sets to declare a non-idempotent request safe to repeat.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What went wrong with one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection: the request was never sent.
    Connect,
    /// The connection broke after sending.
    Reset,
    /// The attempt's own time ran out.
    Timeout,
    /// The upstream answered with an error status.
    Status(StatusCode),
    /// A gRPC upstream answered with an error `grpc-status` (trailers-only).
    Grpc(u32),
}

impl Failure {
    /// Label for `meshlet_retries_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Connect => "connect-failure",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Status(s) if s == StatusCode::TOO_MANY_REQUESTS => "429",
            Failure::Status(s) if s == StatusCode::BAD_GATEWAY => "502",
            Failure::Status(s) if s == StatusCode::SERVICE_UNAVAILABLE => "503",
            Failure::Status(s) if s == StatusCode::GATEWAY_TIMEOUT => "504",
            Failure::Status(_) => "status",
            Failure::Grpc(_) => "grpc",
        }
    }

    /// Whether it counts against a breaker (5xx, connect error, timeout).
    pub fn trips_breaker(self) -> bool {
        match self {
            Failure::Status(s) => s.is_server_error(),
            // UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE: like a 5xx (docs/errors.md).
            Failure::Grpc(code) => matches!(code, 2 | 4 | 13 | 14),
            _ => true,
        }
    }
}

/// Whether a request may be sent again after it reached the upstream: idempotent methods,
/// any method with an `Idempotency-Key`, and gRPC calls when the policy names a gRPC code
/// (gRPC methods are POSTs; naming a code is the operator's statement that they are safe).
pub fn is_replayable(method: &Method, headers: &HeaderMap, policy: &RetryPolicy) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key(&IDEMPOTENCY_KEY)
        || (grpc::is_grpc(headers) && policy.on.iter().any(|c| matches!(c, RetryOn::Grpc(_))))
}

/// The `grpc-status` of a trailers-only answer, when it is an error.
pub fn grpc_failure(headers: &HeaderMap) -> Option<Failure> {
    let status = grpc::status(headers)?;
    (status != 0).then_some(Failure::Grpc(status))
}

/// Whether `failure` is retryable under `policy` for a request that is (or is not) replayable.
/// A connect failure never reached the upstream: retryable for any method.
pub fn should_retry(policy: &RetryPolicy, failure: Failure, replayable: bool) -> bool {
    let named = |c: RetryOn| policy.on.contains(&c);
    match failure {
        Failure::Connect => named(RetryOn::ConnectFailure),
        Failure::Reset => replayable && named(RetryOn::Reset),
        Failure::Timeout => replayable && (named(RetryOn::Reset) || named(RetryOn::Status(504))),
        Failure::Status(s) => replayable && named(RetryOn::Status(s.as_u16())),
        Failure::Grpc(code) => {
            replayable
                && crate::config::GrpcCode::from_status(code)
                    .is_some_and(|c| named(RetryOn::Grpc(c)))
        }
    }
}

/// The pause before retry number `retry` (1-based): exponential with full jitter in
/// [d/2, d], where d = backoff × multiplier^(retry-1) capped at max_backoff; an upstream's
/// `Retry-After` (seconds) raises it, still capped at max_backoff.
pub fn backoff(policy: &RetryPolicy, retry: u32, response: Option<&HeaderMap>) -> Duration {
    let base = policy.backoff.get().as_secs_f64();
    let exp = policy
        .multiplier
        .powi(i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX));
    let max = policy.max_backoff.get();
    let d = Duration::from_secs_f64((base * exp).min(max.as_secs_f64()));
    let jittered = d / 2 + d.mul_f64(fastrand::f64() / 2.0);
    let asked = response
        .and_then(|h| h.get(RETRY_AFTER))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match asked {
        Some(a) => jittered.max(a).min(max),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;

    #[test]
    fn post_is_retried_only_when_it_never_left() {
        let p = Policy::default().retry;
        let post = Method::POST;
        let h = HeaderMap::new();
        let replayable = is_replayable(&post, &h, &p);
        assert!(!replayable);
        assert!(should_retry(&p, Failure::Connect, replayable));
        assert!(!should_retry(
            &p,
            Failure::Status(StatusCode::SERVICE_UNAVAILABLE),
            replayable
        ));
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY.clone(), "k1".parse().unwrap());
        assert!(is_replayable(&post, &keyed, &p));
        let mut grpc = HeaderMap::new();
        grpc.insert("content-type", "application/grpc".parse().unwrap());
        assert!(
            !is_replayable(&post, &grpc, &p),
            "gRPC is retried only when a code is named"
        );
        let mut named = p.clone();
        named
            .on
            .push(RetryOn::Grpc(crate::config::GrpcCode::Unavailable));
        assert!(is_replayable(&post, &grpc, &named));
        assert!(should_retry(&named, Failure::Grpc(14), true));
        assert!(!should_retry(&named, Failure::Grpc(13), true));
    }

    #[test]
    fn only_named_statuses_are_retried() {
        let p = Policy::default().retry;
        assert!(should_retry(
            &p,
            Failure::Status(StatusCode::BAD_GATEWAY),
            true
        ));
        assert!(
            !should_retry(&p, Failure::Status(StatusCode::TOO_MANY_REQUESTS), true),
            "429 is opt-in"
        );
        assert!(!should_retry(
            &p,
            Failure::Status(StatusCode::INTERNAL_SERVER_ERROR),
            true
        ));
    }

    #[test]
    fn backoff_grows_is_jittered_capped_and_honours_retry_after() {
        let p = Policy::default().retry; // 100ms ×2, max 1s
        for _ in 0..50 {
            let first = backoff(&p, 1, None);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&p, 3, None);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff(&p, 10, None) <= Duration::from_secs(1));
        }
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(
            backoff(&p, 1, Some(&h)),
            Duration::from_secs(1),
            "capped at max_backoff"
        );
    }
}
