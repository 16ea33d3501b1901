//! Per-destination policy: what `defaults` and `services.X` may say, and how the two are
//! merged field by field into the [`Policy`] a destination runs with.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::units::{ByteSize, Dur, Parsed, Text};

/// How an upstream endpoint speaks HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c).
    H2,
}

impl Protocol {
    /// The registry's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
        }
    }
}

/// One condition under which a failed attempt is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// The connection could not be established: the request was never sent.
    ConnectFailure,
    /// The connection broke after the request was sent.
    Reset,
    /// The upstream answered with this status code.
    Status(u16),
    /// A gRPC status code, by its canonical lower-case name (`unavailable`, ...).
    Grpc(GrpcCode),
}

/// The gRPC codes a retry policy may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrpcCode {
    /// `CANCELLED` (1).
    Cancelled,
    /// `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted,
    /// `INTERNAL` (13).
    Internal,
    /// `UNAVAILABLE` (14).
    Unavailable,
}

impl GrpcCode {
    /// The code for a numeric `grpc-status`, when it is one a policy can name.
    pub fn from_status(status: u32) -> Option<GrpcCode> {
        match status {
            1 => Some(GrpcCode::Cancelled),
            4 => Some(GrpcCode::DeadlineExceeded),
            8 => Some(GrpcCode::ResourceExhausted),
            13 => Some(GrpcCode::Internal),
            14 => Some(GrpcCode::Unavailable),
            _ => None,
        }
    }

    const ALL: [(GrpcCode, &'static str); 5] = [
        (GrpcCode::Cancelled, "cancelled"),
        (GrpcCode::DeadlineExceeded, "deadline-exceeded"),
        (GrpcCode::ResourceExhausted, "resource-exhausted"),
        (GrpcCode::Internal, "internal"),
        (GrpcCode::Unavailable, "unavailable"),
    ];
    fn name(self) -> &'static str {
        GrpcCode::ALL
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("unknown", |(_, n)| n)
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::ConnectFailure => f.write_str("connect-failure"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::Status(s) => write!(f, "{s}"),
            RetryOn::Grpc(c) => f.write_str(c.name()),
        }
    }
}

impl RetryOn {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "connect-failure" => return Ok(RetryOn::ConnectFailure),
            "reset" => return Ok(RetryOn::Reset),
            _ => {}
        }
        if let Ok(code) = s.parse::<u16>() {
            return RetryOn::status(code);
        }
        GrpcCode::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(c, _)| RetryOn::Grpc(*c))
            .ok_or_else(|| {
                format!(
                    "unknown retry condition `{s}`; expected connect-failure, reset, a 4xx/5xx status, \
                     or a gRPC code (cancelled, deadline-exceeded, resource-exhausted, internal, unavailable)"
                )
            })
    }
    fn status(code: u16) -> Result<Self, String> {
        if (400..=599).contains(&code) {
            Ok(RetryOn::Status(code))
        } else {
            Err(format!(
                "retry status `{code}` is not an error status (400-599)"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a retry condition such as `connect-failure` or `503`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                RetryOn::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                let code = u16::try_from(v).map_err(|_| E::custom("status out of range"))?;
                RetryOn::status(code).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The retry budget: retries stay under `percent` of requests (10 s window) plus
/// `per_second` always allowed, so an outage never multiplies the load on a service.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetOverride {
    /// Retries as a share of requests, 0-100.
    pub percent: Option<f64>,
    /// Retries always allowed per second, whatever the share.
    pub per_second: Option<u32>,
}

/// `retry:` as written in `defaults` or `services.X`; unset fields inherit.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOverride {
    /// Attempts in all, the first included (1 = no retry).
    pub attempts: Option<std::num::NonZeroU32>,
    /// Timeout of one attempt; `0s` = only the whole-call timeout.
    pub per_try_timeout: Option<Dur>,
    /// Pause before the first retry.
    pub backoff: Option<Dur>,
    /// Growth of the pause per retry.
    pub multiplier: Option<f64>,
    /// Upper bound of the pause (also caps an upstream's `Retry-After`).
    pub max_backoff: Option<Dur>,
    /// What counts as retryable.
    pub on: Option<Vec<RetryOn>>,
    /// Retry budget.
    pub budget: Option<BudgetOverride>,
}

/// `breaker:` as written; unset fields inherit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerOverride {
    /// Consecutive failures that open the breaker.
    pub failures: Option<std::num::NonZeroU32>,
    /// How long it stays open before probing.
    pub open_for: Option<Dur>,
    /// Requests let through while half open.
    pub half_open_probes: Option<std::num::NonZeroU32>,
}

/// `stale_cache:` bounds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaleCacheOverride {
    /// Entries kept per destination.
    pub entries: Option<u32>,
    /// Bytes of bodies kept per destination.
    pub bytes: Option<ByteSize>,
}

/// A fixed answer for `degrade: {static: ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticAnswer {
    /// Status code of the answer.
    #[serde(default = "default_static_status")]
    pub status: u16,
    /// Body, sent as is.
    #[serde(default)]
    pub body: String,
    /// Extra response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_static_status() -> u16 {
    200
}

/// What a destination answers while its breaker is open (and, for `stale`/`static`, when a
/// call failed after its retries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Degrade {
    /// 503 `circuit_open` at once.
    #[default]
    FailFast,
    /// Unsafe methods refused with 503 `read_only`; reads still try.
    ReadOnly,
    /// The last good GET 200 for the same path and query, if younger than this.
    Stale(Dur),
    /// A fixed answer.
    Static(StaticAnswer),
}

impl<'de> Deserialize<'de> for Degrade {
    // Written as `fail_fast`, `read_only`, `{stale: 60s}` or `{static: {...}}`; serde_yaml only
    // reads enums from `!tags`, so the two forms are read by hand.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const MODES: &[&str] = &["fail_fast", "read_only", "stale", "static"];
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Degrade;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`fail_fast`, `read_only`, `{stale: <age>}` or `{static: {status, body, headers}}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Degrade, E> {
                match v {
                    "fail_fast" => Ok(Degrade::FailFast),
                    "read_only" => Ok(Degrade::ReadOnly),
                    "stale" | "static" => {
                        Err(E::custom(format!("`{v}` needs a value: `{{{v}: ...}}`")))
                    }
                    other => Err(E::unknown_variant(other, MODES)),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Degrade, A::Error> {
                let key: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::custom("empty degrade mode"))?;
                let mode = match key.as_str() {
                    "stale" => Degrade::Stale(map.next_value()?),
                    "static" => Degrade::Static(map.next_value()?),
                    other => return Err(de::Error::unknown_variant(other, MODES)),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("one degrade mode per destination"));
                }
                Ok(mode)
            }
        }
        d.deserialize_any(V)
    }
}

/// `fault.delay:` as written; unset fields inherit.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelayOverride {
    /// Share of calls delayed, 0-100 (a fraction such as `0.5` allowed).
    pub percent: Option<f64>,
    /// How long a delayed call waits before it goes on (outside its `timeout`).
    pub duration: Option<Dur>,
}

/// `fault.abort:` as written; unset fields inherit.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbortOverride {
    /// Share of calls answered at once with `status`, 0-100.
    pub percent: Option<f64>,
    /// The status of the injected answer, 200-599.
    pub status: Option<u16>,
}

/// `fault:` as written in `defaults` or `services.X` (docs/policy.md, "Fault injection").
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultOverride {
    /// Delay a share of calls.
    pub delay: Option<FaultDelayOverride>,
    /// Answer a share of calls with an error, without calling the upstream.
    pub abort: Option<FaultAbortOverride>,
}

/// The resolved fault injection of one destination.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultPolicy {
    /// Share of calls delayed, 0-100.
    pub delay_percent: f64,
    /// The delay.
    pub delay: Dur,
    /// Share of calls aborted, 0-100.
    pub abort_percent: f64,
    /// The aborted calls' status.
    pub abort_status: u16,
}

impl Default for FaultPolicy {
    fn default() -> Self {
        FaultPolicy {
            delay_percent: 0.0,
            delay: Dur::secs(0),
            abort_percent: 0.0,
            abort_status: 503,
        }
    }
}

/// `rate_limit:` as written in `defaults` or `services.X`; unset fields inherit.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitOverride {
    /// Calls per second refilled into the bucket; 0 = no limit.
    pub per_second: Option<f64>,
    /// Bucket size: calls that may go at once; default `per_second` (rounded up).
    pub burst: Option<u32>,
}

/// A resolved token bucket's settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RateLimit {
    /// Calls per second; 0 = no limit.
    pub per_second: f64,
    /// Bucket size; `None` = `per_second` rounded up (at least 1).
    pub burst: Option<u32>,
}

impl RateLimit {
    /// The limit in force: `(per_second, burst)`, or `None` when `per_second` is 0.
    pub fn in_force(&self) -> Option<(f64, u32)> {
        if self.per_second <= 0.0 || !self.per_second.is_finite() {
            return None;
        }
        // per_second is validated to at most 1e9 at load: the cast cannot truncate.
        let default_burst = self.per_second.ceil().max(1.0) as u32;
        Some((self.per_second, self.burst.unwrap_or(default_burst)))
    }
}

/// A static auth header set toward one destination.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticAuth {
    /// Header name, e.g. `Authorization` or `X-Api-Key`.
    pub header: String,
    /// The value (`${ENV}` expanded); exclusive with `file`.
    pub value: Option<super::units::Secret>,
    /// A file whose trimmed contents are the value; exclusive with `value`.
    pub file: Option<Text>,
}

/// Policy and addressing keys as written under `defaults` or `services.X`.
/// Every field is optional: an unset one inherits from `defaults`, then from the built-ins.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    /// Until response headers, retries included.
    pub timeout: Option<Dur>,
    /// One TCP (and TLS) connect.
    pub connect_timeout: Option<Dur>,
    /// Concurrent requests per destination; 0 = unlimited.
    pub max_in_flight: Option<u32>,
    /// Retry policy.
    pub retry: Option<RetryOverride>,
    /// Circuit breaker.
    pub breaker: Option<BreakerOverride>,
    /// Degrade mode.
    pub degrade: Option<Degrade>,
    /// Bounds of the stale cache.
    pub stale_cache: Option<StaleCacheOverride>,
    /// How the destination's endpoints speak (registry entries may say otherwise).
    pub protocol: Option<Protocol>,
    /// Egress: a fixed base URL instead of registry endpoints (`services.X` only).
    pub url: Option<Parsed<http::Uri>>,
    /// A static auth header for this destination (`services.X` only).
    pub auth: Option<StaticAuth>,
    /// PEM bundle trusted beside the webpki roots for an `https://` url (`services.X` only).
    pub ca: Option<Text>,
    /// Fault injection, applied by this (the caller's) meshlet before forwarding.
    pub fault: Option<FaultOverride>,
    /// Token bucket per destination, in this meshlet.
    pub rate_limit: Option<RateLimitOverride>,
}

/// The resolved retry policy of one destination.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Timeout of one attempt; zero = none.
    pub per_try_timeout: Dur,
    /// Pause before the first retry.
    pub backoff: Dur,
    /// Growth factor of the pause.
    pub multiplier: f64,
    /// Upper bound of the pause.
    pub max_backoff: Dur,
    /// Retryable conditions.
    pub on: Vec<RetryOn>,
    /// Budget: retries as a share of requests.
    pub budget_percent: f64,
    /// Budget: retries always allowed per second.
    pub budget_per_second: u32,
}

/// The resolved breaker policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerPolicy {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// Open period.
    pub open_for: Dur,
    /// Probes while half open.
    pub half_open_probes: u32,
}

/// The policy a destination runs with: built-ins, then `defaults`, then `services.X`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    /// Whole-call timeout until response headers.
    pub timeout: Dur,
    /// Connect timeout.
    pub connect_timeout: Dur,
    /// Concurrency cap; 0 = unlimited.
    pub max_in_flight: u32,
    /// Retries.
    pub retry: RetryPolicy,
    /// Breaker.
    pub breaker: BreakerPolicy,
    /// Degrade mode.
    pub degrade: Degrade,
    /// Stale cache entry bound.
    pub stale_entries: u32,
    /// Stale cache byte bound.
    pub stale_bytes: ByteSize,
    /// Default endpoint protocol.
    pub protocol: Protocol,
    /// Fault injection; `None` when no layer set `fault`.
    pub fault: Option<FaultPolicy>,
    /// Rate limit; `None` when no layer set `rate_limit`.
    pub rate_limit: Option<RateLimit>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            timeout: Dur::secs(5),
            connect_timeout: Dur::secs(1),
            max_in_flight: 0,
            retry: RetryPolicy {
                attempts: 3,
                per_try_timeout: Dur::secs(0),
                backoff: Dur::millis(100),
                multiplier: 2.0,
                max_backoff: Dur::secs(1),
                on: vec![
                    RetryOn::ConnectFailure,
                    RetryOn::Reset,
                    RetryOn::Status(502),
                    RetryOn::Status(503),
                    RetryOn::Status(504),
                ],
                budget_percent: 20.0,
                budget_per_second: 10,
            },
            breaker: BreakerPolicy {
                failures: 5,
                open_for: Dur::secs(30),
                half_open_probes: 1,
            },
            degrade: Degrade::FailFast,
            stale_entries: 1000,
            stale_bytes: ByteSize::mib(16),
            protocol: Protocol::Http1,
            fault: None,
            rate_limit: None,
        }
    }
}

impl Policy {
    /// Applies the fields `layer` sets on top of `self`.
    pub fn overlay(mut self, layer: &PolicyOverride) -> Policy {
        set(&mut self.timeout, layer.timeout);
        set(&mut self.connect_timeout, layer.connect_timeout);
        set(&mut self.max_in_flight, layer.max_in_flight);
        if let Some(r) = &layer.retry {
            let p = &mut self.retry;
            set(&mut p.attempts, r.attempts.map(|n| n.get()));
            set(&mut p.per_try_timeout, r.per_try_timeout);
            set(&mut p.backoff, r.backoff);
            set(&mut p.multiplier, r.multiplier);
            set(&mut p.max_backoff, r.max_backoff);
            set(&mut p.on, r.on.clone());
            if let Some(b) = &r.budget {
                set(&mut p.budget_percent, b.percent);
                set(&mut p.budget_per_second, b.per_second);
            }
        }
        if let Some(b) = &layer.breaker {
            set(&mut self.breaker.failures, b.failures.map(|n| n.get()));
            set(&mut self.breaker.open_for, b.open_for);
            set(
                &mut self.breaker.half_open_probes,
                b.half_open_probes.map(|n| n.get()),
            );
        }
        set(&mut self.degrade, layer.degrade.clone());
        if let Some(c) = &layer.stale_cache {
            set(&mut self.stale_entries, c.entries);
            set(&mut self.stale_bytes, c.bytes);
        }
        set(&mut self.protocol, layer.protocol);
        if let Some(f) = &layer.fault {
            let p = self.fault.get_or_insert_with(FaultPolicy::default);
            if let Some(d) = &f.delay {
                set(&mut p.delay_percent, d.percent);
                set(&mut p.delay, d.duration);
            }
            if let Some(a) = &f.abort {
                set(&mut p.abort_percent, a.percent);
                set(&mut p.abort_status, a.status);
            }
        }
        if let Some(r) = &layer.rate_limit {
            let p = self.rate_limit.get_or_insert(RateLimit {
                per_second: 0.0,
                burst: None,
            });
            set(&mut p.per_second, r.per_second);
            if r.burst.is_some() {
                p.burst = r.burst;
            }
        }
        self
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_override_keeps_unset_fields_of_defaults() {
        let defaults: PolicyOverride =
            serde_yaml::from_str("{timeout: 2s, retry: {backoff: 50ms}}").unwrap();
        let service: PolicyOverride = serde_yaml::from_str("{retry: {attempts: 5}}").unwrap();
        let p = Policy::default().overlay(&defaults).overlay(&service);
        assert_eq!(p.timeout, Dur::secs(2));
        assert_eq!(p.retry.attempts, 5);
        assert_eq!(p.retry.backoff, Dur::millis(50));
        assert_eq!(p.retry.max_backoff, Dur::secs(1));
        assert_eq!(p.retry.on.len(), 5);
    }

    #[test]
    fn fault_and_rate_limit_merge_field_by_field() {
        let defaults: PolicyOverride = serde_yaml::from_str(
            "{fault: {delay: {percent: 10, duration: 200ms}, abort: {percent: 5, status: 503}}, rate_limit: {per_second: 100}}",
        )
        .unwrap();
        let service: PolicyOverride =
            serde_yaml::from_str("{fault: {abort: {status: 500}}, rate_limit: {burst: 7}}")
                .unwrap();
        let p = Policy::default().overlay(&defaults).overlay(&service);
        let f = p.fault.unwrap();
        assert_eq!((f.delay_percent, f.delay), (10.0, Dur::millis(200)));
        assert_eq!((f.abort_percent, f.abort_status), (5.0, 500));
        assert_eq!(p.rate_limit.unwrap().in_force(), Some((100.0, 7)));

        let only_defaults = Policy::default().overlay(&defaults);
        assert_eq!(
            only_defaults.rate_limit.unwrap().in_force(),
            Some((100.0, 100)),
            "burst defaults to per_second"
        );
        let off: PolicyOverride = serde_yaml::from_str("{rate_limit: {per_second: 0}}").unwrap();
        let p = Policy::default().overlay(&defaults).overlay(&off);
        assert_eq!(p.rate_limit.unwrap().in_force(), None, "0 = no limit");
        assert!(Policy::default().fault.is_none() && Policy::default().rate_limit.is_none());
        let half = RateLimit {
            per_second: 0.5,
            burst: None,
        };
        assert_eq!(half.in_force(), Some((0.5, 1)));
    }

    #[test]
    fn degrade_modes_parse_in_their_yaml_forms() {
        let d: Degrade = serde_yaml::from_str("fail_fast").unwrap();
        assert_eq!(d, Degrade::FailFast);
        let d: Degrade = serde_yaml::from_str("{stale: 60s}").unwrap();
        assert_eq!(d, Degrade::Stale(Dur::secs(60)));
        let d: Degrade = serde_yaml::from_str("{static: {status: 200, body: '[]'}}").unwrap();
        assert!(matches!(
            d,
            Degrade::Static(StaticAnswer { status: 200, .. })
        ));
        assert!(serde_yaml::from_str::<Degrade>("explode").is_err());
    }

    #[test]
    fn retry_conditions_accept_numbers_names_and_grpc_codes() {
        let on: Vec<RetryOn> =
            serde_yaml::from_str("[connect-failure, reset, 502, \"429\", unavailable]").unwrap();
        assert_eq!(on[2], RetryOn::Status(502));
        assert_eq!(on[3], RetryOn::Status(429));
        assert_eq!(on[4], RetryOn::Grpc(GrpcCode::Unavailable));
        assert!(serde_yaml::from_str::<Vec<RetryOn>>("[200]").is_err());
        assert!(serde_yaml::from_str::<Vec<RetryOn>>("[sometimes]").is_err());
    }
}
