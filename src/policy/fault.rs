//! Fault injection (docs/policy.md, "Fault injection"): which faults one outbound call
//! gets, drawn against the destination's `fault` shares. The call path applies them first,
//! before the rate limit, the breaker and the retries, as Envoy's fault filter sits before
//! its router: an abort never reaches the upstream, a delay waits outside the `timeout`.

use std::time::Duration;

use http::StatusCode;

use crate::config::FaultPolicy;

/// The faults drawn for one call: a delay to wait first, and an abort to answer with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// Wait this long before going on.
    pub delay: Option<Duration>,
    /// Then answer with this status instead of calling the upstream.
    pub abort: Option<StatusCode>,
}

/// Draws the faults of one call. `draw` returns a number in `[0, 100)`; a fault with share
/// `p` is injected when the draw is below `p`, so 0 never and 100 always. Each fault has its
/// own draw, made only when its share is above 0.
pub fn roll(policy: &FaultPolicy, mut draw: impl FnMut() -> f64) -> Injected {
    let mut hit = |percent: f64| percent > 0.0 && draw() < percent;
    let delay =
        (!policy.delay.get().is_zero() && hit(policy.delay_percent)).then(|| policy.delay.get());
    // The status was checked (200-599) when the config was loaded.
    let abort = hit(policy.abort_percent).then(|| {
        StatusCode::from_u16(policy.abort_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    });
    Injected { delay, abort }
}

/// A uniform draw in `[0, 100)` from the crate's one source of randomness (as the retry
/// backoff's jitter).
pub fn percent_draw() -> f64 {
    fastrand::f64() * 100.0
}

/// The gRPC status an injected abort of `status` is to a gRPC client: the mapping of
/// gRPC's "HTTP to gRPC Status Code Mapping" (Envoy's fault filter uses the same), so a
/// 503 is `UNAVAILABLE`.
pub fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn policy(delay_percent: f64, abort_percent: f64) -> FaultPolicy {
        FaultPolicy {
            delay_percent,
            delay: Dur::millis(200),
            abort_percent,
            abort_status: 500,
        }
    }

    #[test]
    fn a_fault_is_injected_when_the_draw_is_below_its_share() {
        let p = policy(10.0, 5.0);
        let both = roll(&p, || 4.9);
        assert_eq!(both.delay, Some(Duration::from_millis(200)));
        assert_eq!(both.abort, Some(StatusCode::INTERNAL_SERVER_ERROR));
        let delay_only = roll(&p, || 5.0);
        assert_eq!((delay_only.delay.is_some(), delay_only.abort), (true, None));
        assert_eq!(roll(&p, || 10.0), Injected::default());
        assert_eq!(
            roll(&policy(100.0, 100.0), || 99.999).abort,
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
    }

    #[test]
    fn a_zero_share_never_draws() {
        let mut draws = 0;
        let none = roll(&policy(0.0, 0.0), || {
            draws += 1;
            0.0
        });
        assert_eq!((none, draws), (Injected::default(), 0));
        let no_duration = FaultPolicy {
            delay: Dur::secs(0),
            ..policy(100.0, 0.0)
        };
        assert_eq!(roll(&no_duration, || 0.0).delay, None);
    }

    #[test]
    fn shares_hold_over_many_draws() {
        let p = policy(0.0, 10.0);
        let aborted = (0..100_000)
            .filter(|_| roll(&p, percent_draw).abort.is_some())
            .count();
        assert!((9_000..11_000).contains(&aborted), "{aborted}");
    }

    #[test]
    fn a_503_abort_is_unavailable_to_a_grpc_client() {
        assert_eq!(grpc_status(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(grpc_status(StatusCode::TOO_MANY_REQUESTS), 14);
        assert_eq!(grpc_status(StatusCode::FORBIDDEN), 7);
        assert_eq!(grpc_status(StatusCode::INTERNAL_SERVER_ERROR), 2);
    }
}
