//! W3C Trace Context (`traceparent`): the trace id is kept across hops, each hop gets a new
//! span id, the sampled flag and `tracestate` pass on, and a request without a valid
//! `traceparent` starts a new trace.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

const HEX: &[u8; 16] = b"0123456789abcdef";

/// This hop's trace context: the `traceparent` sent on (trace id, this hop's new span id,
/// flags) and the span id it continues, kept as text for logs and span export.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    sent: [u8; 55],
    parent: Option<[u8; 16]>,
}

impl TraceContext {
    fn text(bytes: &[u8]) -> &str {
        // Only ever filled with ASCII hex digits.
        std::str::from_utf8(bytes).unwrap_or("")
    }

    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> &str {
        Self::text(&self.sent[3..35])
    }

    /// This hop's span id (16 hex digits), the parent of the next hop.
    pub fn span_id(&self) -> &str {
        Self::text(&self.sent[36..52])
    }

    /// The span this hop continues, when the request came with a `traceparent`.
    pub fn parent_span_id(&self) -> Option<&str> {
        self.parent.as_ref().map(|p| Self::text(p))
    }

    /// Whether the trace is sampled (flag bit 0).
    pub fn sampled(&self) -> bool {
        // The low bit of the last hex digit: odd digits.
        matches!(
            self.sent[54],
            b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f'
        )
    }
}

impl std::fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::text(&self.sent))
    }
}

fn hex_fill(out: &mut [u8]) {
    let mut n = fastrand::u128(..);
    for (i, b) in out.iter_mut().enumerate() {
        if i == 32 {
            n = fastrand::u128(..);
        }
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Continues the request's trace with a new span id (or starts one, sampled with
/// probability `sample`), writes the new `traceparent` and returns this hop's context.
pub fn continue_trace(headers: &mut HeaderMap, sample: f64) -> TraceContext {
    // 00-<32 trace>-<16 span>-<2 flags>
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let incoming = headers.get(&TRACEPARENT).map(HeaderValue::as_bytes);
    let valid = incoming.filter(|v| {
        v.len() >= 55
            && v[2] == b'-'
            && v[35] == b'-'
            && v[52] == b'-'
            && &v[..2] != b"ff"
            && is_lower_hex(&v[..2])
            && is_lower_hex(&v[3..35])
            && is_lower_hex(&v[36..52])
            && is_lower_hex(&v[53..55])
            && v[3..35].iter().any(|b| *b != b'0')
    });
    let mut parent = None;
    match valid {
        Some(v) => {
            out[3..35].copy_from_slice(&v[3..35]);
            out[53..55].copy_from_slice(&v[53..55]);
            let mut p = [0u8; 16];
            p.copy_from_slice(&v[36..52]);
            parent = Some(p);
        }
        None => {
            if sample < 1.0 && fastrand::f64() >= sample {
                out[54] = b'0';
            }
            hex_fill(&mut out[3..35]);
            // A fresh trace must not be declared invalid (all zeros).
            if out[3..35].iter().all(|b| *b == b'0') {
                out[34] = b'1';
            }
            if headers.contains_key(&TRACESTATE) {
                // tracestate without a valid traceparent is meaningless (W3C §3.3).
                headers.remove(&TRACESTATE);
            }
        }
    }
    hex_fill(&mut out[36..52]);
    if out[36..52].iter().all(|b| *b == b'0') {
        out[51] = b'1';
    }
    // Hex digits and dashes only: always a valid header value.
    if let Ok(v) = HeaderValue::from_bytes(&out) {
        headers.insert(TRACEPARENT.clone(), v);
    }
    TraceContext { sent: out, parent }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_traces_are_sampled_at_the_configured_rate() {
        let sampled = (0..1000)
            .filter(|_| continue_trace(&mut HeaderMap::new(), 0.1).sampled())
            .count();
        assert!((40..=180).contains(&sampled), "{sampled} of 1000 at 10%");
        assert!(!continue_trace(&mut HeaderMap::new(), 0.0).sampled());
    }

    #[test]
    fn keeps_trace_id_and_flags_with_a_new_span() {
        let mut h = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        h.insert("traceparent", HeaderValue::from_static(parent));
        h.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let id = continue_trace(&mut h, 1.0);
        assert_eq!(id.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(id.parent_span_id(), Some("00f067aa0ba902b7"));
        assert!(!id.sampled(), "flags 00 kept");
        let out = h.get("traceparent").unwrap().to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-00"), "sampled flag kept");
        assert_ne!(&out[36..52], "00f067aa0ba902b7", "new span id");
        assert_eq!(h.get("tracestate").unwrap(), "vendor=x");
    }

    #[test]
    fn starts_a_trace_when_none_or_invalid() {
        for bad in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(b) = bad {
                h.insert("traceparent", HeaderValue::from_static(b));
            }
            let id = continue_trace(&mut h, 1.0);
            let out = h.get("traceparent").unwrap().to_str().unwrap();
            assert_eq!(out.len(), 55);
            assert_eq!(&out[3..35], id.trace_id());
            assert_eq!(&out[36..52], id.span_id());
            assert_ne!(id.trace_id(), "00000000000000000000000000000000");
            assert!(id.sampled() && id.parent_span_id().is_none());
        }
    }
}
