//! The chart's Grafana dashboard and alert rules against a live `/metrics`: a sidecar with
//! every section on (an outbound destination, inbound to an app, the Redis registry, an
//! events subscription, the realtime hub) and no traffic at all must already export every
//! metric family that a dashboard query or an alert expression names
//! (docs/metrics.md, "Series present from the start"), and docs/metrics.md must list each.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::*;

const DASHBOARD: &str = include_str!("../helm/meshlet/dashboards/meshlet.json");
const ALERT_RULES: &str = include_str!("../helm/meshlet/alerts/meshlet-rules.yaml");
const METRICS_DOC: &str = include_str!("../docs/metrics.md");

/// The metric names in a PromQL expression (or a Grafana `label_values(...)` query): every
/// identifier outside a string literal starting with `meshlet_` or `process_` (the process
/// collector's families).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut ident = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars().chain([' ']) {
        if let Some(q) = quote {
            // Inside a label value: skip to its closing quote.
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
        } else if is_ident(c) {
            ident.push(c);
        } else {
            if ident.starts_with("meshlet_") || ident.starts_with("process_") {
                names.insert(std::mem::take(&mut ident));
            }
            ident.clear();
            if matches!(c, '"' | '\'' | '`') {
                quote = Some(c);
            }
        }
    }
    names
}

/// Every query string of the dashboard: panel targets' `expr` and the template variables'
/// `query` / `definition` (`label_values(...)`).
fn dashboard_queries(node: &serde_json::Value, key: Option<&str>, out: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                dashboard_queries(v, Some(k), out);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                dashboard_queries(v, key, out);
            }
        }
        serde_json::Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
            out.push(s.clone());
        }
        _ => {}
    }
}

fn dashboard_names() -> BTreeSet<String> {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, None, &mut queries);
    queries.iter().flat_map(|q| metric_names(q)).collect()
}

fn alert_names() -> BTreeSet<String> {
    let rules: serde_yaml::Value = serde_yaml::from_str(ALERT_RULES).expect("rules YAML");
    let groups = rules["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .flat_map(|r| metric_names(r["expr"].as_str().expect("expr")))
        .collect()
}

/// The family a name belongs to: a histogram's `_bucket`, `_sum` and `_count` series are
/// its family's; any other name is its own family.
fn family<'a>(name: &'a str, histograms: &BTreeSet<String>) -> &'a str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| {
            name.strip_suffix(suffix)
                .filter(|base| histograms.contains(*base))
        })
        .unwrap_or(name)
}

/// What `/metrics` exports: (families with at least one sample, histogram families).
fn exported(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut histograms = BTreeSet::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            if let Some(name) = decl.strip_suffix(" histogram") {
                histograms.insert(name.to_owned());
            }
        }
    }
    let families = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or(l))
        .map(|name| family(name, &histograms).to_owned())
        .collect();
    (families, histograms)
}

#[test]
fn the_name_extraction_finds_every_metric_of_an_expression() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(meshlet_request_duration_seconds_bucket{x=\"meshlet_no\"}[5m]))) / process_open_fds"
        ),
        ["meshlet_request_duration_seconds_bucket", "process_open_fds"]
            .map(String::from)
            .into()
    );
    let histograms = BTreeSet::from(["meshlet_request_duration_seconds".to_owned()]);
    assert_eq!(
        family("meshlet_request_duration_seconds_count", &histograms),
        "meshlet_request_duration_seconds"
    );
    assert_eq!(
        family("meshlet_events_pending_count", &histograms),
        "meshlet_events_pending_count"
    );
    // The dashboard covers every row of its contract; a broken extraction finding nothing
    // would pass the live check below vacuously.
    let names = dashboard_names();
    for expected in [
        "meshlet_requests_total",
        "meshlet_request_duration_seconds_bucket",
        "meshlet_errors_total",
        "meshlet_breaker_state",
        "meshlet_retries_total",
        "meshlet_retry_budget_exhausted_total",
        "meshlet_degraded_total",
        "meshlet_faults_total",
        "meshlet_rate_limited_total",
        "meshlet_open_connections",
        "meshlet_parked_connections",
        "meshlet_connections_refused_total",
        "meshlet_registry_services",
        "meshlet_registry_watch_errors_total",
        "meshlet_registry_rejected_total",
        "meshlet_events_pending",
        "meshlet_events_consumer_lag",
        "meshlet_events_oldest_pending_seconds",
        "meshlet_events_dead_letters_total",
        "meshlet_event_delivery_duration_seconds_bucket",
        "meshlet_realtime_connections",
        "meshlet_realtime_rooms",
        "meshlet_realtime_slow_clients_dropped_total",
        "meshlet_realtime_fanout_duration_seconds_bucket",
    ] {
        assert!(names.contains(expected), "the dashboard has no {expected}");
    }
    assert!(alert_names().len() >= 12, "{:?}", alert_names());
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported_from_start() {
    let redis = RedisServer::start();
    let app = RecordingApp::ok().await;
    let inventory = Upstream::start("inventory").await;
    let spec = MeshletSpec::new("orders")
        .app(app.addr)
        .redis(&redis)
        .registry(&format!("static: {{inventory: [\"{}\"]}}", inventory.addr))
        .with(&format!(
            "events:\n  subscriptions:\n{}",
            events::subscription("trade.executed", "")
        ))
        .with(&format!(
            "realtime:\n  path: /ws\n  auth: {{secret: \"{}\", require: true}}\n",
            realtime::SECRET
        ));
    let s = spec.start().await;
    until_ready(&s).await;
    assert!(events::group_exists(&redis, "mesh:events:{trade.executed}", "orders").await);

    let wanted: BTreeSet<String> = dashboard_names().into_iter().chain(alert_names()).collect();
    let telemetry = s.addresses.telemetry;
    let scrape = || async move {
        let answer = get_host(telemetry, "x", "/metrics").await;
        assert_eq!(answer.status, 200);
        String::from_utf8(answer.body.to_vec()).expect("UTF-8 /metrics")
    };
    // The subscription's and the hub's series appear when they start, a moment after
    // readiness: wait (bounded) for all, then report what is missing.
    let missing = |text: &str| {
        let (families, histograms) = exported(text);
        wanted
            .iter()
            .filter(|name| !families.contains(family(name, &histograms)))
            .cloned()
            .collect::<Vec<_>>()
    };
    let all_there = eventually(Duration::from_secs(10), || async {
        missing(&scrape().await).is_empty()
    })
    .await;
    let text = scrape().await;
    assert!(
        all_there,
        "named by the dashboard or the alert rules but not in /metrics of an idle sidecar: {:?}",
        missing(&text)
    );

    // No traffic went through: every seeded series is at 0 (docs/metrics.md).
    for series in [
        r#"meshlet_requests_total{destination="inventory",direction="outbound",method="GET",status="200"}"#,
        r#"meshlet_requests_total{destination="orders",direction="inbound",method="GET",status="200"}"#,
        r#"meshlet_errors_total{code="upstream_unavailable",destination="inventory",direction="outbound"}"#,
        r#"meshlet_retries_total{destination="inventory",reason="connect-failure"}"#,
        r#"meshlet_degraded_total{destination="inventory",mode="stale"}"#,
        r#"meshlet_breaker_transitions_total{destination="inventory",to="open"}"#,
        r#"meshlet_faults_total{destination="inventory",kind="abort"}"#,
        r#"meshlet_rate_limited_total{destination="inventory",direction="outbound"}"#,
        r#"meshlet_request_duration_seconds_count{destination="inventory",direction="outbound"}"#,
        r#"meshlet_events_dead_letters_total{reason="exhausted",type="trade.executed"}"#,
        r#"meshlet_realtime_slow_clients_dropped_total"#,
    ] {
        let line = text
            .lines()
            .find(|l| l.strip_prefix(series).is_some_and(|v| v.starts_with(' ')))
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"));
        assert_eq!(line, format!("{series} 0"));
    }
    assert_eq!(app.count(), 0, "no request reached the app");
    assert_eq!(inventory.hits(), 0, "no request reached the destination");
}

#[test]
fn docs_metrics_lists_every_family_of_the_dashboard_and_the_alerts() {
    // Families, not series: a histogram's `_bucket` is documented under its family's name.
    let strip = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .map(str::to_owned)
            .unwrap_or_else(|| name.to_owned())
    };
    let undocumented: Vec<String> = dashboard_names()
        .into_iter()
        .chain(alert_names())
        .map(|n| strip(&n))
        .filter(|family| !METRICS_DOC.contains(&format!("`{family}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
}
