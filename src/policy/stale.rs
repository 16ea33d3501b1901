//! The stale cache of `degrade: {stale: <age>}`: the last good GET 200 per path and query,
//! bounded in entries and bytes (oldest evicted first). Only destinations in stale mode
//! record into it, while the response streams to the caller.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;

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
