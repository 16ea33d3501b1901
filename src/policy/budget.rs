//! The retry budget: retries may be at most `percent` of the requests of the last 10 s,
//! plus `per_second` always allowed, so an outage never multiplies the load on a service.
//! Ten one-second buckets of atomic counters; approximate under races, never locked.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::clock;

const BUCKETS: usize = 10;

#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// One destination's budget.
#[derive(Debug, Default)]
pub struct RetryBudget {
    buckets: [Bucket; BUCKETS],
}

impl RetryBudget {
    fn bucket(&self, second: u64) -> &Bucket {
        let b = &self.buckets[(second % BUCKETS as u64) as usize];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Release);
            b.retries.store(0, Ordering::Release);
        }
        b
    }

    /// Counts one original request (deposits into the budget).
    pub fn deposit(&self) {
        let now = clock::now_ms() / 1000;
        self.bucket(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is room.
    pub fn try_withdraw(&self, percent: f64, per_second: u32) -> bool {
        let now = clock::now_ms() / 1000;
        let current = self.bucket(now);
        if current.retries.load(Ordering::Relaxed) < per_second {
            current.retries.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            if now.saturating_sub(b.second.load(Ordering::Acquire)) < BUCKETS as u64 {
                requests += u64::from(b.requests.load(Ordering::Relaxed));
                retries += u64::from(b.retries.load(Ordering::Relaxed));
            }
        }
        let allowed = (requests as f64 * percent / 100.0) as u64 + u64::from(per_second);
        if retries < allowed {
            current.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_share_plus_reserve() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.deposit();
        }
        // 20% of 100 requests + a reserve of 5 → 25 retries, then no more.
        let granted = (0..100).filter(|_| b.try_withdraw(20.0, 5)).count();
        assert_eq!(granted, 25);
    }

    #[test]
    fn the_reserve_allows_retries_with_no_traffic_history() {
        let b = RetryBudget::default();
        assert_eq!((0..20).filter(|_| b.try_withdraw(20.0, 10)).count(), 10);
        assert!(!RetryBudget::default().try_withdraw(0.0, 0));
    }
}
