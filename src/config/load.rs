//! Loading a config file: read, parse with line/column errors, then the semantic checks
//! that need more than one field. Every error names where it is and what was expected.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Config, Degrade, PolicyOverride, ServiceName};

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// YAML syntax, an unknown key, a wrong type or a bad value.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// File (or `<embedded>`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Field path and what was expected.
        message: String,
    },
    /// A rule across fields.
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        /// File (or `<embedded>`).
        file: String,
        /// 1-based line of the field, best effort (0 when it could not be found).
        line: usize,
        /// Dotted field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A validated config with where and when it came from.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// The config.
    pub config: Config,
    /// The file it came from, or `<embedded>`.
    pub source: String,
    /// FNV-1a hash of the file's bytes, hex: tells which version is live.
    pub hash: String,
    /// The file, when it came from one (then it is watched for changes).
    pub path: Option<PathBuf>,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

impl LoadedConfig {
    /// Reads and validates `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut loaded = Self::from_text(&text, &path.display().to_string())?;
        loaded.path = Some(path.to_owned());
        Ok(loaded)
    }

    /// Parses and validates YAML text; `source` names it in errors.
    pub fn from_text(text: &str, source: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| parse_error(&e, source))?;
        validate(&config).map_err(|(field, message)| ConfigError::Invalid {
            file: source.to_owned(),
            line: locate(text, &field),
            field,
            message,
        })?;
        Ok(LoadedConfig {
            config,
            source: source.to_owned(),
            hash: content_hash(text),
            path: None,
            loaded_at: SystemTime::now(),
        })
    }
}

fn parse_error(e: &serde_yaml::Error, source: &str) -> ConfigError {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    // serde_yaml appends " at line L column C"; the location is already in front.
    let mut message = e.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    ConfigError::Parse {
        file: source.to_owned(),
        line,
        column,
        message,
    }
}

type Violation = (String, String);

/// The checks serde cannot express, section by section; the first violation is reported.
fn validate(c: &Config) -> Result<(), Violation> {
    validate_service(c)?;
    validate_registry(c)?;
    validate_policies(c)?;
    validate_routes_and_auth(c)?;
    validate_features(c)
}

fn fail(field: String, msg: &str) -> Result<(), Violation> {
    Err((field, msg.to_owned()))
}

fn validate_service(c: &Config) -> Result<(), Violation> {
    if let Some(app) = &c.service.app {
        check_http_origin(&app.0, "service.app")?;
    }
    if let Some(h) = &c.service.health {
        if !h.as_str().starts_with('/') {
            return fail("service.health".into(), "must be a path starting with `/`");
        }
    }
    Ok(())
}

fn validate_registry(c: &Config) -> Result<(), Violation> {
    let r = &c.registry;
    if r.heartbeat >= r.ttl {
        return fail(
            "registry.heartbeat".into(),
            "must be shorter than registry.ttl, or instances expire between heartbeats",
        );
    }
    let timers = [
        ("registry.ttl", r.ttl),
        ("registry.heartbeat", r.heartbeat),
        ("registry.resync", r.resync),
        ("service.health_interval", c.service.health_interval),
        ("limits.idle_timeout", c.limits.idle_timeout),
        ("limits.header_read_timeout", c.limits.header_read_timeout),
        ("limits.keepalive_timeout", c.limits.keepalive_timeout),
    ];
    for (key, duration) in timers {
        if duration.get().is_zero() {
            return fail(key.into(), "must be greater than 0s");
        }
    }
    if c.limits.max_connections == 0 {
        return fail(
            "limits.max_connections".into(),
            "must be at least 1, or the listeners accept nothing",
        );
    }
    for name in r.static_endpoints.keys() {
        ServiceName::parse(name).map_err(|m| (format!("registry.static.{name}"), m))?;
    }
    validate_store(r)?;
    if let Some(url) = &r.redis {
        let u = url.expose();
        if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://")) {
            return fail(
                "registry.redis".into(),
                "expected a redis://, rediss:// or unix:// URL",
            );
        }
    }
    Ok(())
}

/// Exactly one of `registry.redis | sentinel | cluster`, each with usable nodes.
fn validate_store(r: &crate::config::RegistryConfig) -> Result<(), Violation> {
    let named = [r.redis.is_some(), r.sentinel.is_some(), r.cluster.is_some()];
    if named.iter().filter(|set| **set).count() > 1 {
        return fail(
            "registry".into(),
            "set only one of registry.redis, registry.sentinel and registry.cluster",
        );
    }
    if let Some(s) = &r.sentinel {
        if s.master.as_str().is_empty() {
            return fail(
                "registry.sentinel.master".into(),
                "must name the monitored master",
            );
        }
        check_nodes("registry.sentinel.nodes", &s.nodes)?;
    }
    if let Some(c) = &r.cluster {
        check_nodes("registry.cluster.nodes", &c.nodes)?;
    }
    Ok(())
}

fn check_nodes(key: &str, nodes: &[crate::config::Text]) -> Result<(), Violation> {
    if nodes.is_empty() {
        return fail(key.into(), "needs at least one `host:port`");
    }
    for node in nodes {
        let port = node
            .as_str()
            .rsplit_once(':')
            .map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(p)) if p > 0) || node.as_str().contains('/') {
            return Err((
                key.into(),
                format!("expected `host:port`, got `{}`", node.as_str()),
            ));
        }
    }
    Ok(())
}

/// `events.broker: amqp` needs `events.amqp.url` (docs/events.md, "RabbitMQ").
fn validate_amqp(e: &crate::config::EventsConfig) -> Result<(), Violation> {
    let amqp = &e.amqp;
    if let Some(url) = &amqp.url {
        let u = url.expose();
        if !(u.starts_with("amqp://") || u.starts_with("amqps://")) {
            return fail(
                "events.amqp.url".into(),
                "must start with amqp:// or amqps://",
            );
        }
        // Refused here, not at every connect of a broker outage that never ends. The
        // parser's messages name the fault (a bad port, bad escapes), never the URL and
        // its password.
        if let Err(e) = u.parse::<lapin::uri::AMQPUri>() {
            return Err((
                "events.amqp.url".into(),
                format!("not a valid AMQP URL: {e}"),
            ));
        }
    }
    if amqp.prefetch == 0 {
        return fail("events.amqp.prefetch".into(), "must be at least 1");
    }
    if e.broker == crate::config::EventBroker::Amqp && amqp.url.is_none() {
        return fail(
            "events.amqp.url".into(),
            "needed with events.broker: amqp (the RabbitMQ URL, e.g. amqp://user:pass@host:5672/%2f)",
        );
    }
    Ok(())
}

fn validate_policies(c: &Config) -> Result<(), Violation> {
    check_policy(&c.defaults, "defaults")?;
    if c.defaults.url.is_some() || c.defaults.auth.is_some() || c.defaults.ca.is_some() {
        return fail(
            "defaults".into(),
            "`url`, `auth` and `ca` belong under services.<name>, not defaults",
        );
    }
    check_resolved_fault(&super::Policy::default().overlay(&c.defaults), "defaults")?;
    for (name, o) in &c.services {
        let at = format!("services.{name}");
        ServiceName::parse(name).map_err(|m| (at.clone(), m))?;
        check_policy(o, &at)?;
        check_resolved_fault(&c.policy_for(name), &at)?;
        if let Some(url) = &o.url {
            check_egress_url(&url.0, &format!("{at}.url"))?;
        }
        let https = o
            .url
            .as_ref()
            .is_some_and(|u| u.0.scheme_str() == Some("https"));
        if o.ca.is_some() && !https {
            return fail(format!("{at}.ca"), "a CA bundle needs an https:// url");
        }
        if let Some(a) = &o.auth {
            if http::HeaderName::from_bytes(a.header.as_bytes()).is_err() {
                return fail(format!("{at}.auth.header"), "not a valid header name");
            }
            if a.value.is_some() == a.file.is_some() {
                return fail(format!("{at}.auth"), "set exactly one of `value` or `file`");
            }
        }
    }
    Ok(())
}

fn validate_routes_and_auth(c: &Config) -> Result<(), Violation> {
    for (i, route) in c.routes.iter().enumerate() {
        if !route.prefix.starts_with('/') {
            return fail(format!("routes.{i}.prefix"), "must start with `/`");
        }
    }
    if let Some(auth) = &c.auth {
        if auth.inbound.require && auth.token.is_none() {
            return fail(
                "auth.inbound.require".into(),
                "needs auth.token.secret to verify tokens with",
            );
        }
        if let Some(token) = &auth.token {
            check_secret_lengths(&token.secret.0)?;
        }
        if let Some(r) = &auth.inbound.rate_limit {
            check_rate(Some(r.per_second), r.burst)
                .map_err(|(field, msg)| (format!("auth.inbound.rate_limit.{field}"), msg))?;
        }
    }
    Ok(())
}

/// The shortest token secret accepted, in bytes: HS256 keys shorter than its 32-byte hash
/// can be guessed offline from a single captured token (docs/security.md).
pub const MIN_SECRET_BYTES: usize = 32;

/// Every secret of `auth.token.secret` (each one of a rotation list: any of them verifies,
/// so any of them can be used to mint tokens) is at least [`MIN_SECRET_BYTES`] long.
fn check_secret_lengths(secrets: &[super::Secret]) -> Result<(), Violation> {
    for (i, secret) in secrets.iter().enumerate() {
        if secret.expose().len() < MIN_SECRET_BYTES {
            let field = if secrets.len() == 1 {
                "auth.token.secret".to_owned()
            } else {
                format!("auth.token.secret.{i}")
            };
            // The message never shows the secret, nor its length.
            return fail(
                field,
                "shorter than 32 bytes; anyone holding one token could guess it offline (make one with `openssl rand -hex 32`)",
            );
        }
    }
    Ok(())
}

/// Something `meshlet check` warns about: valid, but open to the pod network in a way an
/// operator should choose knowingly (docs/security.md). `--strict` makes each an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Dotted field path.
    pub field: String,
    /// Why it is a risk, and what closes it.
    pub message: String,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl LoadedConfig {
    /// What `meshlet check` warns about, one entry a finding (docs/config.md, "Warnings").
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        warnings(&self.config)
    }
}

fn warnings(c: &Config) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    let mut warn = |field: &str, message: String| {
        out.push(ConfigWarning {
            field: field.to_owned(),
            message,
        })
    };
    // The inbound listener is bound only for an app or a hub to serve.
    let inbound_used = c.service.app.is_some() || c.realtime.is_some();
    let inbound = c.listen.inbound.0;
    let public = inbound_used && !inbound.ip().is_loopback();
    let tokens_required = c.auth.as_ref().is_some_and(|a| a.inbound.require);
    if public && !tokens_required && c.tls.is_none() {
        warn(
            "listen.inbound",
            format!(
                "`{inbound}` is reachable from the pod network and neither `auth` (auth.inbound.require) nor `tls` is set: anyone who reaches it can call the app"
            ),
        );
    }
    if let Some(rt) = &c.realtime {
        match &rt.auth {
            None => warn(
                "realtime.auth",
                "not set: the hub is anonymous, any client may connect, join any room and publish"
                    .to_owned(),
            ),
            Some(a) if !a.require => warn(
                "realtime.auth.require",
                "false: clients without a token connect anonymously".to_owned(),
            ),
            Some(a) if a.secret.expose().len() < MIN_SECRET_BYTES => warn(
                "realtime.auth.secret",
                "shorter than 32 bytes; anyone holding one client token could guess it offline"
                    .to_owned(),
            ),
            Some(_) => {}
        }
    }
    out
}

fn validate_features(c: &Config) -> Result<(), Violation> {
    validate_amqp(&c.events)?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in c.events.subscriptions.iter().enumerate() {
        if !s.path.starts_with('/') {
            return fail(
                format!("events.subscriptions.{i}.path"),
                "must start with `/`",
            );
        }
        if !seen.insert(s.event_type.as_str()) {
            return fail(
                format!("events.subscriptions.{i}.type"),
                "subscribed twice; one entry per event type",
            );
        }
        if c.service.app.is_none() {
            return fail(
                format!("events.subscriptions.{i}"),
                "needs service.app to deliver events to",
            );
        }
    }
    if let Some(rt) = &c.realtime {
        if !rt.path.starts_with('/') || !rt.on_message.starts_with('/') {
            return fail("realtime.path".into(), "paths must start with `/`");
        }
        if rt.max_rooms_per_client == 0 {
            return fail("realtime.max_rooms_per_client".into(), "must be at least 1");
        }
        if rt.app_concurrency == 0 {
            return fail("realtime.app_concurrency".into(), "must be at least 1");
        }
        let inbound = c.listen.inbound.0;
        if rt.auth.is_none() && !rt.allow_anonymous && !inbound.ip().is_loopback() {
            return Err((
                "realtime.auth".into(),
                format!(
                    "the hub has no realtime.auth and the inbound listener {inbound} is not \
                     loopback: anyone who reaches it could connect, join any room and read \
                     it; set realtime.auth (an HS256 secret), or realtime.allow_anonymous: \
                     true to allow anonymous clients on purpose"
                ),
            ));
        }
    }
    if let Some(otlp) = &c.telemetry.otlp {
        if !(0.0..=1.0).contains(&otlp.sample) {
            return fail("telemetry.otlp.sample".into(), "must be between 0 and 1");
        }
        if otlp.protocol == super::OtlpProtocol::Grpc
            && (otlp.endpoint.0.scheme_str() != Some("http") || otlp.endpoint.0.host().is_none())
        {
            return fail(
                "telemetry.otlp.endpoint".into(),
                "grpc needs `http://host:port` (h2c; the gRPC exporter has no TLS)",
            );
        }
    }
    Ok(())
}

fn check_policy(o: &PolicyOverride, at: &str) -> Result<(), Violation> {
    let fail = |field: &str, msg: &str| Err((format!("{at}.{field}"), msg.to_owned()));
    if o.timeout.is_some_and(|t| t.get().is_zero()) {
        return fail("timeout", "must be greater than 0s");
    }
    if o.connect_timeout.is_some_and(|t| t.get().is_zero()) {
        return fail("connect_timeout", "must be greater than 0s");
    }
    if let Some(r) = &o.retry {
        if r.multiplier.is_some_and(|m| !(1.0..=10.0).contains(&m)) {
            return fail("retry.multiplier", "must be between 1 and 10");
        }
        if let Some(b) = &r.budget {
            if b.percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                return fail("retry.budget.percent", "must be between 0 and 100");
            }
        }
    }
    if let Some(b) = &o.breaker {
        if b.open_for.is_some_and(|t| t.get().is_zero()) {
            return fail("breaker.open_for", "must be greater than 0s");
        }
    }
    if let Some(f) = &o.fault {
        check_fault(f).map_err(|(field, msg)| (format!("{at}.fault.{field}"), msg))?;
    }
    if let Some(r) = &o.rate_limit {
        check_rate(r.per_second, r.burst)
            .map_err(|(field, msg)| (format!("{at}.rate_limit.{field}"), msg))?;
    }
    if let Some(Degrade::Static(answer)) = &o.degrade {
        if !(100..=599).contains(&answer.status) {
            return fail("degrade.static.status", "must be an HTTP status (100-599)");
        }
        for (name, value) in &answer.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                return fail("degrade.static.headers", "invalid header name or value");
            }
        }
    }
    Ok(())
}

/// `fault:` of one layer: shares are 0-100, an abort's status 200-599.
fn check_fault(f: &super::policy::FaultOverride) -> Result<(), Violation> {
    let percent = |p: Option<f64>| p.is_some_and(|p| !(0.0..=100.0).contains(&p));
    if let Some(d) = &f.delay {
        if percent(d.percent) {
            return fail("delay.percent".into(), "must be between 0 and 100");
        }
    }
    if let Some(a) = &f.abort {
        if percent(a.percent) {
            return fail("abort.percent".into(), "must be between 0 and 100");
        }
        if a.status.is_some_and(|s| !(200..=599).contains(&s)) {
            return fail("abort.status".into(), "must be an HTTP status (200-599)");
        }
    }
    Ok(())
}

/// A token bucket's settings: `per_second` 0 (no limit) or 0.001 to 1e9, `burst` 1 to 1e6.
/// The bounds keep the bucket's span (`burst / per_second`, at most 1e9 s) inside its
/// nanosecond clock: a rate of 1e-12 would overflow it and let every call through.
fn check_rate(per_second: Option<f64>, burst: Option<u32>) -> Result<(), Violation> {
    let valid = |r: f64| r == 0.0 || (0.001..=1e9).contains(&r);
    if per_second.is_some_and(|r| !valid(r)) {
        return fail(
            "per_second".into(),
            "must be 0 (no limit) or between 0.001 and 1000000000",
        );
    }
    if burst.is_some_and(|b| !(1..=1_000_000).contains(&b)) {
        return fail("burst".into(), "must be between 1 and 1000000");
    }
    Ok(())
}

/// The merged `fault` of a destination: a delay that is injected needs a duration.
fn check_resolved_fault(policy: &super::Policy, at: &str) -> Result<(), Violation> {
    match &policy.fault {
        Some(f) if f.delay_percent > 0.0 && f.delay.get().is_zero() => Err((
            format!("{at}.fault.delay.duration"),
            "needed (greater than 0s) when fault.delay.percent is above 0".to_owned(),
        )),
        _ => Ok(()),
    }
}

fn check_http_origin(uri: &http::Uri, at: &str) -> Result<(), Violation> {
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(()),
        _ => Err((
            at.to_owned(),
            format!("expected `http://host:port`, got `{uri}`"),
        )),
    }
}

fn check_egress_url(uri: &http::Uri, at: &str) -> Result<(), Violation> {
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) if uri.query().is_none() => Ok(()),
        _ => Err((
            at.to_owned(),
            format!("expected `http(s)://host[:port][/base-path]`, got `{uri}`"),
        )),
    }
}

/// Finds the 1-based line of a dotted field path in YAML text, best effort: each segment is
/// searched as a key after the previous one. Returns 0 when not found.
fn locate(text: &str, field: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = 0;
    for segment in field.split('.') {
        if segment.parse::<usize>().is_ok() {
            continue;
        }
        let key = format!("{segment}:");
        let hit = lines.iter().enumerate().skip(from).find(|(_, l)| {
            let code = l.split(" #").next().unwrap_or("");
            code.match_indices(&key).any(|(i, _)| {
                i == 0 || matches!(code.as_bytes()[i - 1], b' ' | b'{' | b',' | b'-' | b'"')
            })
        });
        match hit {
            Some((i, _)) => {
                found = i + 1;
                from = i;
            }
            None => break,
        }
    }
    found
}

/// FNV-1a of the config text, as 16 hex digits.
pub fn content_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        LoadedConfig::from_text(text, "test.yaml")
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn one_redis_kind_sentinel_or_cluster_with_host_port_nodes() {
        let c = LoadedConfig::from_text(
            "service: {name: orders}\nregistry:\n  sentinel: {master: mymaster, nodes: [\"127.0.0.1:26379\"], password: pw}\n",
            "t",
        )
        .unwrap();
        let store = c.config.registry.store().expect("sentinel is a store");
        assert!(matches!(store, crate::config::Store::Sentinel(_)));
        assert!(store.is_loopback());
        assert_eq!(store.describe(), "sentinel mymaster via 127.0.0.1:26379");
        assert!(!format!("{:?}", c.config.registry).contains("pw"));
        let c = LoadedConfig::from_text(
            "service: {name: orders}\nregistry:\n  cluster: {nodes: [\"10.0.0.5:7000\", \"10.0.0.6:7000\"]}\n",
            "t",
        )
        .unwrap();
        assert!(!c.config.registry.allow_loopback());
        assert_eq!(c.config.events.replicas, 1);
        let e = err("service: {name: orders}\nregistry:\n  redis: redis://127.0.0.1:6379\n  cluster: {nodes: [\"127.0.0.1:7000\"]}\n");
        assert!(e.contains("registry: set only one of"), "{e}");
        let e = err("service: {name: orders}\nregistry:\n  cluster: {nodes: [\"127.0.0.1\"]}\n");
        assert!(e.contains("registry.cluster.nodes"), "{e}");
        assert!(e.contains("`127.0.0.1`"), "{e}");
        let e = err("service: {name: orders}\nregistry:\n  sentinel: {master: m, nodes: []}\n");
        assert!(
            e.contains("registry.sentinel.nodes: needs at least one"),
            "{e}"
        );
        let e = err("service: {name: orders}\nregistry:\n  sentinel: {nodes: [\"a:1\"]}\n");
        assert!(e.contains("missing field `master`"), "{e}");
    }

    #[test]
    fn only_the_service_name_is_required() {
        let c = LoadedConfig::from_text("service: {name: orders}", "t").unwrap();
        assert_eq!(c.config.service.name.as_str(), "orders");
        assert_eq!(c.config.listen.outbound.0.port(), 15001);
        assert_eq!(c.config.policy_for("x").retry.attempts, 3);
        assert!(err("listen: {}").contains("missing field `service`"));
    }

    #[test]
    fn unknown_keys_name_line_path_and_valid_keys() {
        let e = err("service:\n  name: orders\ndefaults:\n  retry:\n    atempts: 5\n");
        assert!(e.starts_with("test.yaml:5:5: "), "{e}");
        assert!(e.contains("defaults.retry"), "{e}");
        assert!(e.contains("unknown field `atempts`"), "{e}");
        assert!(e.contains("`attempts`"), "{e}");
    }

    #[test]
    fn bad_values_name_their_line() {
        let e = err("service:\n  name: orders\ndefaults:\n  timeout: soon\n");
        assert!(e.starts_with("test.yaml:4:"), "{e}");
        assert!(e.contains("invalid duration"), "{e}");
        let e = err("service: {name: orders}\nregistry:\n  static:\n    inventory: [\"nope\"]\n");
        assert!(e.starts_with("test.yaml:4:"), "{e}");
        assert!(e.contains("host:port"), "{e}");
    }

    #[test]
    fn cross_field_rules_name_the_field_and_line() {
        let e =
            err("service: {name: orders}\nroutes:\n  - {prefix: inventory, service: inventory}\n");
        assert!(e.starts_with("test.yaml:3: routes.0.prefix"), "{e}");
        let e = err("service: {name: orders}\nregistry:\n  ttl: 5s\n  heartbeat: 10s\n");
        assert!(e.starts_with("test.yaml:4: registry.heartbeat"), "{e}");
    }

    #[test]
    fn fault_and_rate_limit_values_are_checked_and_named() {
        let e = err("service: {name: orders}\ndefaults:\n  fault: {abort: {percent: 150}}\n");
        assert!(
            e.starts_with("test.yaml:3: defaults.fault.abort.percent: must be between 0 and 100"),
            "{e}"
        );
        let e = err("service: {name: orders}\nservices:\n  inventory:\n    fault:\n      abort: {percent: 5, status: 700}\n");
        assert!(
            e.starts_with("test.yaml:5: services.inventory.fault.abort.status"),
            "{e}"
        );
        let e = err(
            "service: {name: orders}\nservices:\n  inventory: {fault: {delay: {percent: 10}}}\n",
        );
        assert!(
            e.contains("services.inventory.fault.delay.duration: needed"),
            "{e}"
        );
        let e =
            err("service: {name: orders}\ndefaults: {rate_limit: {per_second: 10, burst: 0}}\n");
        assert!(
            e.contains("defaults.rate_limit.burst: must be between 1 and 1000000"),
            "{e}"
        );
        // So small a rate would overflow the bucket's clock and let every call through.
        let e = err("service: {name: orders}\ndefaults: {rate_limit: {per_second: 1e-12}}\n");
        assert!(
            e.contains("defaults.rate_limit.per_second: must be 0"),
            "{e}"
        );
        let e = err("service: {name: orders}\nauth:\n  inbound: {rate_limit: {per_second: -1}}\n");
        assert!(e.contains("auth.inbound.rate_limit.per_second"), "{e}");
        let e = err("service: {name: orders}\ndefaults: {fault: {abort: {pct: 5}}}\n");
        assert!(e.contains("unknown field `pct`"), "{e}");
        let ok = "service: {name: orders}\ndefaults:\n  fault: {delay: {duration: 1s}}\nservices:\n  inventory: {fault: {delay: {percent: 0.5}, abort: {percent: 0.5, status: 200}}}\nauth: {inbound: {rate_limit: {per_second: 0.5, per_caller: true}}}\n";
        LoadedConfig::from_text(ok, "t").unwrap();
    }

    #[test]
    fn otlp_protocol_is_http_protobuf_or_grpc() {
        use crate::config::OtlpProtocol;
        let otlp = |p: &str| {
            format!("service: {{name: orders}}\ntelemetry:\n  otlp:\n    endpoint: http://c:4317\n    protocol: {p}\n")
        };
        for (text, want) in [
            ("http/protobuf", OtlpProtocol::HttpProtobuf),
            ("grpc", OtlpProtocol::Grpc),
        ] {
            let c = LoadedConfig::from_text(&otlp(text), "t").unwrap();
            let got = c.config.telemetry.otlp.map(|o| o.protocol);
            assert_eq!(got, Some(want));
        }
        let c = LoadedConfig::from_text(
            "service: {name: orders}\ntelemetry: {otlp: {endpoint: http://c:4318}}\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            c.config.telemetry.otlp.map(|o| o.protocol),
            Some(OtlpProtocol::HttpProtobuf)
        );
        let e = err(&otlp("grpc").replace("http://c", "https://c"));
        assert!(e.starts_with("test.yaml:4: telemetry.otlp.endpoint"), "{e}");
        let e = err(&otlp("http/json"));
        assert!(
            e.starts_with("test.yaml:5:15: telemetry.otlp.protocol"),
            "{e}"
        );
        assert!(
            e.contains("`http/protobuf`, `grpc`") || e.contains("`http/protobuf` or `grpc`"),
            "{e}"
        );
    }

    #[test]
    fn amqp_broker_needs_its_url_and_hides_the_password() {
        let e = err("service: {name: orders}\nevents: {broker: amqp}\n");
        assert!(e.contains("events.amqp.url: needed"), "{e}");
        let e = err("service: {name: orders}\nevents: {broker: amqp, amqp: {prefetch: 8}}\n");
        assert!(e.contains("events.amqp.url"), "{e}");
        let e = err("service: {name: orders}\nevents: {broker: amqp, amqp: {url: \"http://x\"}}\n");
        assert!(
            e.contains("events.amqp.url: must start with amqp://"),
            "{e}"
        );
        let e = err("service: {name: orders}\nevents: {broker: amqp, amqp: {url: \"amqp://u:s3cret@rabbit:99999/%2f\"}}\n");
        assert!(e.contains("events.amqp.url: not a valid AMQP URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = err("service: {name: orders}\nevents: {broker: kafka}\n");
        assert!(e.contains("events.broker"), "{e}");
        let text = "service: {name: orders}\nevents:\n  broker: amqp\n  amqp: {url: \"amqp://meshlet:s3cret@rabbit:5672/%2f\"}\n";
        let c = LoadedConfig::from_text(text, "t").unwrap().config;
        assert_eq!(c.events.broker, crate::config::EventBroker::Amqp);
        assert_eq!(c.events.amqp.prefetch, 32);
        let url = c.events.amqp.url.as_ref().unwrap();
        assert_eq!(url.expose(), "amqp://meshlet:s3cret@rabbit:5672/%2f");
        let shown = format!(
            "{:?} {}",
            c.events,
            serde_json::to_string(&c.events).unwrap()
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("amqp://meshlet:<redacted>@rabbit:5672/%2f"),
            "{shown}"
        );
        let c = LoadedConfig::from_text("service: {name: orders}", "t")
            .unwrap()
            .config;
        assert_eq!(c.events.broker, crate::config::EventBroker::Redis);
    }

    #[test]
    fn missing_env_variable_is_named() {
        let e = err("service: {name: orders}\nservices:\n  weather:\n    url: https://w.example\n    auth: {header: Authorization, value: \"Bearer ${MESHLET_TEST_SURELY_UNSET}\"}\n");
        assert!(e.contains("MESHLET_TEST_SURELY_UNSET"), "{e}");
        assert!(e.starts_with("test.yaml:5:"), "{e}");
    }
}
