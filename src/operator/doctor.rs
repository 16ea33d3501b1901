//! `meshlet doctor --config FILE`: checks one pod's meshlet from the outside, one line per
//! check (docs/operations.md, "CLI: stat, tap, doctor"): the config loads and validates,
//! the running meshlet's listeners answer (telemetry: ready), Redis answers and its
//! version, this pod's registration is in the registry, the app answers its health path,
//! and this clock agrees with Redis's. Each check waits at most [`WAIT`]. A check that
//! cannot run because an earlier one failed is skipped, so one cause is explained once.
//! Exit 0 when nothing failed (warnings allowed), 1 when a check failed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::http::header::USER_AGENT;
use ::http::Request;
use ::redis::RedisError;
use http_body_util::Full;

use super::http::{self, HttpError, WAIT};
use super::term::{Paint, Term, REWRITE_LINE};
use super::OperatorError;
use crate::config::{Config, LoadedConfig, Store};
use crate::control::app::{AppClient, AppError};
use crate::control::keys::Keys;
use crate::control::redis::{self, Conn};
use crate::registry::schema::{self, Instance, Status};

/// A clock this far from Redis's gets a warning: registry expiry is compared across
/// machines' clocks (docs/registry.md), so skew shortens or stretches every entry's life.
pub const SKEW_WARN: Duration = Duration::from_secs(1);
/// A clock this far off fails: service tokens allow 5 s of skew (docs/identity.md), so
/// beyond it tokens minted here are refused there, or the other way round.
pub const SKEW_FAIL: Duration = Duration::from_secs(5);

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// Fine.
    Pass,
    /// Works, but worth a look; does not fail the run.
    Warn,
    /// Broken: the run exits 1.
    Fail,
    /// Not checked (not configured, or an earlier check failed).
    Skip,
}

impl Mark {
    fn symbol(self) -> &'static str {
        match self {
            Mark::Pass => "✓",
            Mark::Warn => "!",
            Mark::Fail => "✗",
            Mark::Skip => "-",
        }
    }

    fn paint(self) -> Paint {
        match self {
            Mark::Pass => Paint::Green,
            Mark::Warn => Paint::Yellow,
            Mark::Fail => Paint::Red,
            Mark::Skip => Paint::Dim,
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Verdict.
    pub mark: Mark,
    /// What was found, on one line.
    pub detail: String,
}

impl Check {
    fn pass(detail: impl Into<String>) -> Check {
        Check::new(Mark::Pass, detail)
    }
    fn warn(detail: impl Into<String>) -> Check {
        Check::new(Mark::Warn, detail)
    }
    fn fail(detail: impl Into<String>) -> Check {
        Check::new(Mark::Fail, detail)
    }
    fn skip(detail: impl Into<String>) -> Check {
        Check::new(Mark::Skip, detail)
    }
    fn new(mark: Mark, detail: impl Into<String>) -> Check {
        // One line per check, whatever an error message carries.
        let detail: String = detail.into();
        Check {
            mark,
            detail: detail.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }
}

/// Prints checks as they finish: on a terminal, a `checking …` line first, rewritten in
/// place by the verdict; piped, only the verdicts.
struct Report {
    term: Term,
    counts: [usize; 4],
}

impl Report {
    fn new(term: Term) -> Report {
        Report {
            term,
            counts: [0; 4],
        }
    }

    fn checking(&self, name: &str) {
        if self.term.interactive {
            let line = self.term.paint(Paint::Dim, &format!("  checking {name} …"));
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{line}").and_then(|()| out.flush());
        }
    }

    fn done(&mut self, name: &str, check: &Check) {
        self.counts[check.mark as usize] += 1;
        let line = line(name, check, self.term);
        let rewrite = if self.term.interactive {
            REWRITE_LINE
        } else {
            ""
        };
        say(&format!("{rewrite}{line}"));
    }

    fn failed(&self) -> usize {
        self.counts[Mark::Fail as usize]
    }

    fn summary(&self) -> String {
        let [pass, warn, fail, skip] = self.counts;
        let mut out = format!("{pass} passed");
        for (n, what) in [(warn, "warning"), (fail, "failed"), (skip, "skipped")] {
            if n > 0 {
                let _ = write!(out, ", {n} {what}");
                if what == "warning" && n > 1 {
                    out.push('s');
                }
            }
        }
        out
    }
}

/// Prints a line; a closed stdout (`| head -1`) must not stop the checks or panic: the
/// exit status still tells.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// One check's line: `✓ name         detail` (the name padded so details line up).
pub fn line(name: &str, check: &Check, term: Term) -> String {
    format!(
        "{} {name:<12} {}",
        term.paint(check.mark.paint(), check.mark.symbol()),
        check.detail
    )
}

/// `meshlet doctor --config FILE [--api ADDR]`.
pub async fn run(config_path: &Path, api: Option<SocketAddr>) -> Result<(), OperatorError> {
    let mut report = Report::new(Term::stdout());
    report.checking("config");
    let loaded = match LoadedConfig::from_file(config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            // Nothing else can be checked without knowing the ports, Redis and app.
            report.done("config", &Check::fail(e.to_string()));
            let summary = format!("{}, the other checks need a valid config", report.summary());
            say(&summary);
            return Err(OperatorError::ChecksFailed(report.failed()));
        }
    };
    report.done("config", &config_check(&loaded));
    let config = &loaded.config;

    let registers = config.service.app.is_some() || config.realtime.is_some();
    let listeners = [
        ("outbound", Some(config.listen.outbound.0)),
        ("inbound", registers.then_some(config.listen.inbound.0)),
    ];
    for (name, addr) in listeners {
        report.checking(name);
        let check = match addr {
            Some(addr) => accepts(local(addr)).await,
            None => Check::skip("not bound: no service.app or realtime"),
        };
        report.done(name, &check);
    }
    report.checking("api");
    let api = api.unwrap_or_else(|| local(config.listen.api.0));
    let (check, instance_id) = api_check(api, &loaded).await;
    report.done("api", &check);
    report.checking("telemetry");
    report.done(
        "telemetry",
        &ready_check(local(config.listen.telemetry.0)).await,
    );

    report.checking("redis");
    let mut conn = None;
    let check = match config.registry.store() {
        None => Check::skip("no registry.redis: static registry only"),
        Some(store) => match redis_check(store).await {
            Ok((c, check)) => {
                conn = Some(c);
                check
            }
            Err(check) => check,
        },
    };
    report.done("redis", &check);

    report.checking("registration");
    let check = match (&mut conn, registers) {
        (_, false) => Check::skip("this pod only discovers (no service.app or realtime)"),
        (None, true) if config.registry.store().is_none() => {
            Check::skip("no registry.redis: nothing registers")
        }
        (None, true) => Check::skip("needs the Redis check to pass"),
        (Some(conn), true) => registration_check(conn, config, instance_id.as_deref()).await,
    };
    report.done("registration", &check);

    report.checking("app");
    report.done("app", &app_check(config).await);

    report.checking("clock");
    let check = match &mut conn {
        Some(conn) => clock_check(conn).await,
        None if config.registry.store().is_none() => {
            Check::skip("no registry.redis to compare with")
        }
        None => Check::skip("needs the Redis check to pass"),
    };
    report.done("clock", &check);

    say(&report.summary());
    match report.failed() {
        0 => Ok(()),
        n => Err(OperatorError::ChecksFailed(n)),
    }
}

fn config_check(loaded: &LoadedConfig) -> Check {
    let what = format!(
        "{} loads (service {}, hash {})",
        loaded.source, loaded.config.service.name, loaded.hash
    );
    match loaded.warnings().as_slice() {
        [] => Check::pass(what),
        [first, rest @ ..] => Check::warn(format!(
            "{what}; warning: {first}{}",
            if rest.is_empty() {
                String::new()
            } else {
                format!(" (and {} more: meshlet check)", rest.len())
            }
        )),
    }
}

/// Where to dial a listener bound to `addr`: a wildcard (`0.0.0.0`, `::`) answers on
/// loopback.
fn local(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// A TCP connect to a data-plane listener (nothing is sent: a request would be proxied).
async fn accepts(addr: SocketAddr) -> Check {
    match tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Check::pass(format!("{addr} accepts connections")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Check::fail(format!(
            "{addr} refused the connection (is meshlet running with this config?)"
        )),
        Ok(Err(e)) => Check::fail(format!("{addr}: {e}")),
        Err(_) => Check::fail(format!("{addr} {}", HttpError::Timeout(WAIT))),
    }
}

fn unreachable(addr: SocketAddr, e: &HttpError) -> Check {
    match e {
        HttpError::Refused => Check::fail(format!(
            "{addr} refused the connection (is meshlet running with this config?)"
        )),
        other => Check::fail(format!("{addr} {other}")),
    }
}

/// The local API answers `/v1/config` for this config's service (a warning when it runs
/// another version of the file) and `/v1/registry`, which names its instance id.
async fn api_check(api: SocketAddr, loaded: &LoadedConfig) -> (Check, Option<String>) {
    let json = |body: &[u8]| serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
    let running = match http::get_body(api, "/v1/config").await {
        Ok(body) => json(&body),
        Err(e) => return (unreachable(api, &e), None),
    };
    let service = running
        .pointer("/config/service/name")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let expected = loaded.config.service.name.as_str();
    if service != expected {
        // Its instance id is not ours: the registration check must not look for it.
        return (
            Check::fail(format!(
                "{api} answers for service `{service}`, not `{expected}`: another meshlet's API (--api)?"
            )),
            None,
        );
    }
    let id = match http::get_body(api, "/v1/registry").await {
        Ok(body) => json(&body)
            .get("instance_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        Err(e) => return (unreachable(api, &e), None),
    };
    let what = match &id {
        Some(id) => format!("{api} answers (instance {id})"),
        None => format!("{api} answers"),
    };
    let hash = running.get("hash").and_then(|v| v.as_str()).unwrap_or("");
    let check = if hash == loaded.hash {
        Check::pass(what)
    } else {
        Check::warn(format!(
            "{what}, but runs config hash {hash}, not the file's {} (a reload pending, or another file)",
            loaded.hash
        ))
    };
    (check, id)
}

/// The telemetry listener answers `/healthz/ready` with 200; a 503 names what is missing.
async fn ready_check(telemetry: SocketAddr) -> Check {
    match http::get_answer(telemetry, "/healthz/ready").await {
        Ok((status, _)) if status.is_success() => {
            Check::pass(format!("{telemetry} answers, ready"))
        }
        Ok((status, body)) => {
            let flags: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let missing: Vec<&str> = [
                ("listening", "listeners not bound"),
                ("registry_loaded", "registry not loaded yet"),
                ("app_healthy", "app health check failing"),
            ]
            .into_iter()
            .filter(|(flag, _)| flags.get(flag) == Some(&serde_json::Value::Bool(false)))
            .map(|(_, why)| why)
            .collect();
            let why = if missing.is_empty() {
                format!("answered {status}")
            } else {
                missing.join(", ")
            };
            Check::fail(format!("{telemetry} not ready: {why}"))
        }
        Err(e) => unreachable(telemetry, &e),
    }
}

/// Connects to `url` and reads its version (`INFO server`), within [`WAIT`].
async fn redis_check(store: Store<'_>) -> Result<(Conn, Check), Check> {
    let shown = store.describe();
    let target = redis::Target::new(store).map_err(|e| Check::fail(format!("{shown}: {e}")))?;
    let attempt = async {
        let mut conn = target.connect(redis::REDIS_IO_TIMEOUT).await?;
        let info: ::redis::Value = ::redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        Ok::<_, RedisError>((conn, first_text(info)))
    };
    match tokio::time::timeout(WAIT, attempt).await {
        Ok(Ok((conn, info))) => {
            let version = info_field(&info, "redis_version").unwrap_or("unknown");
            Ok((
                conn,
                Check::pass(format!("{shown} answers (redis {version})")),
            ))
        }
        Ok(Err(e)) => Err(Check::fail(format!("{shown} {}", redis_failure(&e)))),
        Err(_) => Err(Check::fail(format!("{shown} {}", HttpError::Timeout(WAIT)))),
    }
}

/// The text of an `INFO` answer; a cluster answers one per node (the first is shown).
fn first_text(value: ::redis::Value) -> String {
    match value {
        ::redis::Value::Map(nodes) => nodes
            .into_iter()
            .next()
            .map(|(_, v)| first_text(v))
            .unwrap_or_default(),
        other => ::redis::from_redis_value::<String>(other).unwrap_or_default(),
    }
}

/// A field of an `INFO` answer (`redis_version:7.2.4`).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// Why Redis did not answer, in words an operator acts on.
fn redis_failure(e: &RedisError) -> String {
    if e.is_connection_refusal() {
        "refused the connection (is redis-server running?)".to_owned()
    } else if e.is_timeout() {
        format!("{} (wrong host, or a firewall?)", HttpError::Timeout(WAIT))
    } else if e.kind() == ::redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
    {
        format!("refused our credentials: {e} (the password in registry.redis?)")
    } else {
        format!("failed: {e}")
    }
}

/// This pod's entry in the registry: by the instance id the local API named, else by the
/// address it advertises (docs/registry.md, "How meshlet registers itself").
async fn registration_check(conn: &mut Conn, config: &Config, instance_id: Option<&str>) -> Check {
    let service = config.service.name.to_string();
    let keys = Keys::new(&config.registry.prefix.to_string());
    let read = schema::read_services(conn, &keys, std::slice::from_ref(&service), true);
    let instances = match tokio::time::timeout(WAIT, read).await {
        Ok(Ok(mut found)) => found.remove(&service).unwrap_or_default(),
        Ok(Err(e)) => return Check::fail(format!("reading {}: {e}", keys.instances_of(&service))),
        Err(_) => {
            return Check::fail(format!(
                "reading {}: {}",
                keys.instances_of(&service),
                HttpError::Timeout(WAIT)
            ))
        }
    };
    let advertised = advertised_address(config);
    let mine = match instance_id {
        Some(id) => instances.iter().find(|i| i.id == id),
        None => advertised
            .as_ref()
            .and_then(|a| instances.iter().find(|i| i.authority() == *a)),
    };
    let Some(instance) = mine else {
        let which = match (instance_id, &advertised) {
            (Some(id), _) => format!("{service}/{id}"),
            (None, Some(address)) => format!("{service} at {address}"),
            (None, None) => service.clone(),
        };
        let others = match instances.len() {
            0 => "no instance at all".to_owned(),
            n => format!("{n} other instance(s)"),
        };
        return Check::fail(format!(
            "no entry for {which} in {} ({others}; is meshlet running? the same registry.prefix?)",
            keys.instances_of(&service),
        ));
    };
    registered(&service, instance, schema::now_ms())
}

fn registered(service: &str, instance: &Instance, now_ms: u64) -> Check {
    let what = format!("{service}/{} at {}", instance.id, instance.authority());
    let expires_at = instance.expires_at.unwrap_or(0);
    if expires_at <= now_ms {
        return Check::fail(format!(
            "{what} expired {}s ago: heartbeats are not reaching Redis",
            (now_ms - expires_at) / 1000
        ));
    }
    let left = (expires_at - now_ms) / 1000;
    match instance.status {
        Status::Up => Check::pass(format!("{what}, up, expires in {left}s")),
        Status::Draining => Check::warn(format!(
            "{what}, draining (shutting down, or the app's health check fails), expires in {left}s"
        )),
    }
}

/// The address this pod registers under when none other is known: `service.advertise`,
/// else `$POD_IP:<inbound port>`, else `127.0.0.1:<inbound port>` (docs/registry.md).
fn advertised_address(config: &Config) -> Option<String> {
    if let Some(a) = &config.service.advertise {
        return Some(a.to_string());
    }
    let port = config.listen.inbound.0.port();
    match std::env::var("POD_IP") {
        Ok(ip) if !ip.is_empty() => Some(format!("{ip}:{port}")),
        _ => Some(format!("127.0.0.1:{port}")),
    }
}

/// The app answers `service.health` with a 2xx; without a health path, any answer to `GET /`
/// shows it is up.
async fn app_check(config: &Config) -> Check {
    let Some(app) = &config.service.app else {
        return Check::skip("no service.app");
    };
    let app = &app.0;
    let Some(client) = AppClient::new(app, config.service.protocol, 0) else {
        return Check::fail(format!("service.app `{app}` has no host:port"));
    };
    let path = config
        .service
        .health
        .as_ref()
        .map_or_else(|| "/".to_owned(), |p| p.to_string());
    let Some(uri) = client.uri(&path) else {
        return Check::fail(format!("`{path}` is not a path"));
    };
    let Ok(req) = Request::get(uri.clone())
        .header(USER_AGENT, "meshlet-doctor")
        .body(Full::default())
    else {
        return Check::fail(format!("cannot build GET {uri}"));
    };
    match client.status(req, WAIT).await {
        Ok(status) if config.service.health.is_none() => Check::pass(format!(
            "GET {uri} answered {status} (no service.health to judge by)"
        )),
        Ok(status) if status.is_success() => Check::pass(format!("GET {uri} answered {status}")),
        Ok(status) => Check::fail(format!("GET {uri} answered {status}: unhealthy")),
        Err(AppError::Connect(why)) if why.to_lowercase().contains("refused") => Check::fail(
            format!("{uri} refused the connection (is the app running on service.app?)"),
        ),
        Err(AppError::Timeout(_)) => Check::fail(format!("GET {uri} {}", HttpError::Timeout(WAIT))),
        Err(e) => Check::fail(format!("GET {uri}: {e}")),
    }
}

/// This clock against Redis's `TIME`, taking the round trip's middle as the moment Redis
/// read its clock.
async fn clock_check(conn: &mut Conn) -> Check {
    let before = SystemTime::now();
    let command = ::redis::cmd("TIME");
    let time = command.query_async::<(u64, u64)>(conn);
    let (seconds, micros) = match tokio::time::timeout(WAIT, time).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Check::fail(format!("Redis TIME failed: {e}")),
        Err(_) => return Check::fail(format!("Redis TIME {}", HttpError::Timeout(WAIT))),
    };
    let after = SystemTime::now();
    let micros_of = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i128)
    };
    let local = (micros_of(before) + micros_of(after)) / 2;
    let remote = seconds as i128 * 1_000_000 + micros as i128;
    skew_check(remote - local)
}

/// The verdict on `skew_us` (Redis minus this clock, microseconds).
fn skew_check(skew_us: i128) -> Check {
    let off = Duration::from_micros(skew_us.unsigned_abs().min(u64::MAX as u128) as u64);
    let direction = if skew_us > 0 { "behind" } else { "ahead of" };
    let what = format!(
        "this clock is {:.3}s {direction} Redis's",
        off.as_secs_f64()
    );
    if off > SKEW_FAIL {
        Check::fail(format!(
            "{what}: over {}s, service tokens and registry expiry go wrong (sync with NTP)",
            SKEW_FAIL.as_secs()
        ))
    } else if off > SKEW_WARN {
        Check::warn(format!(
            "{what}: over {}s (sync with NTP)",
            SKEW_WARN.as_secs()
        ))
    } else {
        Check::pass(format!("within {}ms of Redis's", off.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    #[test]
    fn a_check_is_one_line_with_its_name_padded() {
        let check = Check::fail("redis://127.0.0.1:6379/0 refused\nthe connection");
        assert_eq!(
            line("redis", &check, Term::PLAIN),
            "✗ redis        redis://127.0.0.1:6379/0 refused the connection"
        );
    }

    #[test]
    fn skew_thresholds() {
        assert_eq!(skew_check(3_000).mark, Mark::Pass);
        assert_eq!(skew_check(-1_500_000).mark, Mark::Warn);
        let fail = skew_check(6_200_000);
        assert_eq!(fail.mark, Mark::Fail);
        assert!(
            fail.detail
                .starts_with("this clock is 6.200s behind Redis's"),
            "{}",
            fail.detail
        );
    }

    #[test]
    fn registration_verdicts() {
        let mut i = Instance {
            id: "orders-abc123".into(),
            host: "127.0.0.1".into(),
            port: 15006,
            version: String::new(),
            status: Status::Up,
            protocol: Protocol::Http1,
            metadata: serde_json::json!({}),
            registered_at: 0,
            last_heartbeat: 0,
            expires_at: Some(40_000),
        };
        let ok = registered("orders", &i, 10_000);
        assert_eq!(ok.mark, Mark::Pass);
        assert_eq!(
            ok.detail,
            "orders/orders-abc123 at 127.0.0.1:15006, up, expires in 30s"
        );
        i.status = Status::Draining;
        assert_eq!(registered("orders", &i, 10_000).mark, Mark::Warn);
        assert_eq!(registered("orders", &i, 45_000).mark, Mark::Fail);
    }

    #[test]
    fn the_summary_counts_each_verdict() {
        let mut report = Report::new(Term::PLAIN);
        report.counts = [5, 2, 1, 0];
        assert_eq!(report.summary(), "5 passed, 2 warnings, 1 failed");
        assert_eq!(
            info_field("# Server\r\nredis_version:7.2.4\r\n", "redis_version"),
            Some("7.2.4")
        );
        assert_eq!(
            local("0.0.0.0:15020".parse().unwrap()),
            "127.0.0.1:15020".parse().unwrap()
        );
    }
}
