//! `meshlet stat`: the running meshlet's `GET /v1/stats` as a table, one row per
//! destination (like `linkerd viz stat`), plus an events line, a hub line and the newest
//! errors when there are any. On a terminal it redraws every second until Ctrl-C; piped,
//! or with `--once`, it prints once and exits.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::http;
use super::term::{Align, Cell, Paint, Table, Term, CLEAR_SCREEN};
use super::{reader_gone, OperatorError};
use crate::control::shutdown::signalled;

/// How often the terminal view redraws.
const REFRESH: Duration = Duration::from_secs(1);

/// How many of `recent_errors` the table shows.
const ERRORS_SHOWN: usize = 3;

/// The body of `GET /v1/stats` (docs/operations.md). Fields this version does not know are
/// ignored and missing ones take their defaults, so an older or newer meshlet still shows.
#[derive(Debug, Default, Deserialize)]
pub struct Stats {
    /// `service.name` of the meshlet asked.
    #[serde(default)]
    pub service: String,
    /// Seconds since it started.
    #[serde(default)]
    pub uptime_seconds: f64,
    /// The window of the rates and latencies.
    #[serde(default)]
    pub window_seconds: f64,
    /// One per destination, outbound and inbound.
    #[serde(default)]
    pub destinations: Vec<DestinationStats>,
    /// `None` when events are off.
    #[serde(default)]
    pub events: Option<EventsStats>,
    /// `None` when the hub is off.
    #[serde(default)]
    pub hub: Option<HubStats>,
    /// Newest first.
    #[serde(default)]
    pub recent_errors: Vec<RecentError>,
}

/// One destination's row.
#[derive(Debug, Default, Deserialize)]
pub struct DestinationStats {
    /// Service name.
    #[serde(default)]
    pub name: String,
    /// `outbound` or `inbound`.
    #[serde(default)]
    pub direction: String,
    /// Requests per second over the window.
    #[serde(default)]
    pub rps: f64,
    /// Share of answers that are not 5xx; `None` without requests in the window.
    #[serde(default)]
    pub success_rate: Option<f64>,
    /// Median latency; `None` without requests in the window.
    #[serde(default)]
    pub p50_ms: Option<f64>,
    /// 99th percentile latency.
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// Answers since start.
    #[serde(default)]
    pub requests_total: u64,
    /// Retries since start.
    #[serde(default)]
    pub retries_total: u64,
    /// Injected faults since start.
    #[serde(default)]
    pub faults_total: u64,
    /// Requests refused by a rate limit since start.
    #[serde(default)]
    pub rate_limited_total: u64,
    /// `closed`, `open` or `half_open`.
    #[serde(default)]
    pub breaker: String,
    /// Endpoint counts.
    #[serde(default)]
    pub endpoints: EndpointCounts,
}

/// Endpoints by state.
#[derive(Debug, Default, Deserialize)]
pub struct EndpointCounts {
    /// Taking requests.
    #[serde(default)]
    pub up: u64,
    /// Ejected by outlier detection.
    #[serde(default)]
    pub ejected: u64,
    /// Draining in the registry.
    #[serde(default)]
    pub draining: u64,
}

/// The events section.
#[derive(Debug, Default, Deserialize)]
pub struct EventsStats {
    /// One per subscribed type.
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
}

/// One subscription's backlog.
#[derive(Debug, Default, Deserialize)]
pub struct Subscription {
    /// Event type.
    #[serde(rename = "type", default)]
    pub event_type: String,
    /// Delivered, not yet acknowledged.
    #[serde(default)]
    pub pending: u64,
    /// Not yet delivered.
    #[serde(default)]
    pub lag: u64,
    /// Entries in the dead-letter stream.
    #[serde(default)]
    pub dead_letters: u64,
}

/// The hub section.
#[derive(Debug, Default, Deserialize)]
pub struct HubStats {
    /// Open client connections.
    #[serde(default)]
    pub connections: u64,
    /// Rooms with members here.
    #[serde(default)]
    pub rooms: u64,
}

/// One of the newest errors meshlet answered.
#[derive(Debug, Default, Deserialize)]
pub struct RecentError {
    /// RFC 3339 time.
    #[serde(default)]
    pub time: String,
    /// Destination name.
    #[serde(default)]
    pub destination: String,
    /// Error code (docs/errors.md).
    #[serde(default)]
    pub code: String,
    /// HTTP status.
    #[serde(default)]
    pub status: u16,
    /// Why.
    #[serde(default)]
    pub message: String,
}

/// `meshlet stat [--api ADDR] [--once]`.
pub async fn run(api: SocketAddr, once: bool) -> Result<(), OperatorError> {
    let term = Term::stdout();
    if once || !term.interactive {
        let stats = fetch(api).await?;
        print(&render(&stats, term))?;
        return Ok(());
    }
    let live = async {
        loop {
            // On a terminal a failed ask is shown in place of the table, and asked again.
            let screen = match fetch(api).await {
                Ok(stats) => render(&stats, term),
                Err(e) => format!("{}\n", term.paint(Paint::Red, &format!("meshlet: {e}"))),
            };
            if !print(&format!("{CLEAR_SCREEN}{screen}"))? {
                return Ok(());
            }
            tokio::time::sleep(REFRESH).await;
        }
    };
    tokio::select! {
        result = live => result,
        () = signalled() => Ok(()),
    }
}

/// Asks the meshlet at `api` for its stats.
pub async fn fetch(api: SocketAddr) -> Result<Stats, OperatorError> {
    let body = http::get_body(api, "/v1/stats")
        .await
        .map_err(|source| OperatorError::Api { addr: api, source })?;
    serde_json::from_slice(&body).map_err(|e| OperatorError::Unexpected {
        addr: api,
        path: "/v1/stats",
        why: e.to_string(),
    })
}

/// Writes `text` to stdout; `false` when its reader has gone (then there is no one to
/// redraw for).
fn print(text: &str) -> Result<bool, OperatorError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if reader_gone(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The whole view as text (each line ending in `\n`).
pub fn render(stats: &Stats, term: Term) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  up {}, rates over the last {}",
        term.paint(Paint::Bold, &stats.service),
        duration(stats.uptime_seconds),
        duration(stats.window_seconds)
    );
    let mut table = Table::new(vec![
        ("NAME", Align::Left),
        ("DIR", Align::Left),
        ("RPS", Align::Right),
        ("SUCCESS", Align::Right),
        ("P50", Align::Right),
        ("P99", Align::Right),
        ("BREAKER", Align::Left),
        ("ENDPOINTS", Align::Right),
        ("RETRIES", Align::Right),
        ("FAULTS", Align::Right),
        ("LIMITED", Align::Right),
    ]);
    let mut rows: Vec<&DestinationStats> = stats.destinations.iter().collect();
    // Outbound first (what this app calls), then inbound (who calls it); by name within.
    rows.sort_by(|a, b| {
        (a.direction != "outbound", &a.name).cmp(&(b.direction != "outbound", &b.name))
    });
    for d in rows {
        table.row(destination_row(d));
    }
    out.push_str(&table.render(term));
    if stats.destinations.is_empty() {
        out.push_str(&term.paint(Paint::Dim, "(no destinations yet)"));
        out.push('\n');
    }
    if let Some(events) = &stats.events {
        let subscriptions: Vec<String> = events
            .subscriptions
            .iter()
            .map(|s| {
                format!(
                    "{} pending {} lag {} dead letters {}",
                    s.event_type, s.pending, s.lag, s.dead_letters
                )
            })
            .collect();
        let text = if subscriptions.is_empty() {
            "on, no subscriptions".to_owned()
        } else {
            subscriptions.join("; ")
        };
        let _ = writeln!(out, "{}  {text}", term.paint(Paint::Bold, "events"));
    }
    if let Some(hub) = &stats.hub {
        let _ = writeln!(
            out,
            "{}     {} connection{}, {} room{}",
            term.paint(Paint::Bold, "hub"),
            hub.connections,
            plural(hub.connections),
            hub.rooms,
            plural(hub.rooms)
        );
    }
    if !stats.recent_errors.is_empty() {
        let _ = writeln!(out, "{}", term.paint(Paint::Bold, "recent errors"));
        for e in stats.recent_errors.iter().take(ERRORS_SHOWN) {
            let _ = writeln!(
                out,
                "  {}  {}  {} {}  {}",
                clock_time(&e.time),
                e.destination,
                term.paint(Paint::Red, &e.status.to_string()),
                e.code,
                e.message
            );
        }
    }
    out
}

fn destination_row(d: &DestinationStats) -> Vec<Cell> {
    let direction = match d.direction.as_str() {
        "outbound" => "out",
        "inbound" => "in",
        other => other,
    };
    let success = match d.success_rate {
        None => Cell::new("-", Paint::Dim),
        Some(rate) => {
            // Red under 99%, as on the admin page (docs/operations.md).
            let paint = if rate < 0.99 {
                Paint::Red
            } else {
                Paint::Green
            };
            Cell::new(format!("{:.2}%", rate * 100.0), paint)
        }
    };
    let breaker = match d.breaker.as_str() {
        "closed" => Cell::plain("closed"),
        "open" => Cell::new("open", Paint::Red),
        "half_open" => Cell::new("half_open", Paint::Yellow),
        other => Cell::plain(other),
    };
    let e = &d.endpoints;
    let endpoints_paint = if e.up == 0 {
        Paint::Red
    } else if e.ejected > 0 || e.draining > 0 {
        Paint::Yellow
    } else {
        Paint::Plain
    };
    vec![
        Cell::plain(d.name.as_str()),
        Cell::plain(direction),
        Cell::plain(format!("{:.1}", d.rps)),
        success,
        latency_cell(d.p50_ms),
        latency_cell(d.p99_ms),
        breaker,
        Cell::new(
            format!("{}/{}/{}", e.up, e.ejected, e.draining),
            endpoints_paint,
        ),
        Cell::plain(d.retries_total.to_string()),
        Cell::plain(d.faults_total.to_string()),
        Cell::plain(d.rate_limited_total.to_string()),
    ]
}

fn latency_cell(ms: Option<f64>) -> Cell {
    match ms {
        None => Cell::new("-", Paint::Dim),
        Some(ms) => Cell::plain(latency(ms)),
    }
}

/// A latency in ms, to about three significant digits: `0.42ms`, `4.8ms`, `480ms`, `1.25s`.
pub fn latency(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2}ms")
    } else if ms < 100.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

/// Seconds as `45s`, `2m3s`, `5h2m`, `3d4h`.
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The time of day of an RFC 3339 time (`2026-12-06T17:00:00.123Z` → `17:00:00.123`);
/// anything else as it is.
pub fn clock_time(time: &str) -> &str {
    match time.split_once('T') {
        Some((_, rest)) => rest.strip_suffix('Z').unwrap_or(rest),
        None => time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "service": "orders", "uptime_seconds": 123, "window_seconds": 10,
      "destinations": [
        {"name": "orders", "direction": "inbound", "rps": 3, "success_rate": null,
         "p50_ms": null, "p99_ms": null, "requests_total": 9, "retries_total": 0,
         "faults_total": 0, "rate_limited_total": 2, "breaker": "closed",
         "endpoints": {"up": 1, "ejected": 0, "draining": 0}},
        {"name": "inventory", "direction": "outbound",
         "rps": 12.5, "success_rate": 0.99, "p50_ms": 1.2, "p99_ms": 4.8,
         "requests_total": 1234, "retries_total": 3, "faults_total": 0, "rate_limited_total": 0,
         "breaker": "open", "endpoints": {"up": 2, "ejected": 0, "draining": 1},
         "a_field_from_a_newer_meshlet": true}
      ],
      "events": {"subscriptions": [{"type": "trade.executed", "pending": 0, "lag": 4, "dead_letters": 1}]},
      "hub": {"connections": 3, "rooms": 1},
      "recent_errors": [{"time": "2026-12-06T17:00:00.123Z", "destination": "inventory",
        "code": "circuit_open", "status": 503, "message": "breaker open", "request_id": "r1"}]
    }"#;

    #[test]
    fn the_documented_stats_render_as_a_table() {
        let stats: Stats = serde_json::from_str(SAMPLE).unwrap();
        let text = render(&stats, Term::PLAIN);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "orders  up 2m3s, rates over the last 10s");
        assert_eq!(
            lines[1],
            "NAME       DIR   RPS  SUCCESS    P50    P99  BREAKER  ENDPOINTS  RETRIES  FAULTS  LIMITED"
        );
        assert_eq!(
            lines[2],
            "inventory  out  12.5   99.00%  1.2ms  4.8ms  open         2/0/1        3       0        0"
        );
        assert!(lines[3].starts_with("orders     in    3.0"), "{text}");
        assert!(lines[3].contains("  -      -      -  closed"), "{text}");
        assert_eq!(
            lines[4],
            "events  trade.executed pending 0 lag 4 dead letters 1"
        );
        assert_eq!(lines[5], "hub     3 connections, 1 room");
        assert_eq!(lines[6], "recent errors");
        assert_eq!(
            lines[7],
            "  17:00:00.123  inventory  503 circuit_open  breaker open"
        );
        assert!(!text.contains('\x1b'), "plain text has no escapes");
    }

    #[test]
    fn off_sections_and_an_empty_table_say_so() {
        let stats: Stats = serde_json::from_str(
            r#"{"service":"a","uptime_seconds":5,"window_seconds":10,"destinations":[],"events":null,"hub":null,"recent_errors":[]}"#,
        )
        .unwrap();
        let text = render(&stats, Term::PLAIN);
        assert!(text.contains("(no destinations yet)"), "{text}");
        assert!(!text.contains("events") && !text.contains("hub"), "{text}");
    }

    #[test]
    fn colour_marks_an_open_breaker() {
        let stats: Stats = serde_json::from_str(SAMPLE).unwrap();
        let coloured = render(
            &stats,
            Term {
                interactive: true,
                colour: true,
            },
        );
        assert!(coloured.contains("\x1b[31mopen\x1b[0m"), "{coloured:?}");
    }

    #[test]
    fn latencies_and_durations_read_well() {
        assert_eq!(latency(0.4213), "0.42ms");
        assert_eq!(latency(4.81), "4.8ms");
        assert_eq!(latency(480.2), "480ms");
        assert_eq!(latency(1250.0), "1.25s");
        assert_eq!(duration(45.0), "45s");
        assert_eq!(duration(3725.0), "1h2m");
        assert_eq!(duration(-1.0), "0s");
        assert_eq!(clock_time("2026-12-06T17:00:00.123Z"), "17:00:00.123");
        assert_eq!(clock_time("garbage"), "garbage");
    }
}
