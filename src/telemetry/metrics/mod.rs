//! Prometheus metrics: the families, and per-destination handles resolved once when a
//! destination is built, so the request path only increments (no label hashing, no
//! `format!`, no lock). docs/metrics.md lists every family. Beside them, the ring of
//! meshlet's last error answers ([`recent_errors`]), fed on error branches only.
//!
//! One rule for every module's families (this one's, events', the hub's): each is built
//! with [`define`] and registered with [`register`], which logs a failed registration and
//! goes on; no feature is ever turned off by a metric.

mod families;
pub(crate) mod recent_errors;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use families::{register_process_families, ConnectionGauges, PolicyFamilies, RequestFamilies};
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use recent_errors::RecentErrors;

/// Which listener a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// App → remote service.
    Outbound,
    /// Remote meshlet → local app.
    Inbound,
}

impl Direction {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Latency buckets in seconds: 0.5 ms to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric family of one sidecar.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    errors: IntCounterVec,
    connect_errors: IntCounterVec,
    grpc: IntCounterVec,
    policy: PolicyFamilies,
    /// Live endpoints per service.
    pub endpoints: IntGaugeVec,
    /// Registry metrics.
    pub registry_metrics: RegistryMetrics,
    /// Open client connections per listener.
    pub open_connections: IntGaugeVec,
    /// Idle HTTP/1.1 client connections parked, per listener.
    pub parked_connections: IntGaugeVec,
    /// Upgraded (WebSocket, CONNECT) connections being spliced, per listener.
    pub upgraded_connections: IntGaugeVec,
    /// Connections closed at accept because the listener's connection limit was reached.
    pub connections_refused: IntCounterVec,
    /// Config reloads.
    pub reload: ReloadMetrics,
    /// The last error answers meshlet gave itself (`GET /v1/stats`).
    pub recent_errors: Arc<RecentErrors>,
}

/// Config reload counters.
#[derive(Clone)]
pub struct ReloadMetrics {
    /// Reloads applied.
    pub reloads: IntCounter,
    /// Reloads rejected (invalid file); the old config keeps serving.
    pub errors: IntCounter,
}

/// Registry health counters.
#[derive(Clone)]
pub struct RegistryMetrics {
    /// Failed watch sessions (connect, subscribe or read errors).
    pub watch_errors: IntCounter,
    /// Known services.
    pub services: IntGauge,
    /// Registry instances ignored, by reason (each counted once while it stays registered).
    pub rejected: IntCounterVec,
}

/// Builds a family from its definition. Every definition is a constant (name, help, label
/// names), so this cannot fail once the tests that build every family have passed (this
/// module's, and the sidecar's `every_metric_family_registers_once_on_one_registry`).
pub fn define<T>(made: prometheus::Result<T>) -> T {
    made.expect("constant metric definition is valid")
}

/// Registers `collector` on `registry` and hands it back: the one rule for every family of
/// every module. Registration fails only on a duplicate name (each sidecar has its own
/// registry); then the failure is logged at error, naming the family, and the caller goes on
/// with a working collector that is missing from `/metrics`. A metric never turns a
/// feature off.
pub fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    register_boxed(registry, Box::new(collector.clone()));
    collector
}

fn register_boxed(registry: &Registry, collector: Box<dyn Collector>) {
    let family = collector
        .desc()
        .iter()
        .map(|d| d.fq_name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    if let Err(error) = registry.register(collector) {
        tracing::error!(%family, %error, "metric family not registered; it is missing from /metrics");
    }
}

impl Metrics {
    /// Registers every family in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let RequestFamilies {
            requests,
            durations,
            errors,
            grpc,
            connect_errors,
        } = RequestFamilies::new(&registry);
        let connections = ConnectionGauges::new(&registry);
        let (registry_metrics, endpoints) = RegistryMetrics::new(&registry);
        let policy = PolicyFamilies::new(&registry);
        let reload = ReloadMetrics::new(&registry);
        register_process_families(&registry);
        Metrics {
            registry,
            requests,
            durations,
            errors,
            connect_errors,
            grpc,
            policy,
            reload,
            endpoints,
            registry_metrics,
            open_connections: connections.open,
            parked_connections: connections.parked,
            upgraded_connections: connections.upgraded,
            connections_refused: connections.refused,
            recent_errors: Arc::default(),
        }
    }

    /// Sets `meshlet_endpoints{service}`: `service` is labelled as [`destination_label`] does.
    pub fn set_endpoints(&self, service: &str, count: usize) {
        self.endpoints
            .with_label_values(&[destination_label(service)])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The registry, for modules that register families of their own (events, realtime).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Handles for one destination, resolved once. A `name` that fails the registry name
    /// check is labelled `-` ([`destination_label`]).
    pub fn destination(&self, direction: Direction, name: &str) -> Arc<DestinationMetrics> {
        static NEXT_ID: AtomicU32 = AtomicU32::new(1);
        let name = destination_label(name);
        let labels = [direction.as_str(), name];
        self.seed_zero_series(direction, name);
        Arc::new(DestinationMetrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            direction,
            name: name.to_owned(),
            duration: self.durations.with_label_values(&labels),
            connect_errors: self.connect_errors.with_label_values(&[name]),
            budget_exhausted: self.policy.budget_exhausted.with_label_values(&[name]),
            breaker_state: self.policy.breaker_state.with_label_values(&[name]),
            endpoint_ejections: self.policy.endpoint_ejections.with_label_values(&[name]),
            faults_aborted: self.policy.faults.with_label_values(&[name, "abort"]),
            faults_delayed: self.policy.faults.with_label_values(&[name, "delay"]),
            rate_limited: self
                .policy
                .rate_limited
                .with_label_values(&[name, direction.as_str()]),
            requests: self.requests.clone(),
            errors: self.errors.clone(),
            grpc: self.grpc.clone(),
            policy: self.policy.clone(),
            recent_errors: self.recent_errors.clone(),
        })
    }
}

/// The label value standing for a name that is not a valid service name (and for a request
/// that matched no destination): it cannot grow the label set.
pub const UNNAMED: &str = "-";

/// The `destination` / `service` label of a destination name: the name itself when it passes
/// the registry name check `[A-Za-z0-9._-]{1,128}`, else [`UNNAMED`]. Names reach labels from
/// the config (checked at load), and from the registry snapshot, which anyone able to write
/// the registry's Redis fills: this keeps a hostile name (a megabyte long, or one new name a
/// second) out of every series.
pub fn destination_label(name: &str) -> &str {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        name
    } else {
        UNNAMED
    }
}

/// The `grpc_status` label values: the codes `0`–`16` gRPC defines, then `other` for any
/// other number an upstream sends, so a hostile upstream cannot grow the label set.
const GRPC_STATUS_LABELS: [&str; 18] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "other",
];

/// The index of `status`'s label in [`GRPC_STATUS_LABELS`].
fn grpc_status_index(status: u32) -> usize {
    usize::try_from(status).map_or(GRPC_STATUS_LABELS.len() - 1, |s| {
        s.min(GRPC_STATUS_LABELS.len() - 1)
    })
}

impl Metrics {
    /// Resolves the zero-valued series of a new destination's families whose labels are
    /// more than the destination (docs/metrics.md, "Series present from the start"), so
    /// that every family a dashboard or alert names is in `/metrics` before the first
    /// request, and `rate()` sees the first increment. Each label set is resolved once
    /// here; the request path resolves the same child later and is unchanged.
    fn seed_zero_series(&self, direction: Direction, name: &str) {
        let label = direction.as_str();
        self.requests
            .with_label_values(&[label, name, "GET", "200"]);
        self.errors
            .with_label_values(&[label, name, "upstream_unavailable"]);
        // The policy families count outbound calls of a routed destination only.
        if direction != Direction::Outbound || name == UNNAMED {
            return;
        }
        self.policy
            .retries
            .with_label_values(&[name, "connect-failure"]);
        for mode in ["stale", "static", "read_only"] {
            self.policy.degraded.with_label_values(&[name, mode]);
        }
        for to in ["open", "half_open", "closed"] {
            self.policy
                .breaker_transitions
                .with_label_values(&[name, to]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Metric handles of one destination.
pub struct DestinationMetrics {
    id: u32,
    direction: Direction,
    name: String,
    /// Request duration histogram.
    pub duration: Histogram,
    /// Failed connects.
    pub connect_errors: IntCounter,
    /// Retries refused by the budget.
    pub budget_exhausted: IntCounter,
    breaker_state: IntGauge,
    endpoint_ejections: IntCounter,
    /// `meshlet_faults_total{kind="abort"}`: calls answered by an injected abort.
    pub faults_aborted: IntCounter,
    /// `meshlet_faults_total{kind="delay"}`: calls held by an injected delay.
    pub faults_delayed: IntCounter,
    /// `meshlet_rate_limited_total`: calls refused by a token bucket.
    pub rate_limited: IntCounter,
    requests: IntCounterVec,
    errors: IntCounterVec,
    grpc: IntCounterVec,
    policy: PolicyFamilies,
    recent_errors: Arc<RecentErrors>,
}

/// The hasher of meshlet's lookup tables on the request path, whose keys meshlet makes
/// itself (ids and small numbers packed in a `u64`, service names from its configuration
/// and registry; a request only looks them up, never inserts, so no flooding to fear):
/// FNV-1a over bytes, a `u64` taken whole, and Fibonacci hashing at the end to spread
/// sequential keys over the table's high bits. The default SipHash costs ~200
/// instructions a lookup.
#[derive(Default)]
pub(crate) struct TableHasher(u64);

impl Hasher for TableHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A lookup table hashed by [`TableHasher`].
pub(crate) type TableMap<K, V> = HashMap<K, V, BuildHasherDefault<TableHasher>>;

thread_local! {
    // Per worker thread: (destination id, method index, status) → counter. Each worker
    // resolves a label set once; after that a request is a hash-map hit with no lock and
    // no allocation.
    static REQUEST_COUNTERS: RefCell<TableMap<u64, IntCounter>> = RefCell::new(TableMap::default());
    static ERROR_COUNTERS: RefCell<HashMap<(u32, &'static str), IntCounter>> = RefCell::new(HashMap::new());
    static GRPC_COUNTERS: RefCell<HashMap<(u32, usize), IntCounter>> = RefCell::new(HashMap::new());
}

const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "other",
];

fn method_index(m: &http::Method) -> u8 {
    match *m {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::HEAD => 4,
        http::Method::OPTIONS => 5,
        http::Method::PATCH => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}

impl DestinationMetrics {
    /// The destination's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which listener the destination's requests come through.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Counts one answered request.
    pub fn count_request(&self, method: &http::Method, status: http::StatusCode) {
        let (method, status) = (method_index(method), status.as_u16());
        let key = u64::from(self.id) << 32 | u64::from(method) << 16 | u64::from(status);
        REQUEST_COUNTERS.with(|cache| {
            let mut cache = cache.borrow_mut();
            cache
                .entry(key)
                .or_insert_with(|| {
                    let mut code = itoa::Buffer::new();
                    self.requests.with_label_values(&[
                        self.direction.as_str(),
                        &self.name,
                        METHODS[usize::from(method)],
                        code.format(status),
                    ])
                })
                .inc();
        });
    }

    /// Counts one gRPC answer by its status code (`0`–`16`, anything else as `other`).
    pub fn count_grpc(&self, status: u32) {
        let index = grpc_status_index(status);
        GRPC_COUNTERS.with(|cache| {
            cache
                .borrow_mut()
                .entry((self.id, index))
                .or_insert_with(|| {
                    self.grpc.with_label_values(&[
                        self.direction.as_str(),
                        &self.name,
                        GRPC_STATUS_LABELS[index],
                    ])
                })
                .inc();
        });
    }

    /// Counts one error meshlet answered itself.
    pub fn count_error(&self, code: &'static str) {
        ERROR_COUNTERS.with(|cache| {
            cache
                .borrow_mut()
                .entry((self.id, code))
                .or_insert_with(|| {
                    self.errors
                        .with_label_values(&[self.direction.as_str(), &self.name, code])
                })
                .inc();
        });
    }
}

impl DestinationMetrics {
    // Failure paths below resolve labels on use: they run only when something went wrong.

    /// Counts a retry caused by `reason`.
    pub fn count_retry(&self, reason: &str) {
        self.policy
            .retries
            .with_label_values(&[&self.name, reason])
            .inc();
    }

    /// Counts a degraded answer of `mode`.
    pub fn count_degraded(&self, mode: &str) {
        self.policy
            .degraded
            .with_label_values(&[&self.name, mode])
            .inc();
    }

    /// Records a service breaker's move to `state` (its label) with gauge value `gauge`.
    pub fn breaker_changed(&self, state: &'static str, gauge: i64) {
        self.breaker_state.set(gauge);
        self.policy
            .breaker_transitions
            .with_label_values(&[&self.name, state])
            .inc();
        tracing::warn!(destination = %self.name, state, "service breaker changed state");
    }

    /// Keeps an error answer of this destination among the recent errors of `/v1/stats`.
    pub fn recent_error(
        &self,
        code: &'static str,
        status: u16,
        message: &dyn std::fmt::Display,
        request_id: &str,
    ) {
        self.recent_errors
            .record(&self.name, code, status, message, request_id);
    }

    /// Counts an endpoint ejected by its breaker.
    pub fn endpoint_ejected(&self) {
        self.endpoint_ejections.inc();
    }
}

impl std::fmt::Debug for DestinationMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationMetrics")
            .field("direction", &self.direction)
            .field("name", &self.name)
            .finish()
    }
}

/// Test help: what a piece of code logs at error.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    struct CountErrors(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for CountErrors {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if *event.metadata().level() == tracing::Level::ERROR {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Runs `f` on this thread and counts the error-level events it logged.
    pub(crate) fn errors_logged<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let count = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(CountErrors(count.clone()));
        let out = tracing::subscriber::with_default(subscriber, f);
        (out, count.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::errors_logged;
    use super::*;

    #[test]
    fn every_family_of_this_module_registers_once() {
        let (metrics, errors) = errors_logged(Metrics::new);
        assert_eq!(errors, 0, "a family of Metrics::new failed to register");
        metrics
            .open_connections
            .with_label_values(&["outbound"])
            .set(1);
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(text.contains("meshlet_build_info{version="), "{text}");
        assert!(text.contains("meshlet_open_connections{listener=\"outbound\"} 1"));
    }

    #[test]
    fn grpc_status_labels_are_0_to_16_or_other() {
        let label = |status| GRPC_STATUS_LABELS[grpc_status_index(status)];
        assert_eq!(label(0), "0");
        assert_eq!(label(16), "16");
        assert_eq!(label(17), "other");
        assert_eq!(label(u32::MAX), "other");
        let metrics = Metrics::new();
        let dest = metrics.destination(Direction::Outbound, "greeter");
        for status in [14, 999, 123_456, u32::MAX] {
            dest.count_grpc(status);
        }
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(text.contains(r#"grpc_status="other"} 3"#), "{text}");
        assert!(!text.contains(r#"grpc_status="999""#), "{text}");
    }

    #[test]
    fn a_new_destination_exports_its_zero_series_and_counts_on_them() {
        let metrics = Metrics::new();
        let dest = metrics.destination(Direction::Outbound, "inventory");
        metrics.destination(Direction::Inbound, "orders");
        let text = String::from_utf8(metrics.encode()).unwrap();
        for series in [
            r#"meshlet_requests_total{destination="inventory",direction="outbound",method="GET",status="200"} 0"#,
            r#"meshlet_requests_total{destination="orders",direction="inbound",method="GET",status="200"} 0"#,
            r#"meshlet_errors_total{code="upstream_unavailable",destination="inventory",direction="outbound"} 0"#,
            r#"meshlet_retries_total{destination="inventory",reason="connect-failure"} 0"#,
            r#"meshlet_degraded_total{destination="inventory",mode="read_only"} 0"#,
            r#"meshlet_breaker_transitions_total{destination="inventory",to="half_open"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == series), "{series}\n{text}");
        }
        // The policy families are outbound only.
        assert!(
            !text.contains(r#"meshlet_retries_total{destination="orders""#),
            "{text}"
        );
        // The request path counts on the seeded series, not on a second one.
        dest.count_request(&http::Method::GET, http::StatusCode::OK);
        dest.count_error("upstream_unavailable");
        let text = String::from_utf8(metrics.encode()).unwrap();
        let get_200 = r#"meshlet_requests_total{destination="inventory",direction="outbound",method="GET",status="200"}"#;
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(get_200)).collect();
        assert_eq!(lines, [format!("{get_200} 1")]);
        assert!(text.contains(
            r#"meshlet_errors_total{code="upstream_unavailable",destination="inventory",direction="outbound"} 1"#
        ));
    }

    #[test]
    fn destination_labels_only_for_valid_names() {
        assert_eq!(destination_label("inventory.v2_a-b"), "inventory.v2_a-b");
        for bad in ["", "a b", "x\"y", "caf\u{e9}", &"a".repeat(129)] {
            assert_eq!(destination_label(bad), UNNAMED, "{bad:?}");
        }
        let metrics = Metrics::new();
        let dest = metrics.destination(Direction::Outbound, "evil\"} 1\nfake_metric{a=\"");
        assert_eq!(dest.name(), UNNAMED);
        dest.count_request(&http::Method::GET, http::StatusCode::OK);
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(!text.contains("evil"), "{text}");
    }

    #[test]
    fn a_duplicate_is_logged_and_its_collector_still_works() {
        let registry = Registry::new();
        let first = define(IntCounter::new("meshlet_test_total", "First."));
        let again = define(IntCounter::new("meshlet_test_total", "Again."));
        let (again, errors) = errors_logged(|| {
            register(&registry, first.clone());
            register(&registry, again)
        });
        assert_eq!(errors, 1);
        again.inc();
        first.inc();
        assert_eq!((again.get(), first.get()), (1, 1));
    }
}
