//! Endpoint choice: power of two random choices over in-flight requests. Two random
//! endpoints are compared and the less busy one wins: nearly as good as least-loaded
//! without scanning every endpoint or sharing a lock between workers.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use http::uri::Authority;

use crate::config::Protocol;

/// One upstream endpoint as the data plane sees it. Kept across registry updates while
/// the instance stays, so its counters (and connection pools keyed by `key`) survive.
#[derive(Debug)]
pub struct Endpoint {
    /// Unique for the process's lifetime: the connection pools' key.
    pub key: u64,
    /// Instance id (`static:host:port` for static entries).
    pub id: String,
    /// `host:port` to dial.
    pub authority: Authority,
    /// How it speaks.
    pub protocol: Protocol,
    /// Draining endpoints get traffic only when nothing else is up.
    pub draining: AtomicBool,
    in_flight: AtomicU32,
}

impl Endpoint {
    /// A new endpoint with a fresh pool key.
    pub fn new(id: String, authority: Authority, protocol: Protocol, draining: bool) -> Self {
        static NEXT_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Endpoint {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            id,
            authority,
            protocol,
            draining: AtomicBool::new(draining),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Requests sent and not yet finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Marks a request in flight on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// Counts a request on `endpoint`.
    pub fn start(endpoint: &Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks an endpoint, skipping `avoid` (the endpoint a previous attempt failed on) when
/// there is another choice, and draining endpoints unless nothing else is up.
pub fn pick(endpoints: &[Arc<Endpoint>], avoid: Option<u64>) -> Option<&Arc<Endpoint>> {
    let usable = |e: &Arc<Endpoint>| !e.is_draining() && Some(e.key) != avoid;
    match endpoints.len() {
        0 => None,
        1 => endpoints.first(),
        n => {
            let a = &endpoints[fastrand::usize(..n)];
            let mut b = &endpoints[fastrand::usize(..n - 1)];
            if std::ptr::eq(a, b) {
                b = &endpoints[n - 1];
            }
            match (usable(a), usable(b)) {
                (true, true) => Some(if b.in_flight() < a.in_flight() { b } else { a }),
                (true, false) => Some(a),
                (false, true) => Some(b),
                // Both unusable: scan for any usable one, else any non-draining, else the first.
                (false, false) => endpoints
                    .iter()
                    .find(|e| usable(e))
                    .or_else(|| endpoints.iter().find(|e| !e.is_draining()))
                    .or(endpoints.first()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Arc<Endpoint> {
        let auth: Authority = format!("127.0.0.1:{port}").parse().unwrap();
        Arc::new(Endpoint::new(
            port.to_string(),
            auth,
            Protocol::Http1,
            false,
        ))
    }

    #[test]
    fn the_less_busy_endpoint_wins_most_picks() {
        let eps = vec![ep(1), ep(2)];
        let _busy: Vec<_> = (0..5).map(|_| InFlight::start(&eps[0])).collect();
        for _ in 0..50 {
            assert_eq!(pick(&eps, None).unwrap().id, "2");
        }
    }

    #[test]
    fn draining_and_avoided_endpoints_are_skipped_while_others_exist() {
        let eps = vec![ep(1), ep(2), ep(3)];
        eps[0].draining.store(true, Ordering::Relaxed);
        let avoid = Some(eps[1].key);
        for _ in 0..50 {
            assert_eq!(pick(&eps, avoid).unwrap().id, "3");
        }
        let only_draining = vec![eps[0].clone()];
        assert_eq!(pick(&only_draining, None).unwrap().id, "1");
        assert!(pick(&[], None).is_none());
    }

    #[test]
    fn picks_spread_over_idle_endpoints() {
        let eps = vec![ep(1), ep(2), ep(3)];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(pick(&eps, None).unwrap().id.clone());
        }
        assert_eq!(seen.len(), 3);
    }
}
