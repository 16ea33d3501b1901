//! Endpoint choice: power of two random choices over in-flight requests. Two random
//! endpoints are compared and the less busy one wins: nearly as good as least-loaded
//! without scanning every endpoint or sharing a lock between workers.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use http::uri::Authority;

use super::breaker::Breaker;
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
    /// Outlier ejection: an endpoint whose breaker is open is skipped unless all are.
    pub breaker: Breaker,
    /// TLS toward this endpoint (`https://` egress), else plain TCP.
    pub tls: Option<crate::identity::tls::TlsTarget>,
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
            breaker: Breaker::default(),
            tls: None,
            in_flight: AtomicU32::new(0),
        }
    }

    /// The same endpoint reached over TLS.
    pub fn with_tls(mut self, tls: crate::identity::tls::TlsTarget) -> Self {
        self.tls = Some(tls);
        self
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

/// Picks an endpoint: two random candidates, the one with fewer requests in flight wins.
/// Skipped while another choice exists: draining endpoints, endpoints whose breaker is open
/// (ejected outliers), and `avoid` (the endpoint the previous attempt failed on).
pub fn pick(endpoints: &[Arc<Endpoint>], avoid: Option<u64>) -> Option<&Arc<Endpoint>> {
    let n = endpoints.len();
    if n <= 1 {
        return endpoints.first();
    }
    let a = &endpoints[fastrand::usize(..n)];
    let mut b = &endpoints[fastrand::usize(..n - 1)];
    if std::ptr::eq(a, b) {
        b = &endpoints[n - 1];
    }
    match (penalty(a, avoid), penalty(b, avoid)) {
        (0, 0) => Some(if b.in_flight() < a.in_flight() { b } else { a }),
        (0, _) => Some(a),
        (_, 0) => Some(b),
        // Both penalized: the least penalized of all, so one bad draw never picks a bad one.
        _ => endpoints.iter().min_by_key(|e| penalty(e, avoid)),
    }
}

/// 0 = fully usable; higher = worse: avoided < draining < ejected.
fn penalty(e: &Endpoint, avoid: Option<u64>) -> u8 {
    u8::from(Some(e.key) == avoid)
        + 2 * u8::from(e.is_draining())
        + 4 * u8::from(e.breaker.is_open())
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
        let policy = crate::config::Policy::default().breaker;
        for _ in 0..policy.failures {
            eps[2].breaker.record(false, &policy);
        }
        for _ in 0..50 {
            assert_eq!(
                pick(&eps, None).unwrap().id,
                "2",
                "ejected endpoint skipped"
            );
        }
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
