//! W3C Trace Context (`traceparent`): the trace id is kept across hops, each hop gets a new
//! span id, the sampled flag and `tracestate` pass on, and a request without a valid
//! `traceparent` starts a new trace.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A trace id (32 hex digits) kept as text, ready for logs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    /// The hex text.
    pub fn as_str(&self) -> &str {
        // Only ever filled with ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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

/// Continues the request's trace with a new span id (or starts one), writes the new
/// `traceparent` and returns the trace id.
pub fn continue_trace(headers: &mut HeaderMap) -> TraceId {
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
    match valid {
        Some(v) => {
            out[3..35].copy_from_slice(&v[3..35]);
            out[53..55].copy_from_slice(&v[53..55]);
        }
        None => {
            hex_fill(&mut out[3..35]);
            // A fresh trace must not be declared invalid (all zeros).
            if out[3..35].iter().all(|b| *b == b'0') {
                out[34] = b'1';
            }
            if headers.contains_key("tracestate") {
                // tracestate without a valid traceparent is meaningless (W3C §3.3).
                headers.remove("tracestate");
            }
        }
    }
    hex_fill(&mut out[36..52]);
    if out[36..52].iter().all(|b| *b == b'0') {
        out[51] = b'1';
    }
    let mut trace = [0u8; 32];
    trace.copy_from_slice(&out[3..35]);
    // Hex digits and dashes only: always a valid header value.
    if let Ok(v) = HeaderValue::from_bytes(&out) {
        headers.insert(TRACEPARENT.clone(), v);
    }
    TraceId(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_trace_id_and_flags_with_a_new_span() {
        let mut h = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        h.insert("traceparent", HeaderValue::from_static(parent));
        h.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let id = continue_trace(&mut h);
        assert_eq!(id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
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
            let id = continue_trace(&mut h);
            let out = h.get("traceparent").unwrap().to_str().unwrap();
            assert_eq!(out.len(), 55);
            assert_eq!(&out[3..35], id.as_str());
            assert_ne!(id.as_str(), "00000000000000000000000000000000");
        }
    }
}
