//! Prometheus metrics: the families, and per-destination handles resolved once when a
//! destination is built, so the request path only increments (no label hashing, no
//! `format!`, no lock). docs/metrics.md lists every family.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

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
    /// Config reloads.
    pub reload: ReloadMetrics,
}

/// Resilience metric families (issue: retries, breakers, degradation).
#[derive(Clone)]
struct PolicyFamilies {
    retries: IntCounterVec,
    budget_exhausted: IntCounterVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    endpoint_ejections: IntCounterVec,
    degraded: IntCounterVec,
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
}

fn build<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    // Only fails on an invalid metric name or a duplicate registration: both are
    // programming errors caught by the first test that builds a sidecar.
    r.expect("metric definition is valid and registered once")
}

impl Metrics {
    /// Registers every family in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| build(registry.register(c));
        let requests = build(IntCounterVec::new(
            Opts::new(
                "meshlet_requests_total",
                "Requests answered, by direction, destination, method and status code.",
            ),
            &["direction", "destination", "method", "status"],
        ));
        let durations = build(HistogramVec::new(
            HistogramOpts::new(
                "meshlet_request_duration_seconds",
                "Time from request received to response headers sent.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["direction", "destination"],
        ));
        let errors = build(IntCounterVec::new(
            Opts::new(
                "meshlet_errors_total",
                "Errors meshlet answered itself, by code (docs/errors.md).",
            ),
            &["direction", "destination", "code"],
        ));
        let grpc = build(IntCounterVec::new(
            Opts::new(
                "meshlet_grpc_responses_total",
                "gRPC calls answered, by grpc-status (from trailers, or trailers-only headers).",
            ),
            &["direction", "destination", "grpc_status"],
        ));
        let connect_errors = build(IntCounterVec::new(
            Opts::new(
                "meshlet_upstream_connect_errors_total",
                "Failed connection attempts to upstream endpoints.",
            ),
            &["destination"],
        ));
        let endpoints = build(IntGaugeVec::new(
            Opts::new(
                "meshlet_endpoints",
                "Live endpoints per service in the local snapshot.",
            ),
            &["service"],
        ));
        let open_connections = build(IntGaugeVec::new(
            Opts::new(
                "meshlet_open_connections",
                "Client connections open on each listener.",
            ),
            &["listener"],
        ));
        let parked_connections = build(IntGaugeVec::new(
            Opts::new(
                "meshlet_parked_connections",
                "Idle HTTP/1.1 client connections parked without buffers, per listener.",
            ),
            &["listener"],
        ));
        let upgraded_connections = build(IntGaugeVec::new(
            Opts::new("meshlet_upgraded_connections", "Upgraded connections (WebSocket and other Upgrade protocols, CONNECT tunnels) being spliced."),
            &["listener"],
        ));
        let watch_errors = build(IntCounter::new(
            "meshlet_registry_watch_errors_total",
            "Registry watch failures (connect, subscribe or read); each is retried with backoff.",
        ));
        let services = build(IntGauge::new(
            "meshlet_registry_services",
            "Destinations in the routing table (registry services, configured services and route targets).",
        ));
        let policy = PolicyFamilies {
            retries: build(IntCounterVec::new(
                Opts::new(
                    "meshlet_retries_total",
                    "Retries sent, by destination and the failure that caused them.",
                ),
                &["destination", "reason"],
            )),
            budget_exhausted: build(IntCounterVec::new(
                Opts::new(
                    "meshlet_retry_budget_exhausted_total",
                    "Retries not sent because the retry budget was empty.",
                ),
                &["destination"],
            )),
            breaker_state: build(IntGaugeVec::new(
                Opts::new(
                    "meshlet_breaker_state",
                    "Service breaker state: 0 closed, 1 open, 2 half open.",
                ),
                &["destination"],
            )),
            breaker_transitions: build(IntCounterVec::new(
                Opts::new(
                    "meshlet_breaker_transitions_total",
                    "Service breaker state changes, by the state entered.",
                ),
                &["destination", "to"],
            )),
            endpoint_ejections: build(IntCounterVec::new(
                Opts::new(
                    "meshlet_endpoint_ejections_total",
                    "Endpoints ejected from balancing by their own breaker (outlier ejection).",
                ),
                &["destination"],
            )),
            degraded: build(IntCounterVec::new(
                Opts::new(
                    "meshlet_degraded_total",
                    "Degraded answers, by mode (stale, static, read_only).",
                ),
                &["destination", "mode"],
            )),
        };
        let reloads = build(IntCounter::new(
            "meshlet_config_reloads_total",
            "Config reloads applied.",
        ));
        let reload_errors = build(IntCounter::new(
            "meshlet_config_reload_errors_total",
            "Config reloads rejected because the file was invalid; the old config keeps serving.",
        ));
        let info = build(IntGaugeVec::new(
            Opts::new("meshlet_build_info", "Always 1; labels carry the version."),
            &["version"],
        ));
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(durations.clone()),
            Box::new(errors.clone()),
            Box::new(connect_errors.clone()),
            Box::new(grpc.clone()),
            Box::new(endpoints.clone()),
            Box::new(open_connections.clone()),
            Box::new(parked_connections.clone()),
            Box::new(upgraded_connections.clone()),
            Box::new(watch_errors.clone()),
            Box::new(services.clone()),
            Box::new(policy.retries.clone()),
            Box::new(policy.budget_exhausted.clone()),
            Box::new(policy.breaker_state.clone()),
            Box::new(policy.breaker_transitions.clone()),
            Box::new(policy.endpoint_ejections.clone()),
            Box::new(policy.degraded.clone()),
            Box::new(reloads.clone()),
            Box::new(reload_errors.clone()),
            Box::new(info),
        ] {
            reg(c);
        }
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Metrics {
            registry,
            requests,
            durations,
            errors,
            connect_errors,
            grpc,
            policy,
            reload: ReloadMetrics {
                reloads,
                errors: reload_errors,
            },
            endpoints,
            registry_metrics: RegistryMetrics {
                watch_errors,
                services,
            },
            open_connections,
            parked_connections,
            upgraded_connections,
        }
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

    /// Handles for one destination, resolved once.
    pub fn destination(&self, direction: Direction, name: &str) -> Arc<DestinationMetrics> {
        static NEXT_ID: AtomicU32 = AtomicU32::new(1);
        let labels = [direction.as_str(), name];
        Arc::new(DestinationMetrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            direction,
            name: name.to_owned(),
            duration: self.durations.with_label_values(&labels),
            connect_errors: self.connect_errors.with_label_values(&[name]),
            budget_exhausted: self.policy.budget_exhausted.with_label_values(&[name]),
            breaker_state: self.policy.breaker_state.with_label_values(&[name]),
            endpoint_ejections: self.policy.endpoint_ejections.with_label_values(&[name]),
            requests: self.requests.clone(),
            errors: self.errors.clone(),
            grpc: self.grpc.clone(),
            policy: self.policy.clone(),
        })
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
    requests: IntCounterVec,
    errors: IntCounterVec,
    grpc: IntCounterVec,
    policy: PolicyFamilies,
}

thread_local! {
    // Per worker thread: (destination id, method index, status) → counter. Each worker
    // resolves a label set once; after that a request is a hash-map hit with no lock and
    // no allocation.
    static REQUEST_COUNTERS: RefCell<HashMap<(u32, u8, u16), IntCounter>> = RefCell::new(HashMap::new());
    static ERROR_COUNTERS: RefCell<HashMap<(u32, &'static str), IntCounter>> = RefCell::new(HashMap::new());
    static GRPC_COUNTERS: RefCell<HashMap<(u32, u32), IntCounter>> = RefCell::new(HashMap::new());
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

    /// Counts one answered request.
    pub fn count_request(&self, method: &http::Method, status: http::StatusCode) {
        let key = (self.id, method_index(method), status.as_u16());
        REQUEST_COUNTERS.with(|cache| {
            let mut cache = cache.borrow_mut();
            cache
                .entry(key)
                .or_insert_with(|| {
                    let mut code = itoa::Buffer::new();
                    self.requests.with_label_values(&[
                        self.direction.as_str(),
                        &self.name,
                        METHODS[usize::from(key.1)],
                        code.format(key.2),
                    ])
                })
                .inc();
        });
    }

    /// Counts one gRPC answer by its status code.
    pub fn count_grpc(&self, status: u32) {
        GRPC_COUNTERS.with(|cache| {
            cache
                .borrow_mut()
                .entry((self.id, status))
                .or_insert_with(|| {
                    let mut code = itoa::Buffer::new();
                    self.grpc.with_label_values(&[
                        self.direction.as_str(),
                        &self.name,
                        code.format(status),
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
