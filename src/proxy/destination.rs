//! Destinations and the routing table: what the request path reads to turn a request into
//! a service, its policy, its endpoints and its metric handles. The table is immutable and
//! rebuilt by the control plane on every registry or config change, then swapped in whole;
//! a request reads it without a lock.

use std::collections::HashSet;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use http::uri::Authority;

use crate::config::{Config, Policy, Protocol};
use crate::identity::tls::{MeshTls, TlsTarget};
use crate::identity::token::TokenCache;
use crate::identity::{Identity, X_MESH_CALLER, X_MESH_TOKEN};
use crate::policy::balance::Endpoint;
use crate::policy::rate_limit::{InboundLimiter, RateLimiter};
use crate::policy::DestinationState;
use crate::registry::hygiene::{valid_name, Hygiene, Reason};
use crate::registry::{Instance, Snapshot, Status};
use crate::telemetry::metrics::{DestinationMetrics, Direction, Metrics, TableMap};

/// One service as the request path sees it.
pub struct Destination {
    /// Service name (also the `Host` the app used).
    pub name: Arc<str>,
    /// Resolved policy.
    pub policy: Policy,
    /// Live endpoints; empty = `no_endpoints`.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Metric handles, resolved once.
    pub metrics: Arc<DestinationMetrics>,
    /// For `url:` destinations: TLS and the base path prepended to every request.
    pub egress: Option<Egress>,
    /// Breaker, budget, stale cache: kept across rebuilds and reloads.
    pub state: Arc<DestinationState>,
    /// This destination's cached service token.
    pub token: TokenCache,
    /// `services.X.auth`: header set toward this destination (value marked sensitive).
    pub static_auth: Option<(HeaderName, HeaderValue)>,
    /// `rate_limit`'s token bucket: kept across rebuilds while its settings stay the same.
    pub rate_limit: Option<Arc<RateLimiter>>,
}

impl Destination {
    /// Stamps this destination's identity headers on an outbound request: toward a mesh
    /// service the caller's name and token, toward `url:` egress neither (a partner API
    /// must not learn mesh names or tokens), and `services.X.auth` when configured.
    pub fn stamp_identity(&self, identity: &Identity, headers: &mut HeaderMap) {
        headers.remove(&X_MESH_TOKEN);
        if self.egress.is_some() {
            headers.remove(&X_MESH_CALLER);
        } else {
            identity.stamp_mesh(headers, &self.token, &self.name);
        }
        if let Some((name, value)) = &self.static_auth {
            // A caller's own Authorization toward a mesh destination is theirs to send.
            let callers_own = self.egress.is_none()
                && name == AUTHORIZATION
                && headers.contains_key(AUTHORIZATION);
            if !callers_own {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// An egress destination's fixed URL parts.
#[derive(Clone, Debug)]
pub struct Egress {
    /// Base path without a trailing slash (may be empty).
    pub base_path: String,
    /// `Host` sent to it: the URL's host (and port when not the scheme's default).
    pub host: HeaderValue,
}

/// A path-prefix route, longest prefix first.
struct Route {
    prefix: String,
    strip: bool,
    destination: Arc<Destination>,
}

/// Service name → destination, the prefix routes, and the identity settings: everything
/// the request path reads from the config, immutable once built.
pub struct RoutingTable {
    services: TableMap<Arc<str>, Arc<Destination>>,
    routes: Vec<Route>,
    /// Token signing and inbound checks.
    pub identity: Identity,
    /// `auth.inbound.rate_limit`: kept across rebuilds while its settings stay the same.
    pub inbound_limit: Option<Arc<InboundLimiter>>,
    /// Registry instances this build ignored, so the next build logs and counts only new
    /// ones (the request path never reads it).
    rejected: HashSet<Rejected>,
}

/// A registry instance ignored by [`Hygiene`]: the same service, id and address is logged
/// and counted once for as long as it stays registered.
#[derive(PartialEq, Eq, Hash)]
struct Rejected {
    service: String,
    id: String,
    host: String,
    port: u16,
}

impl RoutingTable {
    /// A table with nothing in it (before the first build).
    pub fn empty(config: &Config) -> RoutingTable {
        RoutingTable {
            services: TableMap::default(),
            routes: Vec::new(),
            identity: Identity::from_config(config, config.tls.is_some()),
            inbound_limit: inbound_limiter(config, None),
            rejected: HashSet::new(),
        }
    }

    /// The destination named by a request's host, if it is a known service.
    pub fn by_host(&self, host: &str) -> Option<&Arc<Destination>> {
        self.services.get(host).or_else(|| {
            if host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.services.get(host.to_ascii_lowercase().as_str())
            } else {
                None
            }
        })
    }

    /// The longest route whose prefix starts `path`, and how many bytes to strip.
    pub fn by_path(&self, path: &str) -> Option<(&Arc<Destination>, usize)> {
        self.routes
            .iter()
            .find(|r| path.starts_with(r.prefix.as_str()))
            .map(|r| (&r.destination, if r.strip { r.prefix.len() } else { 0 }))
    }

    /// Every destination, for views and gauges.
    pub fn destinations(&self) -> impl Iterator<Item = &Arc<Destination>> {
        self.services.values()
    }

    /// Builds the table for `config` and `snapshot`, reusing the endpoints and metric
    /// handles of `previous` where they are unchanged (their counters and pools survive).
    /// Redis instances that fail `hygiene` are left out, each logged and counted in
    /// `meshlet_registry_rejected_total` once (docs/registry.md); static ones are the
    /// operator's own and pass unchecked.
    pub fn build(
        config: &Config,
        snapshot: &Snapshot,
        previous: &RoutingTable,
        metrics: &Metrics,
        mesh_tls: Option<&MeshTls>,
        hygiene: &Hygiene,
    ) -> RoutingTable {
        let (snapshot, rejected) = screen(snapshot, hygiene, &previous.rejected, metrics);
        let snapshot = &snapshot;
        let mut names: Vec<&str> = snapshot.services.keys().map(String::as_str).collect();
        names.extend(config.services.keys().map(String::as_str));
        names.extend(config.routes.iter().map(|r| r.service.as_str()));
        names.sort_unstable();
        names.dedup();

        let mut services = TableMap::with_capacity_and_hasher(names.len(), Default::default());
        for name in names {
            let old = previous.services.get(name);
            let destination = build_destination(name, config, snapshot, old, metrics, mesh_tls);
            metrics.set_endpoints(name, destination.endpoints.len());
            services.insert(destination.name.clone(), Arc::new(destination));
        }
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .filter_map(|r| {
                services.get(r.service.as_str()).map(|d| Route {
                    prefix: r.prefix.clone(),
                    strip: r.strip_prefix,
                    destination: Arc::clone(d),
                })
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        metrics.registry_metrics.services.set(services.len() as i64);
        RoutingTable {
            services,
            routes,
            identity: Identity::from_config(config, mesh_tls.is_some()),
            inbound_limit: inbound_limiter(config, previous.inbound_limit.as_ref()),
            rejected,
        }
    }
}

/// The inbound limiter for `config`: `previous` when its settings did not change (a reload
/// must not refill a bucket), else a fresh one.
fn inbound_limiter(
    config: &Config,
    previous: Option<&Arc<InboundLimiter>>,
) -> Option<Arc<InboundLimiter>> {
    let wanted = config.auth.as_ref()?.inbound.rate_limit.as_ref()?;
    let (per_second, burst) = wanted.limit().in_force()?;
    match previous {
        Some(same) if same.is(per_second, burst, wanted.per_caller) => Some(same.clone()),
        _ => Some(Arc::new(InboundLimiter::new(
            per_second,
            burst,
            wanted.per_caller,
        ))),
    }
}

/// A destination's token bucket for `policy`: the old destination's when its settings did
/// not change (a reload must not refill it), else a fresh one.
fn rate_limiter(policy: &Policy, old: Option<&Arc<Destination>>) -> Option<Arc<RateLimiter>> {
    let (per_second, burst) = policy.rate_limit.as_ref()?.in_force()?;
    match old.and_then(|d| d.rate_limit.as_ref()) {
        Some(same) if same.rate().is(per_second, burst) => Some(same.clone()),
        _ => Some(Arc::new(RateLimiter::new(per_second, burst))),
    }
}

/// `snapshot` without the Redis instances `hygiene` rejects (and without services whose
/// name it rejects); each newly rejected instance, one not in `before`, is logged and
/// counted. Returns the snapshot to build from and every instance rejected now.
fn screen(
    snapshot: &Snapshot,
    hygiene: &Hygiene,
    before: &HashSet<Rejected>,
    metrics: &Metrics,
) -> (Snapshot, HashSet<Rejected>) {
    let mut rejected = HashSet::new();
    let mut services = std::collections::BTreeMap::new();
    for (service, instances) in &snapshot.services {
        let mut kept = Vec::with_capacity(instances.len());
        for inst in instances {
            // Static entries (no expiry) come from the operator's own config.
            let verdict = match inst.expires_at {
                None => Ok(()),
                Some(_) => hygiene.check(service, inst),
            };
            match verdict {
                Ok(()) => kept.push(inst.clone()),
                // This meshlet's own registration (at its inbound listener): left out,
                // but expected, so neither logged nor counted.
                Err(_) if hygiene.is_own_registration(service, inst) => {}
                Err(reason) => {
                    let key = Rejected {
                        service: service.clone(),
                        id: inst.id.clone(),
                        host: inst.host.clone(),
                        port: inst.port,
                    };
                    if !before.contains(&key) {
                        report(service, inst, reason, metrics);
                    }
                    rejected.insert(key);
                }
            }
        }
        // A service whose name is outside the alphabet is not a destination at all; one
        // with a valid name stays known (`no_endpoints`) even if every instance was ignored.
        if valid_name(service) || !kept.is_empty() {
            services.insert(service.clone(), kept);
        }
    }
    let screened = Snapshot {
        services,
        redis_read_at: snapshot.redis_read_at,
    };
    (screened, rejected)
}

/// The one warning and count for a rejected instance. Its strings come from whoever wrote
/// the registry: they are logged escaped and cut to 128 characters.
fn report(service: &str, inst: &Instance, reason: Reason, metrics: &Metrics) {
    fn shown(s: &str) -> String {
        let cut: String = s.chars().take(128).collect();
        format!("{cut:?}")
    }
    tracing::warn!(
        service = %shown(service),
        id = %shown(&inst.id),
        host = %shown(&inst.host),
        port = inst.port,
        reason = reason.as_str(),
        "registry instance ignored"
    );
    metrics
        .registry_metrics
        .rejected
        .with_label_values(&[reason.as_str()])
        .inc();
}

fn build_destination(
    name: &str,
    config: &Config,
    snapshot: &Snapshot,
    old: Option<&Arc<Destination>>,
    metrics: &Metrics,
    mesh_tls: Option<&MeshTls>,
) -> Destination {
    let policy = config.policy_for(name);
    let metrics_handle = old.map_or_else(
        || metrics.destination(Direction::Outbound, name),
        |d| d.metrics.clone(),
    );
    let previous = Previous(old);
    let (endpoints, egress) = match config.services.get(name).and_then(|s| s.url.as_ref()) {
        Some(url) => {
            let ca = config
                .services
                .get(name)
                .and_then(|s| s.ca.as_ref())
                .map(|c| c.as_str());
            let (endpoint, egress) = egress_endpoint(name, &url.0, ca, &previous);
            (endpoint.into_iter().collect(), Some(egress))
        }
        None => {
            let instances = snapshot.services.get(name).map_or(&[][..], Vec::as_slice);
            let endpoints = instances
                .iter()
                .filter_map(|inst| mesh_endpoint(name, inst, &policy, mesh_tls, &previous))
                .collect();
            (endpoints, None)
        }
    };
    Destination {
        name: Arc::from(name),
        rate_limit: rate_limiter(&policy, old),
        policy,
        endpoints,
        metrics: metrics_handle,
        egress,
        state: old.map_or_else(Default::default, |d| d.state.clone()),
        token: TokenCache::default(),
        static_auth: config
            .services
            .get(name)
            .and_then(|s| s.auth.as_ref())
            .and_then(|a| static_auth(name, a)),
    }
}

/// The destination's previous build, whose unchanged endpoints are reused (their in-flight
/// counts, breakers and pooled connections survive a rebuild).
struct Previous<'a>(Option<&'a Arc<Destination>>);

impl Previous<'_> {
    fn endpoint(
        &self,
        id: &str,
        authority: &Authority,
        protocol: Protocol,
    ) -> Option<Arc<Endpoint>> {
        self.0.and_then(|d| {
            d.endpoints
                .iter()
                .find(|e| e.id == id && e.authority == *authority && e.protocol == protocol)
                .cloned()
        })
    }
}

/// A `url:` destination's one endpoint (none when its TLS cannot be set up) and fixed URL
/// parts.
fn egress_endpoint(
    name: &str,
    uri: &http::Uri,
    ca: Option<&str>,
    previous: &Previous<'_>,
) -> (Option<Arc<Endpoint>>, Egress) {
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = uri.host().unwrap_or_default();
    let authority = format!("{host}:{port}").parse::<Authority>().ok();
    let endpoint = authority.and_then(|a| {
        let id = format!("url:{}://{a}", if tls { "https" } else { "http" });
        if let Some(same) = previous.endpoint(&id, &a, Protocol::Http1) {
            return Some(same);
        }
        let plain = Endpoint::new(id, a, Protocol::Http1, false);
        if !tls {
            return Some(Arc::new(plain));
        }
        match TlsTarget::egress(host, ca) {
            Ok(target) => Some(Arc::new(plain.with_tls(target))),
            Err(e) => {
                tracing::error!(service = name, error = %e, "egress TLS unusable; the destination has no endpoint");
                None
            }
        }
    });
    let host_header = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let egress = Egress {
        base_path: uri.path().trim_end_matches('/').to_owned(),
        host: HeaderValue::from_str(&host_header)
            .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
    };
    (endpoint, egress)
}

/// A registry instance as an endpoint of mesh destination `name` (with mutual TLS when
/// configured); its draining flag follows the registry on every rebuild.
fn mesh_endpoint(
    name: &str,
    inst: &Instance,
    policy: &Policy,
    mesh_tls: Option<&MeshTls>,
    previous: &Previous<'_>,
) -> Option<Arc<Endpoint>> {
    let authority: Authority = inst.authority().parse().ok()?;
    let protocol = match inst.protocol {
        Protocol::H2 => Protocol::H2,
        Protocol::Http1 => policy.protocol,
    };
    let draining = inst.status == Status::Draining;
    let ep = match previous.endpoint(&inst.id, &authority, protocol) {
        Some(ep) => ep,
        None => {
            let ep = Endpoint::new(inst.id.clone(), authority, protocol, draining);
            Arc::new(match mesh_tls.map(|m| m.target(name)) {
                None => ep,
                Some(Ok(target)) => ep.with_tls(target),
                Some(Err(e)) => {
                    tracing::error!(service = name, error = %e, "no mutual TLS toward this service");
                    return None;
                }
            })
        }
    };
    ep.draining
        .store(draining, std::sync::atomic::Ordering::Relaxed);
    Some(ep)
}

/// Resolves `services.X.auth` to a header (the value read from its file when given).
fn static_auth(
    service: &str,
    auth: &crate::config::StaticAuth,
) -> Option<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(auth.header.as_bytes()).ok()?;
    let value = match (&auth.value, &auth.file) {
        (Some(v), _) => v.expose().to_owned(),
        (None, Some(path)) => match std::fs::read_to_string(path.as_str()) {
            Ok(text) => text.trim().to_owned(),
            Err(e) => {
                tracing::error!(service, file = %path, error = %e, "cannot read the auth header file; no auth header sent");
                return None;
            }
        },
        (None, None) => return None,
    };
    let mut value = HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}
