//! `meshlet tap`: one line per request the running meshlet answers, live, from the NDJSON
//! stream of `GET /v1/tap` (docs/operations.md). Lines the meshlet skipped (over `--rate`,
//! or this reader too slow) arrive as `{"dropped": N}` and are shown as a dimmed note. It
//! runs until Ctrl-C, or until the reader of its output goes away (`| head`).

use std::io::Write as _;
use std::net::SocketAddr;

use http_body_util::BodyExt;
use serde::Deserialize;

use super::http::{self, Lines, WAIT};
use super::stat::{clock_time, latency};
use super::term::{Paint, Term};
use super::{reader_gone, OperatorError};
use crate::control::shutdown::signalled;

/// The most lines per second `--rate` may ask for (the server's cap).
pub const MAX_RATE: u32 = 1000;

/// One line of the tap stream: a request, or a count of skipped ones.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TapLine {
    /// Lines skipped since the last one.
    Dropped {
        /// How many.
        dropped: u64,
    },
    /// An answered request.
    Request(TapRequest),
}

/// An answered request.
#[derive(Debug, Deserialize)]
pub struct TapRequest {
    /// RFC 3339 time of the answer.
    #[serde(default)]
    pub time: String,
    /// `outbound` or `inbound`.
    #[serde(default)]
    pub direction: String,
    /// Destination name.
    pub destination: String,
    /// HTTP method.
    #[serde(default)]
    pub method: String,
    /// Path, without the query.
    #[serde(default)]
    pub path: String,
    /// Answer status.
    #[serde(default)]
    pub status: u16,
    /// Time to the answer's head.
    #[serde(default)]
    pub latency_ms: f64,
    /// Attempts made (1 = no retry).
    #[serde(default)]
    pub attempts: u32,
    /// The upstream of the last attempt; `None` when none was tried.
    #[serde(default)]
    pub upstream: Option<String>,
}

/// `meshlet tap [--api ADDR] [--service S] [--rate N]`.
pub async fn run(
    api: SocketAddr,
    service: Option<&str>,
    rate: Option<u32>,
) -> Result<(), OperatorError> {
    let term = Term::stdout();
    let path = tap_path(service, rate);
    let resp = http::get(api, &path, WAIT)
        .await
        .map_err(|source| OperatorError::Api { addr: api, source })?;
    if !resp.status().is_success() {
        let source = http::body(resp, WAIT)
            .await
            .err()
            .unwrap_or_else(|| http::HttpError::Failed("no stream".to_owned()));
        return Err(OperatorError::Api { addr: api, source });
    }
    let mut body = resp.into_body();
    let mut lines = Lines::default();
    let stream = async {
        loop {
            let frame = match body.frame().await {
                None => return Err(OperatorError::StreamEnded(api)),
                Some(Err(e)) => {
                    return Err(OperatorError::Api {
                        addr: api,
                        source: http::HttpError::Failed(e.to_string()),
                    })
                }
                Some(Ok(frame)) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let mut out = std::io::stdout().lock();
            for line in lines.feed(&data) {
                let shown = render_line(&line, term);
                match writeln!(out, "{shown}") {
                    Err(e) if reader_gone(&e) => return Ok(()),
                    Err(e) => return Err(e.into()),
                    Ok(()) => {}
                }
            }
            match out.flush() {
                Err(e) if reader_gone(&e) => return Ok(()),
                other => other?,
            }
        }
    };
    tokio::select! {
        result = stream => result,
        () = signalled() => Ok(()),
    }
}

/// `/v1/tap` with its query (`service` percent-encoded where it has to be).
fn tap_path(service: Option<&str>, rate: Option<u32>) -> String {
    let mut query = Vec::new();
    if let Some(s) = service {
        query.push(format!("service={}", encode(s)));
    }
    if let Some(r) = rate {
        query.push(format!("rate={r}"));
    }
    if query.is_empty() {
        "/v1/tap".to_owned()
    } else {
        format!("/v1/tap?{}", query.join("&"))
    }
}

/// Percent-encodes everything but unreserved characters (service names are
/// `[A-Za-z0-9._-]` anyway; anything else must not break the query).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One stream line as shown: a request line, the dimmed note of a `dropped` line, or an
/// unknown line as it came (a newer meshlet's).
pub fn render_line(line: &str, term: Term) -> String {
    match serde_json::from_str::<TapLine>(line) {
        Ok(TapLine::Dropped { dropped }) => term.paint(
            Paint::Dim,
            &format!("… {dropped} request(s) not shown (over --rate, or this reader was slow)"),
        ),
        Ok(TapLine::Request(r)) => request_line(&r, term),
        Err(_) => line.to_owned(),
    }
}

fn request_line(r: &TapRequest, term: Term) -> String {
    let direction = match r.direction.as_str() {
        "outbound" => "out",
        "inbound" => "in",
        other => other,
    };
    let status = format!("{}", r.status);
    let status_paint = match r.status {
        500.. => Paint::Red,
        400..500 => Paint::Yellow,
        200..300 => Paint::Green,
        _ => Paint::Plain,
    };
    let attempts = if r.attempts == 1 {
        "1 attempt ".to_owned()
    } else {
        format!("{} attempts", r.attempts)
    };
    let attempts = if r.attempts > 1 {
        term.paint(Paint::Yellow, &attempts)
    } else {
        attempts
    };
    format!(
        "{}  {:<3}  {:<16}  {:<7} {:<24}  {}  {:>7}  {}  {}",
        term.paint(Paint::Dim, clock_time(&r.time)),
        direction,
        r.destination,
        r.method,
        r.path,
        term.paint(status_paint, &status),
        latency(r.latency_ms),
        attempts,
        r.upstream.as_deref().unwrap_or("-"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_names_time_destination_method_path_status_latency_attempts_upstream() {
        let line = r#"{"time":"2026-12-06T17:00:00.123Z","direction":"outbound","destination":"inventory","method":"GET","path":"/items","status":200,"latency_ms":1.234,"attempts":1,"upstream":"127.0.0.1:9001","request_id":"r"}"#;
        assert_eq!(
            render_line(line, Term::PLAIN),
            "17:00:00.123  out  inventory         GET     /items                    200    1.2ms  1 attempt   127.0.0.1:9001"
        );
        let line = r#"{"time":"2026-12-06T17:00:00.5Z","direction":"inbound","destination":"orders","method":"POST","path":"/x","status":503,"latency_ms":0.5,"attempts":3,"upstream":null}"#;
        let shown = render_line(line, Term::PLAIN);
        assert!(shown.contains("  in   orders  "), "{shown}");
        assert!(shown.ends_with("503   0.50ms  3 attempts  -"), "{shown}");
    }

    #[test]
    fn dropped_lines_are_a_note_and_unknown_lines_pass_through() {
        let note = render_line(r#"{"dropped": 17}"#, Term::PLAIN);
        assert!(note.contains("17 request(s) not shown"), "{note}");
        let dim = render_line(
            r#"{"dropped": 2}"#,
            Term {
                interactive: true,
                colour: true,
            },
        );
        assert!(dim.starts_with("\x1b[2m"), "{dim:?}");
        assert_eq!(render_line("not json", Term::PLAIN), "not json");
    }

    #[test]
    fn the_query_carries_service_and_rate() {
        assert_eq!(tap_path(None, None), "/v1/tap");
        assert_eq!(
            tap_path(Some("inventory"), Some(5)),
            "/v1/tap?service=inventory&rate=5"
        );
        assert_eq!(tap_path(Some("a b&c"), None), "/v1/tap?service=a%20b%26c");
    }
}
