//! Resilience policy per destination (docs/architecture.md): the state that outlives config reloads
//! ([`DestinationState`]: breaker, retry budget, stale cache, concurrency count) and the
//! pieces the call path applies in order: fault injection ▶ rate limit ▶ degrade ▶ breaker
//! ▶ concurrency ▶ total timeout ▶ retry (budget, backoff) ▶ per-try timeout ▶ balance
//! (outlier ejection).

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod clock;
pub mod fault;
pub mod rate_limit;
pub mod retry;
pub mod stale;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// What a destination keeps across table rebuilds and config reloads.
#[derive(Debug, Default)]
pub struct DestinationState {
    /// The service-level breaker.
    pub breaker: breaker::Breaker,
    /// The retry budget.
    pub budget: budget::RetryBudget,
    /// Last good answers, for `degrade: {stale: ..}`.
    pub stale: stale::StaleCache,
    in_flight: AtomicU32,
}

impl DestinationState {
    /// Takes a concurrency slot, or `None` when `max` (non-zero) are taken.
    pub fn acquire(self: &Arc<Self>, max: u32) -> Option<Permit> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if max != 0 && now > max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit(self.clone()))
    }
}

/// A concurrency slot, released on drop (when the response body ends).
#[derive(Debug)]
pub struct Permit(Arc<DestinationState>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
