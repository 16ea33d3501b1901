//! The access line's JSON encoded by hand (docs/metrics.md, "Access log"): byte for byte
//! the object tracing-subscriber's JSON formatter writes for the `meshlet::access` event
//! (`telemetry::logging`, flattened, no span), for a small share of its instructions
//! (docs/performance.md, "Round two"). Same keys in the same order (`timestamp`, `level`,
//! the event's fields as [`Answered::write`] records them, `target`), same value types,
//! strings escaped as serde_json escapes them, the timestamp as RFC 3339 in UTC with
//! microseconds. A test holds the two encoders to the same bytes.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Answered;

/// Appends `a`'s access line, `\n` included, as written at `now`.
pub(super) fn encode(out: &mut Vec<u8>, a: &Answered, now: SystemTime) {
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"direction\":");
    string(out, a.direction());
    out.extend_from_slice(b",\"destination\":");
    string(out, a.destination());
    out.extend_from_slice(b",\"method\":");
    string(out, a.method.as_str());
    out.extend_from_slice(b",\"path\":");
    string(out, a.path());
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(numbers.format(a.status).as_bytes());
    out.extend_from_slice(b",\"duration_us\":");
    out.extend_from_slice(numbers.format(a.duration_us()).as_bytes());
    out.extend_from_slice(b",\"upstream\":");
    string(out, a.upstream());
    out.extend_from_slice(b",\"attempts\":");
    out.extend_from_slice(numbers.format(a.attempts).as_bytes());
    out.extend_from_slice(b",\"bytes_in\":");
    out.extend_from_slice(numbers.format(a.bytes_in).as_bytes());
    out.extend_from_slice(b",\"bytes_out\":");
    out.extend_from_slice(numbers.format(a.bytes_out).as_bytes());
    out.extend_from_slice(if a.complete {
        b",\"complete\":true,\"request_id\":"
    } else {
        b",\"complete\":false,\"request_id\":"
    });
    string(out, a.request_id());
    out.extend_from_slice(b",\"trace_id\":");
    string(out, a.trace.trace_id());
    out.extend_from_slice(b",\"target\":\"meshlet::access\"}\n");
}

/// Appends `s` as a JSON string, escaped as serde_json does: `"` and `\` with a backslash,
/// the control characters below U+0020 as `\b \t \n \f \r` or `\u00xx`, everything else as
/// it is (UTF-8 included).
fn string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    // Paths, ids and names seldom hold anything to escape: words of 8 bytes are checked at
    // once, and the byte loop starts only at the first word that needs it.
    let mut plain = clean_prefix(bytes);
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    out.extend_from_slice(&bytes[..plain]);
    if plain == bytes.len() {
        out.push(b'"');
        return;
    }
    for (i, &b) in bytes.iter().enumerate().skip(plain) {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        out.extend_from_slice(short);
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

/// The length of `bytes`' longest prefix, in steps of 8 bytes (or all of it), in which no
/// byte needs escaping (a control character, `"` or `\`).
fn clean_prefix(bytes: &[u8]) -> usize {
    let mut clean = 0;
    let mut words = bytes.chunks_exact(8);
    for word in words.by_ref() {
        let mut le = [0u8; 8];
        le.copy_from_slice(word);
        if needs_escape(u64::from_le_bytes(le)) {
            return clean;
        }
        clean += 8;
    }
    // The last few bytes, padded with a byte that needs nothing, as one more word.
    let tail = words.remainder();
    let mut le = [b'a'; 8];
    le[..tail.len()].copy_from_slice(tail);
    if needs_escape(u64::from_le_bytes(le)) {
        clean
    } else {
        bytes.len()
    }
}

/// Whether any byte of `word` is below 0x20, `"` or `\`. The classic word-at-a-time tests
/// ("has a byte less than n", "has a zero byte" after an XOR): exact as to whether such a
/// byte exists, for any bytes, UTF-8 included.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) != 0
}

thread_local! {
    /// The last whole second formatted on this thread (`YYYY-MM-DDTHH:MM:SS`): lines of the
    /// same second only add their microseconds.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// Appends `now` as tracing-subscriber's `SystemTime` timer writes it:
/// `2026-12-06T17:00:00.125031Z` (UTC, microseconds, always 27 bytes before 10000 AD). A
/// time before 1970 is written as 1970's start (a clock that far off says nothing anyway).
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let second = SECOND.with(|cached| {
        let (at, text) = cached.get();
        if at == secs {
            return text;
        }
        let text = format_second(secs);
        cached.set((secs, text));
        text
    });
    out.extend_from_slice(&second);
    let mut micros = since.subsec_micros();
    let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    for digit in digits[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend_from_slice(&digits);
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second, in UTC.
fn format_second(secs: u64) -> [u8; 19] {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    let mut text = *b"0000-00-00T00:00:00";
    two_digits(&mut text[0..2], (year / 100) as u32);
    two_digits(&mut text[2..4], (year % 100) as u32);
    two_digits(&mut text[5..7], month);
    two_digits(&mut text[8..10], day);
    two_digits(&mut text[11..13], (in_day / 3600) as u32);
    two_digits(&mut text[14..16], (in_day / 60 % 60) as u32);
    two_digits(&mut text[17..19], (in_day % 60) as u32);
    text
}

fn two_digits(out: &mut [u8], n: u32) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use http::uri::{Authority, PathAndQuery};
    use http::{HeaderValue, Method};

    use super::*;
    use crate::identity::trace::continue_trace;
    use crate::telemetry::access::Watchers;
    use crate::telemetry::metrics::{Direction, Metrics};

    /// The bytes a tracing subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line tracing-subscriber's JSON formatter writes for `a`, configured as
    /// `telemetry::logging::init` configures it.
    fn through_tracing(a: &Answered) -> Vec<u8> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || a.log_with_tracing());
        let mut line = Vec::new();
        line.extend_from_slice(&captured.0.lock().unwrap());
        line
    }

    fn answered(destination: Option<&str>, path: &str, request_id: &[u8]) -> Answered {
        let metrics = Metrics::new();
        Answered {
            watchers: Watchers {
                log: true,
                taps: None,
            },
            destination: destination.map(|d| metrics.destination(Direction::Outbound, d)),
            method: Method::from_bytes(b"PATCH").unwrap(),
            target: Some(PathAndQuery::try_from(path).unwrap()),
            status: 503,
            latency: Duration::from_micros(1_234_567),
            attempts: 3,
            upstream: Some(Authority::from_static("10.0.3.7:8080")),
            request_id: HeaderValue::from_bytes(request_id).unwrap(),
            trace: continue_trace(&mut http::HeaderMap::new(), 1.0),
            bytes_in: 0,
            bytes_out: u64::MAX,
            complete: false,
        }
    }

    /// Both encoders, the same record: the same bytes (the timestamp is taken from the
    /// tracing line, parsed, and given to ours).
    fn assert_same(a: &Answered) {
        let theirs = through_tracing(a);
        let text = std::str::from_utf8(&theirs).unwrap();
        let stamp = text
            .strip_prefix("{\"timestamp\":\"")
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no timestamp first in {text}"));
        let at = humantime::parse_rfc3339(stamp).unwrap();
        let mut ours = Vec::new();
        encode(&mut ours, a, at);
        assert_eq!(std::str::from_utf8(&ours).unwrap(), text);
    }

    #[test]
    fn the_line_is_the_tracing_json_formatters_byte_for_byte() {
        assert_same(&answered(
            Some("inventory"),
            "/items/7",
            b"89d552c133a369dd",
        ));
        // Quotes, backslashes and a tab where they can occur; no destination yet.
        assert_same(&answered(None, "/a\"b\\c/%22\"\"", b"id \"q\" \\ \t end"));
        let mut plain = answered(Some("orders"), "/", b"");
        plain.complete = true;
        plain.upstream = None;
        plain.target = None;
        plain.bytes_out = 0;
        assert_same(&plain);
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut every: String = (0u8..=0x7f).map(char::from).collect();
        every.push_str("é ü ∂ 😀 \u{2028}");
        // Escapes in every position of an 8-byte word, after clean words and at the end.
        let mut placed = Vec::new();
        for at in 0..20 {
            for c in ['"', '\\', '\n', '\u{0}', '\u{1f}', '\u{7f}', 'é'] {
                let mut p: String = "abcdefgh/ijklmnop-qrst".chars().take(at).collect();
                p.push(c);
                p.push_str("tail1234");
                placed.push(p);
            }
        }
        let fixed = [every.as_str(), "", "plain", "\"", "\\", "\u{1f}x\u{0}"];
        for s in fixed.into_iter().chain(placed.iter().map(String::as_str)) {
            let mut ours = Vec::new();
            string(&mut ours, s);
            assert_eq!(
                std::str::from_utf8(&ours).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn a_word_needs_escaping_exactly_when_one_of_its_bytes_does() {
        for b in 0u8..=255 {
            let escaped = b < 0x20 || b == b'"' || b == b'\\';
            for at in 0..8 {
                for filler in [b'a', b'"' + 1, 0x20, 0x7f, 0x80, 0xff] {
                    let mut word = [filler; 8];
                    word[at] = b;
                    assert_eq!(
                        needs_escape(u64::from_le_bytes(word)),
                        escaped,
                        "byte {b:#x} at {at} among {filler:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn timestamps_match_rfc3339_with_microseconds_and_the_cached_second() {
        // From 1970 through 2200, a second every ~3.7 days, plus leap days and year ends.
        let mut secs: Vec<u64> = (0..20_000u64).map(|i| i * 318_781 + i % 86_400).collect();
        secs.extend([
            951_782_400,
            951_868_799,
            1_709_164_800,
            4_107_542_399,
            4_102_444_800,
        ]);
        for s in secs {
            for micros in [0, 7, 125_031, 999_999] {
                let at = UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(micros);
                let mut ours = Vec::new();
                timestamp(&mut ours, at);
                // Twice: the second time from this thread's cached second.
                timestamp(&mut ours, at + Duration::from_nanos(999));
                let want = humantime::format_rfc3339_micros(at).to_string();
                assert_eq!(std::str::from_utf8(&ours).unwrap(), format!("{want}{want}"));
            }
        }
    }
}
