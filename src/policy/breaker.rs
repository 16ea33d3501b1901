//! A circuit breaker: `failures` consecutive failures open it for `open_for`; then up to
//! `half_open_probes` requests try; a probe's success closes it, its failure re-opens it.
//! Lock-free (atomics only): every worker consults it on every request.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::clock;
use crate::config::BreakerPolicy;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Breaker state as exported in metrics (`0` closed, `1` open, `2` half open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Traffic flows.
    Closed,
    /// Traffic refused until the open period ends.
    Open,
    /// A few probes test the waters.
    HalfOpen,
}

impl State {
    /// Label and gauge spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// Value of the `meshlet_breaker_state` gauge (docs/metrics.md).
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// What [`Breaker::allow`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (closed).
    Allowed,
    /// Go ahead as one of the half-open probes; report the outcome.
    Probe,
    /// Refused; open for about this many more milliseconds.
    Rejected {
        /// Milliseconds until the breaker half-opens.
        retry_after_ms: u64,
    },
}

/// One breaker (a service's or an endpoint's).
#[derive(Debug, Default)]
pub struct Breaker {
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    open_until_ms: AtomicU64,
    probes_in_flight: AtomicU32,
}

/// A state change worth counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition(pub State);

impl Breaker {
    /// Whether it refuses traffic right now, without taking a probe slot.
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
            && clock::now_ms() < self.open_until_ms.load(Ordering::Acquire)
    }

    /// Decides whether a request may go.
    pub fn allow(&self, policy: &BreakerPolicy) -> (Admission, Option<Transition>) {
        match self.state.load(Ordering::Acquire) {
            CLOSED => (Admission::Allowed, None),
            OPEN => {
                let until = self.open_until_ms.load(Ordering::Acquire);
                let now = clock::now_ms();
                if now < until {
                    return (
                        Admission::Rejected {
                            retry_after_ms: until - now,
                        },
                        None,
                    );
                }
                let moved = self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if moved {
                    self.probes_in_flight.store(0, Ordering::Release);
                    // While half open, `open_until_ms` is the probes' deadline.
                    self.open_until_ms
                        .store(now.saturating_add(open_ms(policy)), Ordering::Release);
                }
                let (admission, _) = self.try_probe(policy);
                (admission, moved.then_some(Transition(State::HalfOpen)))
            }
            _ => self.try_probe(policy),
        }
    }

    fn try_probe(&self, policy: &BreakerPolicy) -> (Admission, Option<Transition>) {
        // A probe that never reported (its caller went away, or it found no endpoint) must
        // not keep the breaker half open forever: after `open_for` the slots are freed.
        let now = clock::now_ms();
        if now >= self.open_until_ms.load(Ordering::Acquire) {
            self.open_until_ms
                .store(now.saturating_add(open_ms(policy)), Ordering::Release);
            self.probes_in_flight.store(0, Ordering::Release);
        }
        let taken = self.probes_in_flight.fetch_add(1, Ordering::AcqRel);
        if taken < policy.half_open_probes {
            (Admission::Probe, None)
        } else {
            self.probes_in_flight.fetch_sub(1, Ordering::AcqRel);
            (
                Admission::Rejected {
                    retry_after_ms: 1_000,
                },
                None,
            )
        }
    }

    /// Records a call's outcome.
    pub fn record(&self, success: bool, policy: &BreakerPolicy) -> Option<Transition> {
        if success {
            self.consecutive_failures.store(0, Ordering::Release);
            if self.state.load(Ordering::Acquire) != CLOSED {
                let prev = self.state.swap(CLOSED, Ordering::AcqRel);
                if prev != CLOSED {
                    return Some(Transition(State::Closed));
                }
            }
            return None;
        }
        match self.state.load(Ordering::Acquire) {
            HALF_OPEN => self.open(policy),
            OPEN => None,
            _ => {
                let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= policy.failures {
                    self.open(policy)
                } else {
                    None
                }
            }
        }
    }

    fn open(&self, policy: &BreakerPolicy) -> Option<Transition> {
        self.open_until_ms.store(
            clock::now_ms().saturating_add(open_ms(policy)),
            Ordering::Release,
        );
        self.consecutive_failures.store(0, Ordering::Release);
        let prev = self.state.swap(OPEN, Ordering::AcqRel);
        (prev != OPEN).then_some(Transition(State::Open))
    }
}

fn open_ms(policy: &BreakerPolicy) -> u64 {
    u64::try_from(policy.open_for.get().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failures: 3,
            open_for: Dur::millis(50),
            half_open_probes: 1,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let (b, p) = (Breaker::default(), policy());
        b.record(false, &p);
        b.record(false, &p);
        b.record(true, &p);
        b.record(false, &p);
        b.record(false, &p);
        assert_eq!(b.allow(&p).0, Admission::Allowed);
        assert_eq!(b.record(false, &p), Some(Transition(State::Open)));
        assert!(matches!(b.allow(&p).0, Admission::Rejected { .. }));
    }

    #[test]
    fn half_open_lets_one_probe_through_then_closes_or_reopens() {
        let (b, p) = (Breaker::default(), policy());
        for _ in 0..3 {
            b.record(false, &p);
        }
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(
            b.allow(&p),
            (Admission::Probe, Some(Transition(State::HalfOpen)))
        );
        assert!(
            matches!(b.allow(&p).0, Admission::Rejected { .. }),
            "one probe at a time"
        );
        assert_eq!(b.record(false, &p), Some(Transition(State::Open)));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(b.allow(&p).0, Admission::Probe);
        assert_eq!(b.record(true, &p), Some(Transition(State::Closed)));
        assert_eq!(b.allow(&p).0, Admission::Allowed);
    }

    #[test]
    fn a_probe_that_never_reports_frees_its_slot_after_open_for() {
        let (b, p) = (Breaker::default(), policy());
        for _ in 0..3 {
            b.record(false, &p);
        }
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(b.allow(&p).0, Admission::Probe); // and never reports back
        assert!(matches!(b.allow(&p).0, Admission::Rejected { .. }));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(
            b.allow(&p).0,
            Admission::Probe,
            "a new probe after the deadline"
        );
    }
}
