//! The operator's views on the local API: `GET /v1/stats` and the admin page at `GET /`
//! (docs/metrics.md, "Local API"; docs/operations.md, "Admin page and stats"), and the
//! `meshlet_endpoint_states` gauges they read.
//!
//! Stats cost nothing while nobody looks: the first `/v1/stats` starts a sampler that keeps
//! one gathered [`Sample`] of the registry per second for the last [`WINDOW`], and it stops
//! (dropping its samples) when no one has asked for [`KEEP_SAMPLING`]. That first answer's
//! window reaches back to the start, so a one-off look (`meshlet stat` piped) shows figures. Every answer gathers
//! one more sample, so its figures run up to the moment it was asked. The request path
//! feeds nothing here but the counters `/metrics` serves anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, X_CONTENT_TYPE_OPTIONS};
use http::{Response, StatusCode};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

use super::shared::Shared;
use crate::proxy::destination::{Destination, RoutingTable};
use crate::telemetry::metrics::{define, destination_label, register, Direction};
use crate::telemetry::stats::{self, Sample};
use crate::wire::answer::{self, AnswerBody};

/// The window the rates and percentiles cover (at most: less while sampling has just begun).
pub(super) const WINDOW: Duration = Duration::from_secs(10);
/// How often the sampler gathers.
const PERIOD: Duration = Duration::from_secs(1);
/// The sampler stops when `/v1/stats` was not asked for this long.
const KEEP_SAMPLING: Duration = Duration::from_secs(60);

/// The admin page: one file, no outside assets. `{{NONCE}}` marks its inline script and
/// style, which the answer's `content-security-policy` allows by that nonce alone.
const ADMIN_PAGE: &str = include_str!("admin.html");

/// The state behind `/v1/stats`: the samples of the last [`WINDOW`], and whether a
/// sampler runs.
pub(super) struct StatsView {
    shared: Arc<Shared>,
    started: Instant,
    events_on: bool,
    hub_on: bool,
    /// Oldest first; only while the sampler runs.
    history: Mutex<VecDeque<Sample>>,
    asked_at: Mutex<Instant>,
    sampling: AtomicBool,
}

impl StatsView {
    /// The view of `shared`; `events_on` and `hub_on` say whether those sections run
    /// (their figures are `null` otherwise).
    pub(super) fn new(shared: Arc<Shared>, events_on: bool, hub_on: bool) -> Arc<StatsView> {
        let now = Instant::now();
        Arc::new(StatsView {
            shared,
            started: now,
            events_on,
            hub_on,
            history: Mutex::new(VecDeque::new()),
            asked_at: Mutex::new(now),
            sampling: AtomicBool::new(false),
        })
    }

    /// The `/v1/stats` answer; starts the sampler when it is not running. Runs on the
    /// control runtime (the local API's), where the sampler is spawned.
    pub(super) fn answer(self: &Arc<Self>) -> Response<AnswerBody> {
        *lock(&self.asked_at) = Instant::now();
        if !self.sampling.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().sample_while_watched());
        }
        let now = self.gather();
        let baseline = {
            let mut history = lock(&self.history);
            if history.is_empty() {
                // The first look: nothing was sampled before it, so its window reaches back
                // to the start (every counter was 0 then) and it still says something; the
                // samples from now on make the sliding window.
                history.push_back(now.clone());
                Some(Sample::new(self.started, &[]))
            } else {
                history
                    .iter()
                    .find(|s| now.at.saturating_duration_since(s.at) <= WINDOW)
                    .cloned()
            }
        };
        let window_seconds = baseline.as_ref().map_or(0.0, |b| {
            now.at.saturating_duration_since(b.at).as_secs_f64()
        });
        let config = self.shared.config.load();
        let events = self.events_on.then(|| {
            let subscriptions: Vec<serde_json::Value> = config
                .config
                .events
                .subscriptions
                .iter()
                .map(|s| {
                    let event_type = s.event_type.as_str();
                    let figures = now.event_figures(event_type);
                    serde_json::json!({
                        "type": event_type,
                        "pending": figures.pending,
                        "lag": figures.lag,
                        "dead_letters": figures.dead_letters,
                    })
                })
                .collect();
            serde_json::json!({ "subscriptions": subscriptions })
        });
        answer::json(
            StatusCode::OK,
            &serde_json::json!({
                "service": config.config.service.name.as_str(),
                "uptime_seconds": self.started.elapsed().as_secs(),
                "window_seconds": (window_seconds * 1000.0).round() / 1000.0,
                "destinations": stats::destinations(baseline.as_ref(), &now),
                "events": events,
                "hub": self.hub_on.then(|| now.hub()),
                "recent_errors": self.shared.metrics.recent_errors.newest_first(),
            }),
        )
    }

    fn gather(&self) -> Sample {
        Sample::new(Instant::now(), &self.shared.metrics.registry().gather())
    }

    /// One sample a second while `/v1/stats` was asked for within [`KEEP_SAMPLING`]; then
    /// the samples are dropped and the task ends (the next ask starts another).
    async fn sample_while_watched(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if lock(&self.asked_at).elapsed() > KEEP_SAMPLING {
                lock(&self.history).clear();
                self.sampling.store(false, Ordering::Release);
                return;
            }
            let sample = self.gather();
            let mut history = lock(&self.history);
            // Keep what a window may still start from: samples up to WINDOW old, and one
            // more so a window always reaches back its full length.
            while history.len() > 1 && sample.at.saturating_duration_since(history[1].at) > WINDOW {
                history.pop_front();
            }
            history.push_back(sample);
        }
    }
}

/// A poisoned lock only means a panic elsewhere while it was held; the data is whole.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The admin page, with a fresh nonce for its inline script and style and a policy that
/// allows nothing else: no outside script, style, font or frame, requests to this origin
/// only.
pub(super) fn admin_page() -> Response<AnswerBody> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let page = ADMIN_PAGE.replace("{{NONCE}}", &nonce);
    let mut resp = answer::respond(StatusCode::OK, "text/html; charset=utf-8", page.into());
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let headers = resp.headers_mut();
    // The policy is ASCII built from hex digits and constant text: always a valid value.
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        headers.insert(CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `meshlet_endpoint_states{direction,destination,state}`: each destination's endpoints by
/// state (`up`, `ejected`, `draining`), counted from the live routing table (and the app's
/// one endpoint, inbound) whenever the registry is gathered, so it is exact at every scrape
/// and costs the request path nothing.
#[derive(Clone)]
pub(super) struct EndpointStates {
    table: Arc<ArcSwap<RoutingTable>>,
    app: Option<Arc<Destination>>,
    gauges: IntGaugeVec,
}

impl EndpointStates {
    /// Registers the family on the sidecar's registry.
    pub(super) fn register(shared: &Shared, app: Option<Arc<Destination>>) {
        let gauges = define(IntGaugeVec::new(
            Opts::new(
                "meshlet_endpoint_states",
                "Endpoints per destination by state: up, ejected (own breaker open), draining.",
            ),
            &["direction", "destination", "state"],
        ));
        let collector = EndpointStates {
            table: shared.table.clone(),
            app,
            gauges,
        };
        register(shared.metrics.registry(), collector);
    }

    fn set(&self, direction: Direction, destination: &Destination) {
        let mut counts = stats::EndpointStates::default();
        for endpoint in &destination.endpoints {
            if endpoint.breaker.is_open() {
                counts.ejected += 1;
            } else if endpoint.draining.load(Ordering::Relaxed) {
                counts.draining += 1;
            } else {
                counts.up += 1;
            }
        }
        let name = destination_label(&destination.name);
        for (state, count) in [
            ("up", counts.up),
            ("ejected", counts.ejected),
            ("draining", counts.draining),
        ] {
            self.gauges
                .with_label_values(&[direction.as_str(), name, state])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

impl Collector for EndpointStates {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Destinations gone from the table since the last gather go from the family too.
        self.gauges.reset();
        for destination in self.table.load().destinations() {
            self.set(Direction::Outbound, destination);
        }
        if let Some(app) = &self.app {
            self.set(Direction::Inbound, app);
        }
        self.gauges.collect()
    }
}
