//! The YAML contract (docs/config.md): serde types with their documented defaults, loading with
//! line/column errors, and the semantic checks serde cannot express.
//!
//! Config is data only. The running sidecar turns it into live handles (registry,
//! per-destination stacks, metric handles) in [`crate::sidecar`].

mod features;
mod load;
mod policy;
mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use features::{
    AmqpConfig, AmqpUrl, ClientPublish, EventBroker, EventsConfig, History, OtlpConfig,
    OtlpProtocol, RealtimeAuth, RealtimeConfig, StreamStart, Subscription, TelemetryConfig,
};
pub use load::{content_hash, ConfigError, ConfigWarning, LoadedConfig, MIN_SECRET_BYTES};
pub use policy::{
    BreakerPolicy, Degrade, FaultPolicy, GrpcCode, Policy, PolicyOverride, Protocol, RateLimit,
    RetryOn, RetryPolicy, StaticAnswer, StaticAuth,
};
#[cfg(feature = "fuzzing")]
pub(crate) use units::expand_with;
pub use units::{expand_env, ByteSize, Dur, Parsed, Secret, Secrets, Text};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this pod is.
    pub service: ServiceIdentity,
    /// Listener addresses.
    #[serde(default)]
    pub listen: Listen,
    /// Runtime worker threads; default: the number of cores.
    #[serde(default)]
    pub workers: Option<usize>,
    /// On SIGTERM: deregister at once, then drain in-flight work at most this long.
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: Dur,
    /// Protocol limits.
    #[serde(default)]
    pub limits: Limits,
    /// Service discovery and self-registration.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Policy for every destination unless a service overrides it.
    #[serde(default)]
    pub defaults: PolicyOverride,
    /// Base-URL mode: path prefix to service.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Per-destination overrides and egress destinations.
    #[serde(default)]
    pub services: BTreeMap<String, PolicyOverride>,
    /// Service identity tokens and inbound authorization.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Mutual TLS between meshlets.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Events over Redis Streams.
    #[serde(default)]
    pub events: EventsConfig,
    /// WebSocket realtime hub.
    #[serde(default)]
    pub realtime: Option<RealtimeConfig>,
    /// Trace export.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `service:`: who this pod is.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceIdentity {
    /// The service name others call this pod by (required).
    pub name: ServiceName,
    /// Version, registered in the instance hash.
    #[serde(default)]
    pub version: Option<Text>,
    /// The local app: inbound target, health checks, event delivery.
    #[serde(default)]
    pub app: Option<Parsed<http::Uri>>,
    /// How the app speaks.
    #[serde(default)]
    pub protocol: Protocol,
    /// Health path polled on the app.
    #[serde(default)]
    pub health: Option<Text>,
    /// Health poll interval.
    #[serde(default = "defaults::health_interval")]
    pub health_interval: Dur,
    /// Free-form metadata registered with the instance.
    #[serde(default)]
    pub metadata: BTreeMap<String, Text>,
    /// `host:port` others reach this pod at; default `${POD_IP}:<inbound port>`, else 127.0.0.1.
    #[serde(default)]
    pub advertise: Option<Text>,
}

/// A service name: `[A-Za-z0-9._-]{1,128}`, so it is safe in Redis keys, Host headers and
/// metric labels alike.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ServiceName(pub String);

impl ServiceName {
    /// Checks the allowed alphabet.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(ServiceName(s.to_owned()))
        } else {
            Err(format!(
                "invalid service name `{s}`: use 1-128 of A-Z a-z 0-9 . _ -"
            ))
        }
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Text::deserialize(d)?;
        ServiceName::parse(raw.as_str()).map_err(serde::de::Error::custom)
    }
}

/// `listen:` addresses of the four listeners.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// App → meshlet → remote service.
    #[serde(default = "defaults::outbound")]
    pub outbound: Parsed<SocketAddr>,
    /// Remote meshlet → this meshlet → local app.
    #[serde(default = "defaults::inbound")]
    pub inbound: Parsed<SocketAddr>,
    /// Local API (events, registry and config views).
    #[serde(default = "defaults::api")]
    pub api: Parsed<SocketAddr>,
    /// `/metrics` and health checks.
    #[serde(default = "defaults::telemetry")]
    pub telemetry: Parsed<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            outbound: defaults::outbound(),
            inbound: defaults::inbound(),
            api: defaults::api(),
            telemetry: defaults::telemetry(),
        }
    }
}

/// `limits:` protocol limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Request head larger than this → 431.
    pub max_header_bytes: ByteSize,
    /// Request target longer than this → 414.
    pub max_uri_bytes: ByteSize,
    /// A request body up to this size may be retried; larger ones stream once.
    pub replay_buffer: ByteSize,
    /// No bytes either way on a streaming body or upgraded connection for this long → cut.
    pub idle_timeout: Dur,
    /// A client slower than this to send its headers is cut (slowloris).
    pub header_read_timeout: Dur,
    /// An idle keep-alive client connection is closed after this long without a request.
    pub keepalive_timeout: Dur,
    /// A request already carrying this many meshlet `Via` entries is a routing loop → 508.
    pub max_hops: std::num::NonZeroU32,
    /// Client connections open at once on each data-plane listener (outbound, inbound);
    /// one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: ByteSize::kib(64),
            max_uri_bytes: ByteSize::kib(8),
            replay_buffer: ByteSize::kib(64),
            idle_timeout: Dur::secs(60),
            header_read_timeout: Dur::secs(10),
            keepalive_timeout: Dur::secs(60),
            max_hops: std::num::NonZeroU32::new(8).expect("8 is not zero"),
            max_connections: 20_000,
        }
    }
}

/// `registry:` discovery and self-registration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `redis://` or `rediss://` URL; absent = static registry only.
    pub redis: Option<RedisUrl>,
    /// Redis behind Sentinel (failover); instead of `redis` (docs/scaling.md).
    pub sentinel: Option<SentinelConfig>,
    /// Redis Cluster (sharding); instead of `redis` (docs/scaling.md).
    pub cluster: Option<ClusterConfig>,
    /// Key prefix of every registry, event and realtime key.
    pub prefix: Text,
    /// Instance expiry after the last heartbeat.
    pub ttl: Dur,
    /// Heartbeat interval.
    pub heartbeat: Dur,
    /// Full re-read interval beside the changes channel.
    pub resync: Dur,
    /// Static endpoints per service: `host:port` or `h2://host:port`.
    #[serde(rename = "static")]
    pub static_endpoints: BTreeMap<String, Vec<Parsed<StaticEndpoint>>>,
    /// Route to Redis instances on a loopback host; `None` = [`RegistryConfig::allow_loopback`].
    pub allow_loopback: Option<bool>,
}

impl RegistryConfig {
    /// Whether Redis instances on a loopback host are routed to (docs/registry.md): the
    /// explicit `allow_loopback`, else true when the registry's own Redis is on loopback
    /// (one machine), false otherwise.
    pub fn allow_loopback(&self) -> bool {
        self.allow_loopback
            .unwrap_or_else(|| self.store().is_some_and(|s| s.is_loopback()))
    }

    /// The Redis registry, events and the hub run on, if any: exactly one of `redis`,
    /// `sentinel`, `cluster` (checked at load).
    pub fn store(&self) -> Option<Store<'_>> {
        if let Some(url) = &self.redis {
            Some(Store::Server(url))
        } else if let Some(s) = &self.sentinel {
            Some(Store::Sentinel(s))
        } else {
            self.cluster.as_ref().map(Store::Cluster)
        }
    }
}

/// Which kind of Redis the control plane talks to (docs/scaling.md).
#[derive(Clone, Copy, Debug)]
pub enum Store<'a> {
    /// One server: `registry.redis`.
    Server(&'a RedisUrl),
    /// A master found through sentinels: `registry.sentinel`.
    Sentinel(&'a SentinelConfig),
    /// A Redis Cluster: `registry.cluster`.
    Cluster(&'a ClusterConfig),
}

impl Store<'_> {
    /// Whether every node named is on this machine.
    pub fn is_loopback(&self) -> bool {
        match self {
            Store::Server(url) => url.is_loopback(),
            Store::Sentinel(s) => s.nodes.iter().all(|n| is_loopback_host(n.as_str())),
            Store::Cluster(c) => c.nodes.iter().all(|n| is_loopback_host(n.as_str())),
        }
    }

    /// How operators' output names it, without passwords.
    pub fn describe(&self) -> String {
        match self {
            Store::Server(url) => url.redacted(),
            Store::Sentinel(s) => format!("sentinel {} via {}", s.master, join_nodes(&s.nodes)),
            Store::Cluster(c) => format!("cluster {}", join_nodes(&c.nodes)),
        }
    }
}

fn join_nodes(nodes: &[Text]) -> String {
    nodes.iter().map(Text::as_str).collect::<Vec<_>>().join(",")
}

/// Whether `host:port` names this machine.
fn is_loopback_host(node: &str) -> bool {
    let host = match node.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => node.rsplit_once(':').map_or(node, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `registry.sentinel:` a master found through Redis Sentinel.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The monitored master's name (`sentinel monitor NAME ...`).
    pub master: Text,
    /// Sentinels, `host:port`; any one that answers names the master.
    pub nodes: Vec<Text>,
    /// The data nodes' password (`requirepass`/ACL), if any.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The data nodes' ACL user, if not `default`.
    #[serde(default)]
    pub username: Option<Text>,
    /// The sentinels' own password, if any.
    #[serde(default)]
    pub sentinel_password: Option<Secret>,
    /// TLS to the data nodes and the sentinels.
    #[serde(default)]
    pub tls: bool,
}

/// `registry.cluster:` a Redis Cluster.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Seed nodes, `host:port`; the rest of the cluster is learned from them.
    pub nodes: Vec<Text>,
    /// The nodes' password, if any.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The nodes' ACL user, if not `default`.
    #[serde(default)]
    pub username: Option<Text>,
    /// TLS to every node.
    #[serde(default)]
    pub tls: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            redis: None,
            sentinel: None,
            cluster: None,
            prefix: Text::from("mesh"),
            ttl: Dur::secs(30),
            heartbeat: Dur::secs(10),
            resync: Dur::secs(5),
            static_endpoints: BTreeMap::new(),
            allow_loopback: None,
        }
    }
}

/// A static registry entry: `host:port`, `http://host:port` or `h2://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticEndpoint {
    /// Host name or IP literal.
    pub host: String,
    /// Port.
    pub port: u16,
    /// How it speaks.
    pub protocol: Protocol,
}

impl std::str::FromStr for StaticEndpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (protocol, rest) = if let Some(r) = s.strip_prefix("h2://") {
            (Protocol::H2, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (Protocol::Http1, r)
        } else {
            (Protocol::Http1, s)
        };
        let bad = || format!("expected `host:port` or `h2://host:port`, got `{s}`");
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.contains('/') {
            return Err(bad());
        }
        Ok(StaticEndpoint {
            host: host.to_owned(),
            port,
            protocol,
        })
    }
}

impl std::fmt::Display for StaticEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.protocol {
            Protocol::H2 => "h2://",
            Protocol::Http1 => "",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}{}:{}", self.host, self.port)
        }
    }
}

/// A Redis URL; its password is never shown.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct RedisUrl(pub Secret);

impl RedisUrl {
    /// The URL as given, password included: only for connecting.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
    /// Whether the server is on this machine: a `unix://` socket, or a `redis://` /
    /// `rediss://` host that is `localhost`, `127.0.0.0/8` or `::1`.
    pub fn is_loopback(&self) -> bool {
        let raw = self.0.expose();
        let Some((scheme, rest)) = raw.split_once("://") else {
            return false;
        };
        if scheme.eq_ignore_ascii_case("unix") || scheme.eq_ignore_ascii_case("redis+unix") {
            return true;
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = match host_port.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host_port.split(':').next().unwrap_or(""),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The URL with any password replaced.
    pub fn redacted(&self) -> String {
        let raw = self.0.expose();
        match (raw.find("://"), raw.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let creds = &raw[scheme_end + 3..at];
                let user = creds.split_once(':').map_or("", |(u, _)| u);
                format!(
                    "{}{}:<redacted>{}",
                    &raw[..scheme_end + 3],
                    user,
                    &raw[at..]
                )
            }
            _ => raw.to_owned(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// One `routes:` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, starting with `/`.
    pub prefix: String,
    /// Destination service.
    pub service: ServiceName,
    /// Remove the prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
}

/// `auth:` service tokens and inbound rules.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Service identity token signing.
    #[serde(default)]
    pub token: Option<TokenConfig>,
    /// Inbound verification.
    #[serde(default)]
    pub inbound: InboundAuth,
}

/// `auth.token:`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// HS256 secret(s): the first signs, all verify.
    pub secret: Secrets,
    /// Token lifetime.
    #[serde(default = "defaults::token_ttl")]
    pub ttl: Dur,
}

/// `auth.inbound:`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundAuth {
    /// Refuse calls without a valid token.
    #[serde(default)]
    pub require: bool,
    /// Callers allowed; empty = any authenticated caller.
    #[serde(default)]
    pub allow_from: Vec<ServiceName>,
    /// Token bucket before the app, after the identity check.
    #[serde(default)]
    pub rate_limit: Option<InboundRateLimit>,
}

/// `auth.inbound.rate_limit:` (docs/policy.md, "Rate limits").
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundRateLimit {
    /// Requests per second refilled into the bucket; 0 = no limit.
    pub per_second: f64,
    /// Bucket size; default `per_second` rounded up (at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// One bucket per verified caller (unauthenticated callers share one) instead of one
    /// for everyone.
    #[serde(default)]
    pub per_caller: bool,
}

impl InboundRateLimit {
    /// The bucket's settings, as an outbound `rate_limit` resolves them.
    pub fn limit(&self) -> RateLimit {
        RateLimit {
            per_second: self.per_second,
            burst: self.burst,
        }
    }
}

/// `tls:` mutual TLS between meshlets.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: Text,
    /// Private key (PEM).
    pub key: Text,
    /// CA bundle that peers' certificates must chain to (PEM).
    pub ca: Text,
}

mod defaults {
    use super::*;

    pub(super) fn shutdown_grace() -> Dur {
        Dur::secs(20)
    }
    pub(super) fn health_interval() -> Dur {
        Dur::secs(5)
    }
    fn addr(s: &str) -> Parsed<SocketAddr> {
        // Literal constants below; parsing them cannot fail.
        Parsed(s.parse().expect("constant socket address"))
    }
    pub(super) fn outbound() -> Parsed<SocketAddr> {
        addr("127.0.0.1:15001")
    }
    pub(super) fn inbound() -> Parsed<SocketAddr> {
        addr("0.0.0.0:15006")
    }
    pub(super) fn api() -> Parsed<SocketAddr> {
        addr("127.0.0.1:15000")
    }
    pub(super) fn telemetry() -> Parsed<SocketAddr> {
        addr("0.0.0.0:15020")
    }
    pub(super) fn token_ttl() -> Dur {
        Dur::secs(60)
    }
    pub(super) fn max_attempts() -> std::num::NonZeroU32 {
        std::num::NonZeroU32::new(5).expect("5 is not zero")
    }
    pub(super) fn one() -> std::num::NonZeroU32 {
        std::num::NonZeroU32::MIN
    }
    pub(super) fn event_backoff() -> Dur {
        Dur::secs(1)
    }
    pub(super) fn event_max_backoff() -> Dur {
        Dur::secs(60)
    }
    pub(super) fn event_timeout() -> Dur {
        Dur::secs(10)
    }
    pub(super) fn ws_path() -> String {
        "/ws".to_owned()
    }
    pub(super) fn ping_interval() -> Dur {
        Dur::secs(25)
    }
    pub(super) fn ping_timeout() -> Dur {
        Dur::secs(10)
    }
    pub(super) fn max_connections() -> u32 {
        10_000
    }
    pub(super) fn send_queue() -> u32 {
        256
    }
    pub(super) fn slow_after() -> Dur {
        Dur::millis(750)
    }
    pub(super) fn on_message() -> String {
        "/realtime/messages".to_owned()
    }
    pub(super) fn max_rooms_per_client() -> u32 {
        100
    }
    pub(super) fn app_concurrency() -> u32 {
        64
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn sample() -> f64 {
        1.0
    }
}

impl Config {
    /// The policy destination `service` runs with.
    pub fn policy_for(&self, service: &str) -> Policy {
        let base = Policy::default().overlay(&self.defaults);
        match self.services.get(service) {
            Some(o) => base.overlay(o),
            None => base,
        }
    }

    /// Worker threads to run: the setting, else the number of cores.
    pub fn worker_count(&self) -> usize {
        self.workers
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}
