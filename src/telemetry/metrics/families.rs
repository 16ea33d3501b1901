//! The metric families of the `Metrics` registry, group by group (requests, connections,
//! registry, policy, reload, process), each registered by the one rule of [`super::register`].

use super::*;

/// Resilience metric families (issue: retries, breakers, degradation).
#[derive(Clone)]
pub(super) struct PolicyFamilies {
    pub(super) retries: IntCounterVec,
    pub(super) budget_exhausted: IntCounterVec,
    pub(super) breaker_state: IntGaugeVec,
    pub(super) breaker_transitions: IntCounterVec,
    pub(super) endpoint_ejections: IntCounterVec,
    pub(super) degraded: IntCounterVec,
    pub(super) faults: IntCounterVec,
    pub(super) rate_limited: IntCounterVec,
}

/// `meshlet_requests_total` and the other per-request families.
pub(super) struct RequestFamilies {
    pub(super) requests: IntCounterVec,
    pub(super) durations: HistogramVec,
    pub(super) errors: IntCounterVec,
    pub(super) grpc: IntCounterVec,
    pub(super) connect_errors: IntCounterVec,
}

impl RequestFamilies {
    pub(super) fn new(registry: &Registry) -> Self {
        let requests = define(IntCounterVec::new(
            Opts::new(
                "meshlet_requests_total",
                "Requests answered, by direction, destination, method and status code.",
            ),
            &["direction", "destination", "method", "status"],
        ));
        let durations = define(HistogramVec::new(
            HistogramOpts::new(
                "meshlet_request_duration_seconds",
                "Time from request received to response headers sent.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["direction", "destination"],
        ));
        let errors = define(IntCounterVec::new(
            Opts::new(
                "meshlet_errors_total",
                "Errors meshlet answered itself, by code (docs/errors.md).",
            ),
            &["direction", "destination", "code"],
        ));
        let grpc = define(IntCounterVec::new(
            Opts::new(
                "meshlet_grpc_responses_total",
                "gRPC calls answered, by grpc-status (from trailers, or trailers-only headers).",
            ),
            &["direction", "destination", "grpc_status"],
        ));
        let connect_errors = define(IntCounterVec::new(
            Opts::new(
                "meshlet_upstream_connect_errors_total",
                "Failed connection attempts to upstream endpoints.",
            ),
            &["destination"],
        ));
        RequestFamilies {
            requests: register(registry, requests),
            durations: register(registry, durations),
            errors: register(registry, errors),
            grpc: register(registry, grpc),
            connect_errors: register(registry, connect_errors),
        }
    }
}

/// The per-listener connection families: open, parked, upgraded, refused.
pub(super) struct ConnectionGauges {
    pub(super) open: IntGaugeVec,
    pub(super) parked: IntGaugeVec,
    pub(super) upgraded: IntGaugeVec,
    pub(super) refused: IntCounterVec,
}

impl ConnectionGauges {
    pub(super) fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            register(
                registry,
                define(IntGaugeVec::new(Opts::new(name, help), &["listener"])),
            )
        };
        ConnectionGauges {
            open: gauge(
                "meshlet_open_connections",
                "Client connections open on each listener.",
            ),
            parked: gauge(
                "meshlet_parked_connections",
                "Idle HTTP/1.1 client connections parked without buffers, per listener.",
            ),
            upgraded: gauge(
                "meshlet_upgraded_connections",
                "Upgraded connections (WebSocket and other Upgrade protocols, CONNECT tunnels) being spliced.",
            ),
            refused: register(
                registry,
                define(IntCounterVec::new(
                    Opts::new(
                        "meshlet_connections_refused_total",
                        "Connections closed as soon as accepted because the listener already had its limit open.",
                    ),
                    &["listener"],
                )),
            ),
        }
    }
}

impl RegistryMetrics {
    /// The registry families and `meshlet_endpoints` (live endpoints per service).
    pub(super) fn new(registry: &Registry) -> (Self, IntGaugeVec) {
        let endpoints = define(IntGaugeVec::new(
            Opts::new(
                "meshlet_endpoints",
                "Live endpoints per service in the local snapshot.",
            ),
            &["service"],
        ));
        let watch_errors = define(IntCounter::new(
            "meshlet_registry_watch_errors_total",
            "Registry watch failures (connect, subscribe or read); each is retried with backoff.",
        ));
        let services = define(IntGauge::new(
            "meshlet_registry_services",
            "Destinations in the routing table (registry services, configured services and route targets).",
        ));
        let rejected = define(IntCounterVec::new(
            Opts::new(
                "meshlet_registry_rejected_total",
                "Registry instances ignored (bad name or host, an address class never dialled, loopback, this meshlet's own listener), by reason; each counted once.",
            ),
            &["reason"],
        ));
        let metrics = RegistryMetrics {
            watch_errors: register(registry, watch_errors),
            services: register(registry, services),
            rejected: register(registry, rejected),
        };
        (metrics, register(registry, endpoints))
    }
}

impl PolicyFamilies {
    pub(super) fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                define(IntCounterVec::new(Opts::new(name, help), labels)),
            )
        };
        PolicyFamilies {
            retries: counter(
                "meshlet_retries_total",
                "Retries sent, by destination and the failure that caused them.",
                &["destination", "reason"],
            ),
            budget_exhausted: counter(
                "meshlet_retry_budget_exhausted_total",
                "Retries not sent because the retry budget was empty.",
                &["destination"],
            ),
            breaker_state: register(
                registry,
                define(IntGaugeVec::new(
                    Opts::new(
                        "meshlet_breaker_state",
                        "Service breaker state: 0 closed, 1 open, 2 half open.",
                    ),
                    &["destination"],
                )),
            ),
            breaker_transitions: counter(
                "meshlet_breaker_transitions_total",
                "Service breaker state changes, by the state entered.",
                &["destination", "to"],
            ),
            endpoint_ejections: counter(
                "meshlet_endpoint_ejections_total",
                "Endpoints ejected from balancing by their own breaker (outlier ejection).",
                &["destination"],
            ),
            degraded: counter(
                "meshlet_degraded_total",
                "Degraded answers, by mode (stale, static, read_only).",
                &["destination", "mode"],
            ),
            faults: counter(
                "meshlet_faults_total",
                "Faults injected into outbound calls (docs/policy.md), by kind (abort, delay).",
                &["destination", "kind"],
            ),
            rate_limited: counter(
                "meshlet_rate_limited_total",
                "Calls refused with 429 rate_limited by a token bucket, by direction.",
                &["destination", "direction"],
            ),
        }
    }
}

impl ReloadMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        let reloads = define(IntCounter::new(
            "meshlet_config_reloads_total",
            "Config reloads applied.",
        ));
        let errors = define(IntCounter::new(
            "meshlet_config_reload_errors_total",
            "Config reloads rejected because the file was invalid; the old config keeps serving.",
        ));
        ReloadMetrics {
            reloads: register(registry, reloads),
            errors: register(registry, errors),
        }
    }
}

/// `meshlet_build_info`, and the process families (CPU, memory, file descriptors) on Linux.
pub(super) fn register_process_families(registry: &Registry) {
    let info = define(IntGaugeVec::new(
        Opts::new("meshlet_build_info", "Always 1; labels carry the version."),
        &["version"],
    ));
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    register(registry, info);
    register(registry, crate::telemetry::log_buffer::dropped_counter());
    #[cfg(target_os = "linux")]
    register_boxed(
        registry,
        Box::new(prometheus::process_collector::ProcessCollector::for_self()),
    );
}
