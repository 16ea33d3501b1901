//! Rate limits (docs/policy.md, "Rate limits"): token buckets, kept as GCRA (the generic
//! cell rate algorithm, a token bucket written as one timestamp) so a bucket is one
//! `AtomicU64` taken by compare-and-swap, without a lock. [`RateLimiter`] is one bucket
//! (an outbound destination's, or the inbound side's for everyone); [`InboundLimiter`] adds
//! a bounded bucket per verified caller. Every decision takes the time as an argument, so
//! the maths is tested with an injected clock; the call paths pass [`super::clock::now_ns`].
//!
//! The bucket as a timestamp: `tat` (theoretical arrival time) is when the bucket will be
//! full again. A call at `now` costs one `interval` (1 s / `per_second`); it is let through
//! when, after paying, the bucket is not over `burst` intervals in debt:
//! `max(tat, now) + interval - now <= burst × interval`.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const NANOS_PER_SECOND: f64 = 1e9;

/// A bucket's settings, as the nanosecond figures the decision uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    per_second: f64,
    burst: u32,
    /// The cost of one call.
    interval_ns: u64,
    /// How far `tat` may run ahead of now: the bucket's size.
    capacity_ns: u64,
}

impl Rate {
    /// `per_second` calls a second (above 0; validated at load), up to `burst` (at least 1)
    /// at once.
    pub fn new(per_second: f64, burst: u32) -> Rate {
        // A float-to-int `as` saturates: a tiny rate costs u64::MAX, never wraps.
        let interval_ns = ((NANOS_PER_SECOND / per_second) as u64).max(1);
        Rate {
            per_second,
            burst,
            interval_ns,
            capacity_ns: interval_ns.saturating_mul(u64::from(burst.max(1))),
        }
    }

    /// Whether a bucket made for `per_second` and `burst` would be this one.
    pub fn is(&self, per_second: f64, burst: u32) -> bool {
        self.per_second == per_second && self.burst == burst
    }

    /// One call at `now` against a bucket at `tat`: the new `tat` when it may go, else how
    /// long until it may.
    fn decide(&self, tat: u64, now: u64) -> Result<u64, Duration> {
        let paid = tat.max(now).saturating_add(self.interval_ns);
        let debt = paid - now;
        if debt <= self.capacity_ns {
            Ok(paid)
        } else {
            Err(Duration::from_nanos(debt - self.capacity_ns))
        }
    }

    /// Whether a bucket at `tat` is full at `now` (dropping it loses nothing).
    fn is_full(tat: u64, now: u64) -> bool {
        tat <= now
    }
}

/// What a refused caller is told: `Retry-After` in whole seconds, at least 1, from when the
/// bucket will hold a token.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// One token bucket: `tat` in nanoseconds of [`super::clock::now_ns`]; 0 is a full bucket.
#[derive(Debug, Default)]
pub struct Bucket {
    tat_ns: AtomicU64,
}

impl Bucket {
    /// Takes a token at `now`, or says how long until there is one.
    pub fn take(&self, rate: &Rate, now: u64) -> Result<(), Duration> {
        let mut tat = self.tat_ns.load(Ordering::Acquire);
        loop {
            let paid = rate.decide(tat, now)?;
            match self
                .tat_ns
                .compare_exchange_weak(tat, paid, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// One bucket with its settings: an outbound destination's (`rate_limit`), kept across
/// table rebuilds while its settings stay the same (so a reload cannot reset a limit).
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    bucket: Bucket,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: Rate::new(per_second, burst),
            bucket: Bucket::default(),
        }
    }

    /// The settings it was made with.
    pub fn rate(&self) -> &Rate {
        &self.rate
    }

    /// Takes a token at `now`, or says how long until there is one.
    pub fn take(&self, now: u64) -> Result<(), Duration> {
        self.bucket.take(&self.rate, now)
    }
}

/// Callers with a bucket of their own at most; more are served by one shared overflow
/// bucket until idle ones are dropped, so a hostile set of names cannot grow memory.
pub const MAX_CALLERS: usize = 10_000;
/// Shards of the per-caller map: a caller's shard is picked by a keyed hash, so callers
/// rarely wait on one another's lock and no name can be chosen to crowd one shard.
const SHARDS: usize = 16;
const PER_SHARD: usize = MAX_CALLERS / SHARDS;

/// The inbound side's limit (`auth.inbound.rate_limit`): one bucket for everyone, or with
/// `per_caller` one per verified caller, unauthenticated callers sharing one.
#[derive(Debug)]
pub struct InboundLimiter {
    /// Everyone's bucket, or (per caller) the unauthenticated callers'.
    shared: RateLimiter,
    per_caller: Option<CallerBuckets>,
}

/// Caller name → its bucket's `tat`.
type Shard = Mutex<HashMap<Box<str>, u64>>;

#[derive(Debug)]
struct CallerBuckets {
    hasher: RandomState,
    shards: Box<[Shard]>,
    /// For callers that found their shard full of callers still being limited.
    overflow: Bucket,
}

impl InboundLimiter {
    /// A limiter with full buckets.
    pub fn new(per_second: f64, burst: u32, per_caller: bool) -> InboundLimiter {
        InboundLimiter {
            shared: RateLimiter::new(per_second, burst),
            per_caller: per_caller.then(|| CallerBuckets {
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                overflow: Bucket::default(),
            }),
        }
    }

    /// Whether a limiter made with these settings would be this one.
    pub fn is(&self, per_second: f64, burst: u32, per_caller: bool) -> bool {
        self.shared.rate.is(per_second, burst) && self.per_caller.is_some() == per_caller
    }

    /// Takes a token for `caller` (the verified caller, `None` when unauthenticated) at
    /// `now`, or says how long until there is one.
    pub fn take(&self, caller: Option<&str>, now: u64) -> Result<(), Duration> {
        match (&self.per_caller, caller) {
            (Some(callers), Some(caller)) => callers.take(&self.shared.rate, caller, now),
            _ => self.shared.take(now),
        }
    }

    /// Callers holding a bucket of their own.
    #[cfg(test)]
    fn callers(&self) -> usize {
        self.per_caller.as_ref().map_or(0, |c| {
            c.shards
                .iter()
                .map(|s| s.lock().map_or(0, |m| m.len()))
                .sum()
        })
    }
}

impl CallerBuckets {
    fn take(&self, rate: &Rate, caller: &str, now: u64) -> Result<(), Duration> {
        // The remainder is below SHARDS: the cast cannot truncate.
        let shard = (self.hasher.hash_one(caller) % SHARDS as u64) as usize;
        // A poisoned shard only means a panic elsewhere held it; its map is still whole.
        let mut map = self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tat) = map.get_mut(caller) {
            *tat = rate.decide(*tat, now)?;
            return Ok(());
        }
        if map.len() >= PER_SHARD {
            // A full bucket is the same as none: dropping it resets nothing.
            map.retain(|_, tat| !Rate::is_full(*tat, now));
        }
        if map.len() >= PER_SHARD {
            drop(map);
            return self.overflow.take(rate, now);
        }
        let tat = rate.decide(0, now)?;
        map.insert(caller.into(), tat);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_lets_burst_through_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(50.0, 10);
        let now = 5 * SECOND;
        let passed = (0..100).filter(|_| limiter.take(now).is_ok()).count();
        assert_eq!(passed, 10, "the burst at once");
        // 20 ms later one more token (50/s).
        assert!(limiter.take(now + 19_000_000).is_err());
        assert!(limiter.take(now + 20_000_000).is_ok());
        assert!(limiter.take(now + 20_000_000).is_err());
        // One second on: 50 tokens came back, but the bucket holds at most 10.
        let later = now + 20_000_000 + SECOND;
        assert_eq!((0..100).filter(|_| limiter.take(later).is_ok()).count(), 10);
    }

    #[test]
    fn the_wait_is_until_the_next_token_and_retry_after_rounds_up_to_a_second() {
        let limiter = RateLimiter::new(0.5, 1);
        let now = 3 * SECOND;
        assert!(limiter.take(now).is_ok());
        let wait = limiter.take(now + SECOND / 2).unwrap_err();
        assert_eq!(wait, Duration::from_millis(1500));
        assert_eq!(retry_after_secs(wait), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert!(limiter.take(now + 2 * SECOND).is_ok());
    }

    #[test]
    fn the_clock_starting_at_zero_is_a_full_bucket() {
        let limiter = RateLimiter::new(1.0, 3);
        assert_eq!((0..5).filter(|_| limiter.take(0).is_ok()).count(), 3);
    }

    #[test]
    fn extreme_rates_neither_wrap_nor_divide_by_zero() {
        let fast = RateLimiter::new(1e9, 1);
        assert!(fast.take(0).is_ok() && fast.take(1).is_ok());
        let slowest = RateLimiter::new(1e-30, 5);
        assert!(slowest.take(u64::MAX - 1).is_ok(), "saturates, never wraps");
        let slow = RateLimiter::new(0.001, 1);
        assert!(slow.take(0).is_ok());
        assert_eq!(slow.take(0).unwrap_err(), Duration::from_secs(1000));
    }

    #[test]
    fn each_verified_caller_has_a_bucket_and_the_unauthenticated_share_one() {
        let limiter = InboundLimiter::new(1.0, 2, true);
        let now = SECOND;
        for caller in [Some("orders"), Some("game"), None] {
            let passed = (0..5).filter(|_| limiter.take(caller, now).is_ok()).count();
            assert_eq!(passed, 2, "{caller:?}");
        }
        assert_eq!(limiter.callers(), 2);
        let everyone = InboundLimiter::new(1.0, 2, false);
        assert!(everyone.take(Some("orders"), now).is_ok());
        assert!(everyone.take(Some("game"), now).is_ok());
        assert!(everyone.take(None, now).is_err(), "one bucket for all");
    }

    #[test]
    fn the_caller_map_is_bounded_and_drops_idle_buckets() {
        let limiter = InboundLimiter::new(1.0, 1, true);
        let now = SECOND;
        let names: Vec<String> = (0..3 * MAX_CALLERS).map(|i| format!("c{i}")).collect();
        for name in &names {
            let _ = limiter.take(Some(name), now);
        }
        assert!(limiter.callers() <= MAX_CALLERS, "{}", limiter.callers());
        // Every bucket is full again a second later: idle ones make room for new names.
        let later = now + 2 * SECOND;
        assert!(limiter.take(Some("newcomer"), later).is_ok());
        assert!(limiter.take(Some("newcomer"), later).is_err());
        assert!(limiter.callers() <= MAX_CALLERS);
    }

    #[test]
    fn settings_are_compared_to_decide_whether_a_bucket_is_kept() {
        let limiter = InboundLimiter::new(10.0, 10, true);
        assert!(limiter.is(10.0, 10, true));
        assert!(!limiter.is(10.0, 10, false));
        assert!(!limiter.is(20.0, 10, true));
        assert!(RateLimiter::new(5.0, 5).rate().is(5.0, 5));
    }
}
