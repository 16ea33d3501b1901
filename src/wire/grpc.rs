//! gRPC on the wire, as far as meshlet looks: whether a request is gRPC, the `grpc-status`
//! of trailers (or of a trailers-only answer), a client's `grpc-timeout`, and the
//! trailers-only answer meshlet gives a gRPC client instead of JSON (docs/errors.md).

use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response};

use super::answer::{AnswerBody, X_MESH_ERROR};

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether a request is gRPC (its errors must be gRPC statuses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` in a header map (trailers, or the headers of a trailers-only answer).
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A client's `grpc-timeout` (e.g. `250m`, `5S`), which caps meshlet's own budget.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (value, unit) = raw.split_at(raw.len().checked_sub(1)?);
    // Digits only: `u64::from_str` would also take a leading `+`, which the spec's
    // TimeoutValue does not have (found by fuzzing).
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = value.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A trailers-only gRPC answer: `grpc-status` `status`, and the meshlet error `code` as
/// both `grpc-message` and `x-mesh-error`.
pub fn trailers_only(status: u8, code: &'static str) -> Response<AnswerBody> {
    let mut resp = Response::new(AnswerBody::empty());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(status)));
    // The code names are plain ASCII: no percent-encoding needed.
    h.insert(GRPC_MESSAGE.clone(), HeaderValue::from_static(code));
    h.insert(X_MESH_ERROR, HeaderValue::from_static(code));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut h = HeaderMap::new();
        for (raw, want) in [
            ("250m", Duration::from_millis(250)),
            ("5S", Duration::from_secs(5)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("7u", Duration::from_micros(7)),
            ("9n", Duration::from_nanos(9)),
        ] {
            h.insert(&GRPC_TIMEOUT, HeaderValue::from_static(raw));
            assert_eq!(timeout(&h), Some(want), "{raw}");
        }
        // `+5999000n`: found by fuzzing (fuzz target grpc_values).
        for bad in ["", "5", "5x", "m", "-1S", "+5S", "+5999000n", " 5S"] {
            h.insert(&GRPC_TIMEOUT, HeaderValue::from_static(bad));
            assert_eq!(timeout(&h), None, "{bad:?}");
        }
    }
}
