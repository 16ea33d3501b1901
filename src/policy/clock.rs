//! A cheap monotonic clock shared by the breakers, budgets and rate limits: milliseconds
//! and nanoseconds since the first call in this process, from one start instant.

use std::sync::OnceLock;
use std::time::Instant;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the first call in this process (monotonic).
pub fn now_ms() -> u64 {
    u64::try_from(start().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Nanoseconds since the first call in this process (monotonic; u64 lasts 584 years).
pub fn now_ns() -> u64 {
    u64::try_from(start().elapsed().as_nanos()).unwrap_or(u64::MAX)
}
