//! The stale cache of `degrade: {stale: <age>}`: the last good GET 200 per path and query,
//! bounded in entries and bytes (oldest evicted first). Only destinations in stale mode
//! record into it, while the response streams to the caller.
//!
//! The cache is shared by every caller of the destination, so it keeps only answers meant
//! for anyone (docs/policy.md, "What is never kept"): [`is_personal`] rules out requests
//! that carry credentials, [`is_shareable`] answers that are per user or per variant.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, SET_COOKIE, VARY};
use http::HeaderMap;

/// Whether a request carries credentials (`Authorization` or `Cookie`): its answer may be
/// meant for that caller alone, so it is never kept, and no stale copy is served to it.
pub fn is_personal(request: &HeaderMap) -> bool {
    request.contains_key(AUTHORIZATION) || request.contains_key(COOKIE)
}

/// Whether an answer may be kept for every caller: no `Set-Cookie`, no `Cache-Control:
/// private` or `no-store`, and no `Vary` but `Accept-Encoding`. A header that is not text
/// counts against it.
pub fn is_shareable(response: &HeaderMap) -> bool {
    if response.contains_key(SET_COOKIE) {
        return false;
    }
    let forbidden_directive = |d: &str| {
        let name = d.split('=').next().unwrap_or("").trim();
        name.eq_ignore_ascii_case("private") || name.eq_ignore_ascii_case("no-store")
    };
    let other_vary = |field: &str| {
        let field = field.trim();
        !field.is_empty() && !field.eq_ignore_ascii_case("accept-encoding")
    };
    let any = |name, bad: &dyn Fn(&str) -> bool| {
        response
            .get_all(name)
            .iter()
            .any(|value| value.to_str().map_or(true, |text| text.split(',').any(bad)))
    };
    !any(CACHE_CONTROL, &forbidden_directive) && !any(VARY, &other_vary)
}

/// A stored answer.
#[derive(Debug)]
pub struct Entry {
    /// When it was stored.
    pub stored: Instant,
    /// Its headers (hop-by-hop already removed).
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Arc<Entry>>,
    order: VecDeque<String>,
    bytes: usize,
}

/// One destination's stale cache.
#[derive(Debug, Default)]
pub struct StaleCache {
    inner: Mutex<Inner>,
}

impl StaleCache {
    /// The entry for `key` if younger than `max_age`, with its age.
    pub fn get(&self, key: &str, max_age: Duration) -> Option<(Arc<Entry>, Duration)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = inner.map.get(key)?;
        let age = entry.stored.elapsed();
        (age <= max_age).then(|| (entry.clone(), age))
    }

    /// Stores an answer, evicting the oldest entries past `max_entries` or `max_bytes`.
    pub fn put(
        &self,
        key: String,
        headers: HeaderMap,
        body: Bytes,
        max_entries: usize,
        max_bytes: usize,
    ) {
        if body.len() > max_bytes || max_entries == 0 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = inner.map.remove(&key) {
            inner.bytes -= old.body.len();
            inner.order.retain(|k| *k != key);
        }
        while !inner.order.is_empty()
            && (inner.map.len() >= max_entries || inner.bytes + body.len() > max_bytes)
        {
            if let Some(oldest) = inner.order.pop_front() {
                if let Some(e) = inner.map.remove(&oldest) {
                    inner.bytes -= e.body.len();
                }
            }
        }
        inner.bytes += body.len();
        inner.order.push_back(key.clone());
        let entry = Entry {
            stored: Instant::now(),
            headers,
            body,
        };
        inner.map.insert(key, Arc::new(entry));
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.map.len())
    }
}

/// Copies a streaming GET 200 body into the cache when it ends whole.
#[derive(Debug)]
pub struct StaleRecorder {
    cache: Arc<super::DestinationState>,
    key: String,
    headers: HeaderMap,
    buf: BytesMut,
    max_entries: usize,
    max_bytes: usize,
}

impl StaleRecorder {
    /// Starts recording the answer for `key`.
    pub fn new(
        cache: Arc<super::DestinationState>,
        key: String,
        headers: HeaderMap,
        max_entries: usize,
        max_bytes: usize,
    ) -> Self {
        StaleRecorder {
            cache,
            key,
            headers,
            buf: BytesMut::new(),
            max_entries,
            max_bytes,
        }
    }

    /// Adds a chunk; returns false once the body is too large to keep.
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        if self.buf.len() + chunk.len() > self.max_bytes {
            return false;
        }
        self.buf.extend_from_slice(chunk);
        true
    }

    /// Stores the whole body.
    pub fn finish(self) {
        self.cache.stale.put(
            self.key,
            self.headers,
            self.buf.freeze(),
            self.max_entries,
            self.max_bytes,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_bytes_are_bounded_oldest_out_first() {
        let c = StaleCache::default();
        for i in 0..5 {
            c.put(
                format!("/{i}"),
                HeaderMap::new(),
                Bytes::from(vec![0; 10]),
                3,
                1000,
            );
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("/0", Duration::from_secs(9)).is_none());
        assert!(c.get("/4", Duration::from_secs(9)).is_some());
        c.put(
            "/big".into(),
            HeaderMap::new(),
            Bytes::from(vec![0; 25]),
            3,
            40,
        );
        assert!(c.get("/big", Duration::from_secs(9)).is_some());
        assert!(c.len() <= 2, "bytes bound evicted older entries");
        c.put(
            "/huge".into(),
            HeaderMap::new(),
            Bytes::from(vec![0; 50]),
            3,
            40,
        );
        assert!(
            c.get("/huge", Duration::from_secs(9)).is_none(),
            "larger than the bound: not kept"
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_static(n),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn only_answers_meant_for_anyone_are_shareable() {
        let ok: &[&[(&str, &str)]] = &[
            &[],
            &[("content-type", "application/json")],
            &[("cache-control", "public, max-age=60")],
            &[("cache-control", "no-cache")],
            &[("vary", "Accept-Encoding")],
            &[("vary", " accept-encoding ,")],
        ];
        for h in ok {
            assert!(is_shareable(&headers(h)), "{h:?}");
        }
        let refused: &[&[(&str, &str)]] = &[
            &[("set-cookie", "session=abc")],
            &[("cache-control", "private")],
            &[("cache-control", "max-age=60, Private=\"set-cookie\"")],
            &[("cache-control", "public"), ("cache-control", "NO-STORE")],
            &[("vary", "User-Agent")],
            &[("vary", "accept-encoding, cookie")],
            &[("vary", "Accept-Encoding"), ("vary", "Authorization")],
            &[("vary", "*")],
        ];
        for h in refused {
            assert!(!is_shareable(&headers(h)), "{h:?}");
        }
        let mut binary = HeaderMap::new();
        binary.insert(VARY, http::HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(!is_shareable(&binary), "a Vary that is not text");
    }

    #[test]
    fn requests_with_credentials_are_personal() {
        assert!(!is_personal(&headers(&[("accept", "*/*")])));
        assert!(is_personal(&headers(&[("authorization", "Bearer x")])));
        assert!(is_personal(&headers(&[("cookie", "session=abc")])));
    }

    #[test]
    fn old_entries_are_not_served() {
        let c = StaleCache::default();
        c.put(
            "/a".into(),
            HeaderMap::new(),
            Bytes::from_static(b"x"),
            10,
            100,
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.get("/a", Duration::from_millis(1)).is_none());
        assert!(c.get("/a", Duration::from_secs(1)).is_some());
    }
}
