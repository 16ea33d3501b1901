//! Request ids, made one way for the whole of meshlet: the `x-request-id` a request came
//! with when it is usable, else 128 random bits as 32 lower-case hex digits. The proxy, the
//! local API, events and the hub all call [`ensure`] or [`of`].

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id kept from a client; a longer one is replaced.
const MAX_LEN: usize = 128;

/// The request's id: the one it came with, else a fresh one, which is set on `headers`.
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = usable(headers) {
        return v.clone();
    }
    let v = new();
    headers.insert(X_REQUEST_ID.clone(), v.clone());
    v
}

/// The request's id as text, without touching the request: the one it came with, else a
/// fresh one (for answers that echo it in their JSON body).
pub fn of(headers: &HeaderMap) -> String {
    match usable(headers).and_then(|v| v.to_str().ok()) {
        Some(id) => id.to_owned(),
        None => new().to_str().unwrap_or_default().to_owned(),
    }
}

fn usable(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= MAX_LEN)
}

/// 128 random bits as 32 lower-case hex digits, without a heap allocation.
pub fn new() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    // 32 hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_id_is_kept_and_a_missing_or_oversized_one_replaced() {
        let mut h = HeaderMap::new();
        let made = ensure(&mut h);
        assert_eq!(made.len(), 32);
        assert_eq!(h.get(&X_REQUEST_ID), Some(&made));
        assert_eq!(ensure(&mut h), made, "kept once set");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(of(&h), "abc");
        h.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert_eq!(of(&h).len(), 32, "an oversized id is replaced");
        assert_ne!(new(), new());
    }
}
