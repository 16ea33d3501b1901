//! The figures of `GET /v1/stats` (docs/metrics.md, "Local API"), worked out from samples of
//! the sidecar's own Prometheus registry: a [`Sample`] is one `gather()` boiled down to
//! the series the stats need, and [`destinations`] turns the difference between two samples
//! into rates, a success rate and percentiles. Nothing here touches the request path: the
//! counters are the ones `/metrics` serves anyway.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use prometheus::proto::{Metric, MetricFamily};
use serde::Serialize;

/// `(direction, destination)`: one row of the stats.
type Key = (String, String);

/// One destination's request series at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
struct Requests {
    /// `meshlet_requests_total`, every method and status.
    answered: u64,
    /// Of those, answers with a 5xx status.
    server_errors: u64,
    /// `meshlet_request_duration_seconds`: `(upper bound, cumulative count)`, ascending,
    /// without `+Inf`.
    buckets: Vec<(f64, u64)>,
    /// The histogram's count (every observation, `+Inf` included).
    observed: u64,
}

/// Endpoints of one destination by state (`meshlet_endpoint_states`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndpointStates {
    /// Usable: neither ejected nor draining.
    pub up: u64,
    /// Skipped by balancing because their own breaker is open (outlier ejection).
    pub ejected: u64,
    /// Marked draining in the registry.
    pub draining: u64,
}

/// The registry's series that `/v1/stats` reads, gathered at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was gathered.
    pub at: Instant,
    requests: BTreeMap<Key, Requests>,
    /// Counters by `(direction, destination)`; a family without a `direction` label counts
    /// as outbound (retries and faults happen in the outbound policy stack).
    retries: HashMap<Key, u64>,
    faults: HashMap<Key, u64>,
    rate_limited: HashMap<Key, u64>,
    /// `meshlet_breaker_state` by destination.
    breakers: HashMap<String, i64>,
    endpoints: HashMap<Key, EndpointStates>,
    /// Per event type: pending, consumer lag, dead letters.
    events: BTreeMap<String, EventFigures>,
    hub: HubFigures,
}

/// One destination's row of `/v1/stats`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestinationStats {
    /// The `destination` label.
    pub name: String,
    /// `outbound` or `inbound`.
    pub direction: String,
    /// Answers per second over the window.
    pub rps: f64,
    /// Share of the window's answers that were not 5xx; `None` without any.
    pub success_rate: Option<f64>,
    /// Median time to response headers over the window, in ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub p99_ms: Option<f64>,
    /// Answers since start.
    pub requests_total: u64,
    /// Retries since start.
    pub retries_total: u64,
    /// Injected faults since start (`meshlet_faults_total`, 0 when absent).
    pub faults_total: u64,
    /// Requests refused by a rate limit since start (`meshlet_rate_limited_total`).
    pub rate_limited_total: u64,
    /// The service breaker: `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// Endpoints by state.
    pub endpoints: EndpointStates,
}

/// One event subscription's row.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EventFigures {
    /// Read and not yet acknowledged.
    pub pending: u64,
    /// Not yet read by this service's group.
    pub lag: u64,
    /// Dead-lettered since start, every reason.
    pub dead_letters: u64,
}

/// The hub's gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HubFigures {
    /// Open WebSocket connections.
    pub connections: u64,
    /// Rooms with a member here.
    pub rooms: u64,
}

impl Sample {
    /// Boils `families` (a registry's `gather()`) down to what the stats read. Unknown
    /// families are ignored, missing ones read as 0.
    pub fn new(at: Instant, families: &[MetricFamily]) -> Sample {
        let mut sample = Sample {
            at,
            requests: BTreeMap::new(),
            retries: HashMap::new(),
            faults: HashMap::new(),
            rate_limited: HashMap::new(),
            breakers: HashMap::new(),
            endpoints: HashMap::new(),
            events: BTreeMap::new(),
            hub: HubFigures::default(),
        };
        for family in families {
            for metric in family.get_metric() {
                sample.read(family.name(), metric);
            }
        }
        sample
    }

    fn read(&mut self, family: &str, metric: &Metric) {
        let counter = || whole(metric.get_counter().get_value());
        let gauge = || whole(metric.get_gauge().get_value());
        match family {
            "meshlet_requests_total" => {
                let row = self.requests.entry(key(metric)).or_default();
                row.answered += counter();
                if label(metric, "status").starts_with('5') {
                    row.server_errors += counter();
                }
            }
            "meshlet_request_duration_seconds" => {
                let histogram = metric.get_histogram();
                let row = self.requests.entry(key(metric)).or_default();
                row.observed = histogram.get_sample_count();
                row.buckets = histogram
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect();
            }
            "meshlet_retries_total" => *self.retries.entry(key(metric)).or_default() += counter(),
            "meshlet_faults_total" => *self.faults.entry(key(metric)).or_default() += counter(),
            "meshlet_rate_limited_total" => {
                *self.rate_limited.entry(key(metric)).or_default() += counter();
            }
            "meshlet_breaker_state" => {
                let state = metric.get_gauge().get_value() as i64;
                self.breakers
                    .insert(label(metric, "destination").to_owned(), state);
            }
            "meshlet_endpoint_states" => {
                let row = self.endpoints.entry(key(metric)).or_default();
                match label(metric, "state") {
                    "up" => row.up = gauge(),
                    "ejected" => row.ejected = gauge(),
                    "draining" => row.draining = gauge(),
                    _ => {}
                }
            }
            "meshlet_events_pending" => self.event(metric).pending = gauge(),
            "meshlet_events_consumer_lag" => self.event(metric).lag = gauge(),
            "meshlet_events_dead_letters_total" => self.event(metric).dead_letters += counter(),
            "meshlet_realtime_connections" => self.hub.connections = gauge(),
            "meshlet_realtime_rooms" => self.hub.rooms = gauge(),
            _ => {}
        }
    }

    fn event(&mut self, metric: &Metric) -> &mut EventFigures {
        self.events
            .entry(label(metric, "type").to_owned())
            .or_default()
    }

    /// The figures of event type `event_type` (zeros when nothing was recorded for it yet).
    pub fn event_figures(&self, event_type: &str) -> EventFigures {
        self.events.get(event_type).cloned().unwrap_or_default()
    }

    /// The hub's gauges.
    pub fn hub(&self) -> HubFigures {
        self.hub
    }
}

/// Every destination's row at `now`, with the window figures taken over `now - baseline`
/// (rates 0 and the rest `None` without a baseline, or with one that is not older).
/// Outbound rows first, then by name; the unrouted `-` only when it answered something.
pub fn destinations(baseline: Option<&Sample>, now: &Sample) -> Vec<DestinationStats> {
    let window = baseline
        .map(|b| (b, now.at.saturating_duration_since(b.at).as_secs_f64()))
        .filter(|(_, seconds)| *seconds > 0.0);
    let mut keys: BTreeSet<&Key> = now.requests.keys().collect();
    keys.extend(now.endpoints.keys());
    let mut rows: Vec<DestinationStats> = keys
        .into_iter()
        .filter(|(_, name)| name != crate::telemetry::metrics::UNNAMED || answered(now, name))
        .map(|key| row(key, window, now))
        .collect();
    rows.sort_by(|a, b| {
        (a.direction != "outbound", &a.name).cmp(&(b.direction != "outbound", &b.name))
    });
    rows
}

fn answered(now: &Sample, name: &str) -> bool {
    now.requests
        .iter()
        .any(|((_, n), r)| n == name && r.answered > 0)
}

fn row(key: &Key, window: Option<(&Sample, f64)>, now: &Sample) -> DestinationStats {
    let empty = Requests::default();
    let current = now.requests.get(key).unwrap_or(&empty);
    let (direction, name) = key;
    let mut stats = DestinationStats {
        name: name.clone(),
        direction: direction.clone(),
        rps: 0.0,
        success_rate: None,
        p50_ms: None,
        p99_ms: None,
        requests_total: current.answered,
        retries_total: now.retries.get(key).copied().unwrap_or(0),
        faults_total: now.faults.get(key).copied().unwrap_or(0),
        rate_limited_total: now.rate_limited.get(key).copied().unwrap_or(0),
        breaker: breaker_name(direction, now.breakers.get(name).copied()),
        endpoints: now.endpoints.get(key).copied().unwrap_or_default(),
    };
    let Some((baseline, seconds)) = window else {
        return stats;
    };
    let before = baseline.requests.get(key).unwrap_or(&empty);
    let answered = current.answered.saturating_sub(before.answered);
    stats.rps = round(answered as f64 / seconds, 100.0);
    if answered > 0 {
        let failed = current.server_errors.saturating_sub(before.server_errors);
        stats.success_rate = Some(round(1.0 - failed as f64 / answered as f64, 10_000.0));
    }
    let buckets = bucket_deltas(before, current);
    let observed = current.observed.saturating_sub(before.observed);
    let ms = |q| quantile(q, &buckets, observed).map(|s| round(s * 1000.0, 1000.0));
    stats.p50_ms = ms(0.5);
    stats.p99_ms = ms(0.99);
    stats
}

/// The breaker of an outbound destination as its gauge reads (`0` closed, `1` open, `2`
/// half open); inbound has no breaker (the caller's meshlet holds it): `closed`.
fn breaker_name(direction: &str, gauge: Option<i64>) -> &'static str {
    match (direction, gauge) {
        ("outbound", Some(1)) => "open",
        ("outbound", Some(2)) => "half_open",
        _ => "closed",
    }
}

/// The window's own histogram: `current` minus `before`, bucket by bucket (the bounds are
/// the family's fixed ones; a destination new in the window has no `before`).
fn bucket_deltas(before: &Requests, current: &Requests) -> Vec<(f64, u64)> {
    current
        .buckets
        .iter()
        .enumerate()
        .map(|(i, &(bound, count))| {
            let earlier = before
                .buckets
                .get(i)
                .filter(|(b, _)| *b == bound)
                .map_or(0, |(_, c)| *c);
            (bound, count.saturating_sub(earlier))
        })
        .collect()
}

/// The `q` quantile of a histogram, as PromQL's `histogram_quantile` estimates it: the
/// bucket holding rank `q × count`, interpolated linearly inside it (from 0 for the first
/// bucket); a rank past the last finite bound reads as that bound. `None` without any
/// observation.
fn quantile(q: f64, buckets: &[(f64, u64)], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(upper, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let inside = cumulative.saturating_sub(below);
            if inside == 0 {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below as f64) / inside as f64);
        }
        (lower, below) = (upper, cumulative);
    }
    Some(lower)
}

/// The `(direction, destination)` of a series; without a `direction` label, outbound.
fn key(metric: &Metric) -> Key {
    let direction = match label(metric, "direction") {
        "" => "outbound",
        given => given,
    };
    (
        direction.to_owned(),
        label(metric, "destination").to_owned(),
    )
}

fn label<'m>(metric: &'m Metric, name: &str) -> &'m str {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

/// A counter's or gauge's value as a whole number (they only hold whole numbers; a
/// negative gauge reads as 0).
fn whole(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value as u64
    } else {
        0
    }
}

/// `value` rounded to `1 / per` (JSON stays short: 12.35 rps, 4.812 ms).
fn round(value: f64, per: f64) -> f64 {
    (value * per).round() / per
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

    use super::*;

    /// The families the stats read, on a registry of their own, shaped as docs/metrics.md
    /// defines them.
    struct Families {
        registry: Registry,
        requests: IntCounterVec,
        durations: HistogramVec,
        retries: IntCounterVec,
        breaker: IntGaugeVec,
    }

    impl Families {
        fn new() -> Families {
            let registry = Registry::new();
            let requests = IntCounterVec::new(
                Opts::new("meshlet_requests_total", "r"),
                &["direction", "destination", "method", "status"],
            )
            .unwrap();
            let durations = HistogramVec::new(
                HistogramOpts::new("meshlet_request_duration_seconds", "d")
                    .buckets(vec![0.001, 0.01, 0.1, 1.0]),
                &["direction", "destination"],
            )
            .unwrap();
            let retries = IntCounterVec::new(
                Opts::new("meshlet_retries_total", "r"),
                &["destination", "reason"],
            )
            .unwrap();
            let breaker =
                IntGaugeVec::new(Opts::new("meshlet_breaker_state", "b"), &["destination"])
                    .unwrap();
            registry.register(Box::new(requests.clone())).unwrap();
            registry.register(Box::new(durations.clone())).unwrap();
            registry.register(Box::new(retries.clone())).unwrap();
            registry.register(Box::new(breaker.clone())).unwrap();
            Families {
                registry,
                requests,
                durations,
                retries,
                breaker,
            }
        }

        fn answer(&self, destination: &str, status: &str, seconds: f64) {
            self.requests
                .with_label_values(&["outbound", destination, "GET", status])
                .inc();
            self.durations
                .with_label_values(&["outbound", destination])
                .observe(seconds);
        }

        fn sample(&self, at: Instant) -> Sample {
            Sample::new(at, &self.registry.gather())
        }
    }

    #[test]
    fn rates_success_and_percentiles_come_from_the_window_only() {
        let families = Families::new();
        let start = Instant::now();
        // Before the window: slow failures that must not show in the window's figures.
        for _ in 0..10 {
            families.answer("inventory", "503", 0.5);
        }
        let baseline = families.sample(start);
        for _ in 0..98 {
            families.answer("inventory", "200", 0.005);
        }
        families.answer("inventory", "500", 0.05);
        families.answer("inventory", "200", 0.05);
        let now = families.sample(start + Duration::from_secs(10));

        let rows = destinations(Some(&baseline), &now);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(
            (row.name.as_str(), row.direction.as_str()),
            ("inventory", "outbound")
        );
        assert_eq!(row.requests_total, 110, "since start");
        assert_eq!(row.rps, 10.0, "100 answers in 10 s");
        assert_eq!(row.success_rate, Some(0.99));
        // 98 of 100 in (1 ms, 10 ms]: the median is interpolated inside that bucket.
        let p50 = row.p50_ms.unwrap();
        assert!((p50 - (1.0 + 9.0 * 50.0 / 98.0)).abs() < 0.001, "{p50}");
        // Rank 99 falls in (10 ms, 100 ms], holding 2: halfway.
        assert_eq!(row.p99_ms, Some(55.0));
        assert_eq!(row.breaker, "closed");
    }

    #[test]
    fn no_baseline_or_no_answer_in_the_window_gives_zero_rate_and_no_figures() {
        let families = Families::new();
        families.answer("ledger", "200", 0.002);
        let start = Instant::now();
        let only = families.sample(start);
        let row = &destinations(None, &only)[0];
        assert_eq!((row.rps, row.requests_total), (0.0, 1));
        assert_eq!(
            (row.success_rate, row.p50_ms, row.p99_ms),
            (None, None, None)
        );

        let later = families.sample(start + Duration::from_secs(1));
        let row = &destinations(Some(&only), &later)[0];
        assert_eq!(row.rps, 0.0);
        assert_eq!((row.success_rate, row.p99_ms), (None, None), "quiet window");
    }

    #[test]
    fn a_slow_tail_past_the_last_bucket_reads_as_the_last_bound() {
        assert_eq!(quantile(0.99, &[(0.1, 0), (1.0, 0)], 5), Some(1.0));
        assert_eq!(quantile(0.5, &[(0.1, 4), (1.0, 4)], 4), Some(0.05));
        assert_eq!(quantile(0.5, &[(0.1, 0)], 0), None);
    }

    #[test]
    fn breakers_retries_faults_and_endpoint_states_are_read_by_destination() {
        let families = Families::new();
        families.answer("ledger", "503", 0.001);
        families.breaker.with_label_values(&["ledger"]).set(1);
        families
            .retries
            .with_label_values(&["ledger", "connect-failure"])
            .inc_by(2);
        families.retries.with_label_values(&["ledger", "503"]).inc();
        let faults = IntCounterVec::new(
            Opts::new("meshlet_faults_total", "f"),
            &["destination", "kind"],
        )
        .unwrap();
        faults.with_label_values(&["ledger", "abort"]).inc_by(4);
        families.registry.register(Box::new(faults)).unwrap();
        let states = IntGaugeVec::new(
            Opts::new("meshlet_endpoint_states", "e"),
            &["direction", "destination", "state"],
        )
        .unwrap();
        states
            .with_label_values(&["outbound", "ledger", "up"])
            .set(1);
        states
            .with_label_values(&["outbound", "ledger", "ejected"])
            .set(2);
        states
            .with_label_values(&["outbound", "idle", "draining"])
            .set(3);
        families.registry.register(Box::new(states)).unwrap();
        let now = families.sample(Instant::now());

        let rows = destinations(None, &now);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["idle", "ledger"],
            "a destination without requests is listed"
        );
        let ledger = &rows[1];
        assert_eq!(ledger.breaker, "open");
        assert_eq!((ledger.retries_total, ledger.faults_total), (3, 4));
        assert_eq!(ledger.rate_limited_total, 0, "absent family reads 0");
        assert_eq!(
            ledger.endpoints,
            EndpointStates {
                up: 1,
                ejected: 2,
                draining: 0
            }
        );
        assert_eq!(rows[0].endpoints.draining, 3);
    }

    #[test]
    fn inbound_rows_follow_outbound_and_have_no_breaker_and_unrouted_shows_only_when_used() {
        let families = Families::new();
        families
            .requests
            .with_label_values(&["inbound", "orders", "GET", "200"])
            .inc();
        families.breaker.with_label_values(&["orders"]).set(1);
        families.answer("zeta", "200", 0.001);
        families.durations.with_label_values(&["outbound", "-"]);
        let rows = destinations(None, &families.sample(Instant::now()));
        let seen: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| (r.direction.as_str(), r.name.as_str(), r.breaker))
            .collect();
        assert_eq!(
            seen,
            [
                ("outbound", "zeta", "closed"),
                ("inbound", "orders", "closed")
            ]
        );
        families.answer("-", "404", 0.001);
        let rows = destinations(None, &families.sample(Instant::now()));
        assert!(rows.iter().any(|r| r.name == "-"));
    }
}
