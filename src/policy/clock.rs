//! A cheap monotonic millisecond clock shared by the breakers and budgets.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call in this process (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}
