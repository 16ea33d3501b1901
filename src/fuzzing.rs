//! Entry points for the cargo-fuzz targets in `fuzz/` (docs/reliability.md, "Fuzzing"):
//! one function per target, taking the fuzzer's bytes and handing them to the real parsers
//! of the modules below. Each checks a property of the answer where one is cheap (a parsed
//! duration prints and parses to itself, a verified token names who signed it, a stripped
//! head holds no hop-by-hop header), so a wrong answer fails a run as loudly as a panic.
//!
//! Compiled only with the `fuzzing` feature, which `fuzz/Cargo.toml` turns on: the normal
//! build carries none of it. The asserts here are the point of the module: a failed one is
//! a finding, reported by the fuzzer with the input that caused it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use serde_json::Value;

use crate::config::{ByteSize, Config, Dur, LoadedConfig, Secret};
use crate::events::envelope::{self, Entry};
use crate::identity::token::Keys;
use crate::proxy::destination::RoutingTable;
use crate::proxy::headers;
use crate::realtime::frames::{self, ClientFrame};
use crate::registry::hygiene::{Hygiene, OwnListeners};
use crate::registry::{static_instances, Instance, Snapshot};
use crate::telemetry::metrics::Metrics;
use crate::wire::grpc;

/// The fuzzer's bytes as lines, each split at its first `sep` into a name and a value
/// (a line without one is a name with an empty value).
fn pairs(data: &[u8], sep: u8) -> impl Iterator<Item = (&[u8], &[u8])> {
    data.split(|b| *b == b'\n')
        .map(move |line| match line.iter().position(|b| *b == sep) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &line[line.len()..]),
        })
}

/// Config load and validation from YAML text (`${ENV}` expanded as at start), then, for a
/// valid config, its warnings, its `/v1/config` JSON and a routing table built from it.
pub fn config_load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = LoadedConfig::from_text(text, "<fuzz>") else {
        return;
    };
    let again = LoadedConfig::from_text(text, "<fuzz>");
    assert!(
        again.as_ref().is_ok_and(|a| a.hash == loaded.hash),
        "the same text loads the same way twice"
    );
    let config = &loaded.config;
    let _ = loaded.warnings();
    assert!(
        serde_json::to_value(config).is_ok(),
        "a loaded config shows as JSON"
    );
    // A `services.X.auth.file` would make the build read whatever file the fuzzer named.
    if config
        .services
        .values()
        .any(|s| s.auth.as_ref().is_some_and(|a| a.file.is_some()))
    {
        return;
    }
    let table = build_table(config, &Snapshot::default(), &Hygiene::default());
    for name in config.services.keys() {
        assert!(
            table.by_host(name).is_some(),
            "services.{name} is a destination"
        );
    }
}

fn build_table(config: &Config, snapshot: &Snapshot, hygiene: &Hygiene) -> RoutingTable {
    // A fresh registry per build: metric label sets must not pile up over a long run.
    let metrics = Metrics::new();
    let snapshot = snapshot.with_statics(&static_instances(&config.registry));
    let empty = RoutingTable::empty(config);
    RoutingTable::build(config, &snapshot, &empty, &metrics, None, hygiene)
}

/// Durations, sizes and `${ENV}` expansion (src/config/units.rs): a value that parses
/// prints as text that parses to the same value.
pub fn units(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = text.parse::<Dur>() {
        assert!(d <= Dur::MAX, "{text:?} parsed over the maximum");
        let shown = serde_json::to_value(d);
        let shown = shown.as_ref().ok().and_then(Value::as_str);
        let back = shown.map(str::parse::<Dur>);
        assert!(
            matches!(back, Some(Ok(b)) if b == d),
            "{text:?} -> {d:?} -> {shown:?} -> {back:?}"
        );
    }
    if let Ok(size) = text.parse::<ByteSize>() {
        let shown = serde_json::to_value(size);
        let shown = shown.as_ref().ok().and_then(Value::as_str);
        let back = shown.map(str::parse::<ByteSize>);
        assert!(
            matches!(back, Some(Ok(b)) if b == size),
            "{text:?} -> {size:?} -> {shown:?} -> {back:?}"
        );
    }
    // A fixed environment: `A` is set, nothing else is.
    let lookup = |name: &str| (name == "A").then(|| "value-of-a".to_owned());
    let expanded = crate::config::expand_with(text, lookup);
    if !text.contains("${") {
        assert_eq!(
            expanded.as_deref(),
            Ok(text),
            "text without `${{` is kept as it is"
        );
    }
    if let Ok(out) = expanded {
        // Each `${…}` is replaced by at most the longest of its value and its fallback.
        assert!(out.len() <= text.len() + text.matches("${").count() * 10);
    }
}

/// A registry instance hash (lines of `field=value`; the first line is `service/id`) as
/// the watcher reads it, screened by hygiene and built into a routing table: an instance
/// that passes hygiene becomes exactly one endpoint, at its own authority.
pub fn registry_endpoint(data: &[u8]) {
    let mut lines = pairs(data, b'=');
    let Some((head, _)) = lines.next() else {
        return;
    };
    let head = String::from_utf8_lossy(head);
    let (service, id) = head.split_once('/').unwrap_or((&head, "i-1"));
    let hash: HashMap<String, String> = lines
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    let Some(instance) = Instance::from_hash(id, &hash, u64::MAX) else {
        return;
    };
    assert!(!instance.host.is_empty() && instance.port != 0);
    let hygiene = Hygiene {
        allow_loopback: false,
        own: OwnListeners {
            bound: vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15006))],
            local_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))],
            registration: None,
        },
    };
    let verdict = hygiene.check(service, &instance);
    let config = fixed_config();
    let snapshot = Snapshot {
        services: BTreeMap::from([(service.to_owned(), vec![instance.clone()])]),
        redis_read_at: 1,
    };
    let table = build_table(&config, &snapshot, &hygiene);
    let destination = table.by_host(service);
    if verdict.is_ok() {
        let Some(destination) = destination else {
            panic!("an instance that passes hygiene is routed to: {instance:?}");
        };
        // Beside the fixed config's static entries (ids `static:…`, never a valid name).
        let mine: Vec<_> = destination
            .endpoints
            .iter()
            .filter(|e| e.id == instance.id)
            .collect();
        assert_eq!(mine.len(), 1, "{instance:?}");
        assert_eq!(mine[0].authority.as_str(), instance.authority());
    } else if let Some(destination) = destination {
        let dialled = destination.endpoints.iter().any(|e| e.id == instance.id);
        assert!(
            !dialled,
            "a rejected instance is never dialled: {instance:?}"
        );
    }
}

const FIXED_CONFIG: &str = "\
service: {name: orders}
registry:
  static:
    inventory: [\"10.0.0.1:9001\"]
    Billing.v2: [\"10.0.0.2:9002\"]
routes:
  - {prefix: /api/inventory, service: inventory, strip_prefix: true}
  - {prefix: /api, service: Billing.v2}
  - {prefix: /api/inventory/v2, service: inventory}
  - {prefix: /, service: inventory}
  - {prefix: /ü, service: inventory, strip_prefix: true}
";

fn fixed_config() -> Config {
    match LoadedConfig::from_text(FIXED_CONFIG, "<fuzz>") {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("the fixed config loads: {e}"),
    }
}

thread_local! {
    static FIXED_TABLE: RefCell<Option<(Config, RoutingTable)>> = const { RefCell::new(None) };
}

/// Route matching on a fixed table: the first line is the request target (absolute or
/// origin form), the second the `Host` header. The host is found as the outbound side
/// finds it, then by name; the path's route is the longest prefix that starts it.
pub fn route_match(data: &[u8]) {
    let mut lines = data.splitn(2, |b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let host = lines.next();
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let mut request = http::Request::new(());
    *request.uri_mut() = uri;
    if let Some(value) = host.and_then(|h| HeaderValue::from_bytes(h).ok()) {
        request.headers_mut().insert(HOST, value);
    }
    FIXED_TABLE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (config, table) = cell.get_or_insert_with(|| {
            let config = fixed_config();
            let table = build_table(&config, &Snapshot::default(), &Hygiene::default());
            (config, table)
        });
        if let Some(name) = crate::proxy::outbound::request_host(&request) {
            // docs/registry.md: the name as written, else folded to lower case.
            let lower = name.to_ascii_lowercase();
            let known = ["inventory", "Billing.v2"];
            match table.by_host(name) {
                Some(d) => assert!(*d.name == *name || *d.name == *lower, "{name:?}"),
                None => assert!(
                    !known.contains(&name) && !known.contains(&&*lower),
                    "{name:?}"
                ),
            }
        }
        let path = request.uri().path();
        let expected = config
            .routes
            .iter()
            .filter(|r| path.starts_with(r.prefix.as_str()))
            .max_by_key(|r| r.prefix.len());
        match (table.by_path(path), expected) {
            (Some((destination, strip)), Some(route)) => {
                assert_eq!(&*destination.name, route.service.0.as_str(), "{path:?}");
                let want = if route.strip_prefix {
                    route.prefix.len()
                } else {
                    0
                };
                assert_eq!(strip, want, "{path:?}");
                assert!(path.is_char_boundary(strip), "{path:?}");
            }
            (None, None) => {}
            (got, want) => panic!("{path:?}: got {:?}, want {want:?}", got.map(|g| g.1)),
        }
    });
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const TOKEN_TTL: Duration = Duration::from_secs(60);
const SECRETS: [&str; 2] = [
    "fuzzing-secret-number-one-32-bytes!!",
    "fuzzing-secret-number-two-32-bytes!!",
];

fn fuzz_keys() -> Keys {
    let secrets = SECRETS.map(Secret::from);
    match Keys::new(&secrets, TOKEN_TTL) {
        Some(keys) => keys,
        None => panic!("fixed HS256 secrets make keys"),
    }
}

/// Token parsing and verification. The first byte picks what the rest is: a token as it
/// arrives (never valid: the fuzzer does not know the secret), claims signed with the
/// second secret (verified only when every claim is within bounds, and then `iss` is the
/// caller), or `caller\naudience` signed by meshlet itself (verified for that audience only).
pub fn token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = fuzz_keys();
    match mode % 3 {
        0 => {
            if let Ok(value) = HeaderValue::from_bytes(rest) {
                assert!(
                    keys.verify(Some(&value), "orders").is_err(),
                    "forged: {value:?}"
                );
            }
        }
        1 => {
            let Ok(claims) = serde_json::from_slice::<Value>(rest) else {
                return;
            };
            let Ok(key) = jsonwebtoken::EncodingKey::from_secret(SECRETS[1].as_bytes()) else {
                return;
            };
            let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            let Ok(token) = jsonwebtoken::encode(&header, &claims, &key) else {
                return;
            };
            let Ok(value) = HeaderValue::from_str(&token) else {
                return;
            };
            let now = unix_now();
            let verdict = keys.verify(Some(&value), "orders");
            if let Ok(caller) = verdict {
                assert_eq!(claims["iss"].as_str(), Some(caller.as_str()));
                let aud = &claims["aud"];
                assert!(
                    aud.as_str() == Some("orders")
                        || aud
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("orders"))),
                    "{aud}"
                );
                let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64())
                else {
                    panic!("verified without iat and exp: {claims}");
                };
                assert!(iat <= now + 6, "iat {iat} ahead of now {now}");
                assert!(exp + 6 >= now, "exp {exp} before now {now}");
                assert!(
                    exp >= iat && exp - iat <= TOKEN_TTL.as_secs() + 5,
                    "{claims}"
                );
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let (caller, audience) = text.split_once('\n').unwrap_or((&text, "orders"));
            let Some((value, exp)) = keys.sign(caller, audience) else {
                return;
            };
            assert!(exp > unix_now());
            let verdict = keys.verify(Some(&value), audience);
            assert_eq!(
                verdict.ok().as_deref(),
                Some(caller),
                "{caller:?} -> {audience:?}"
            );
            let other = format!("{audience}-other");
            assert!(keys.verify(Some(&value), &other).is_err());
        }
    }
}

/// Event type names, ids, trace parents and stream entries: the first byte picks. A stream
/// reply is RESP bytes as Redis would send them; every entry read from it makes an envelope
/// that is JSON and says what the entry holds.
pub fn event_envelope(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            if envelope::valid_type(&text) {
                assert!(text.len() <= 128 && !text.contains([':', '{', '}', ' ']));
            }
            if envelope::valid_event_id(&text) {
                assert!(
                    HeaderValue::from_str(&text).is_ok(),
                    "{text:?} travels in a header"
                );
            }
            // A child trace parent is one the next meshlet continues rather than restarts.
            let child = envelope::child_traceparent(&text);
            let mut head = HeaderMap::new();
            let value = HeaderValue::from_str(&child);
            assert!(value.is_ok(), "{child:?} is a header value");
            if let Ok(value) = value {
                head.insert("traceparent", value);
            }
            let next = crate::identity::trace::continue_trace(&mut head, 1.0);
            assert_eq!(
                Some(next.trace_id()),
                child.get(3..35),
                "{text:?} -> {child}"
            );
            let _ = envelope::id_ms(&text);
        }
        1 => {
            let Ok(reply) = redis::parse_redis_value(rest) else {
                return;
            };
            for entry in envelope::parse_read_reply(&reply)
                .into_iter()
                .chain(envelope::parse_entries(&reply))
            {
                check_envelope(&entry);
            }
        }
        _ => {
            let fields = pairs(rest, b'=')
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            check_envelope(&Entry {
                id: "1-0".to_owned(),
                fields,
            });
        }
    }
}

fn check_envelope(entry: &Entry) {
    let text = entry.envelope();
    if serde_json::from_str::<Value>(entry.get("payload")).is_err()
        && envelope::is_json(entry.get("payload").as_bytes()).is_ok()
    {
        // JSON by the grammar, out of serde_json's range (`1e4736`): the payload is passed
        // on as published, so the envelope is JSON by the grammar too, and everything else
        // in it is checked with a payload serde_json can hold.
        assert!(envelope::is_json(text.as_bytes()).is_ok(), "{text}");
        let mut fields = entry.fields.clone();
        fields.retain(|(k, _)| k != "payload");
        fields.insert(0, ("payload".to_owned(), "null".to_owned()));
        return check_envelope(&Entry {
            id: entry.id.clone(),
            fields,
        });
    }
    let parsed: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => panic!("the envelope of {entry:?} is not JSON ({e}): {text}"),
    };
    for field in ["event_id", "event_type", "timestamp", "source"] {
        assert_eq!(parsed[field].as_str(), Some(entry.get(field)), "{text}");
    }
    // A version is sent as the number it spells, or else as the text it is.
    let version = &parsed["version"];
    let shown = version.as_u64().map(|v| v.to_string());
    assert!(
        version.as_str() == Some(entry.get("version"))
            || shown.as_deref() == Some(entry.get("version")),
        "{text}"
    );
    let payload = entry.get("payload");
    match serde_json::from_str::<Value>(payload) {
        Ok(value) => assert!(same_json(&parsed["payload"], &value), "{text}"),
        Err(_) => assert!(
            parsed["payload"].as_str() == Some(payload)
                || envelope::is_json(payload.as_bytes()).is_ok(),
            "{text}"
        ),
    }
    let _ = entry.to_json();
}

/// JSON equality with floats compared to within rounding (serde_json's float parsing is
/// not exact to the last bit without its `float_roundtrip` feature).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ((x - y) / x.abs().max(y.abs())).abs() < 1e-12,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// A hub client's text frame: parsed or refused with a code; a publish's data comes back
/// unchanged in the `message` frame the hub sends for it, and the error frame for a refusal
/// is JSON naming that code.
pub fn hub_frames(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::parse(text) {
        Ok(ClientFrame::Publish { room, data, event }) => {
            let event = event.as_deref().unwrap_or("message");
            let sent = frames::message(Some(&room), Some("1-0"), event, &data);
            let back: Value = match serde_json::from_str(sent.as_str()) {
                Ok(v) => v,
                Err(e) => panic!("message frame is not JSON ({e}): {}", sent.as_str()),
            };
            assert_eq!(back["room"].as_str(), Some(room.as_str()));
            assert_eq!(back["event"].as_str(), Some(event));
            assert!(same_json(&back["data"], &data), "{}", sent.as_str());
            let _ = frames::valid_room(&room);
        }
        Ok(ClientFrame::Join { room, since }) => {
            let sent = frames::joined(&room, since.as_deref(), false);
            assert!(serde_json::from_str::<Value>(sent.as_str()).is_ok());
            let _ = frames::valid_room(&room);
        }
        Ok(ClientFrame::Leave { room }) => {
            let _ = frames::valid_room(&room);
        }
        Ok(ClientFrame::Ping) => {}
        Err(e) => {
            let code = e.code();
            let sent = frames::error(code, &e.to_string());
            let back: Value = match serde_json::from_str(sent.as_str()) {
                Ok(v) => v,
                Err(e) => panic!("error frame is not JSON ({e}): {}", sent.as_str()),
            };
            assert_eq!(back["code"].as_str(), Some(code));
        }
    }
}

/// The names every hop-by-hop strip removes.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
];

/// Hop-by-hop header handling on a head of `name: value` lines: after each strip, no
/// hop-by-hop header, no header a `Connection` value names and (inbound) nothing only
/// meshlet may say is left, and every other header keeps all of its values.
pub fn hop_by_hop(data: &[u8]) {
    let mut head = HeaderMap::new();
    for (name, value) in pairs(data, b':') {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim_ascii()),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) else {
            continue;
        };
        head.append(name, value);
    }
    // What a `Connection` header names, read as bytes: a token in any value counts.
    let named: Vec<HeaderName> = head
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    let close = named.iter().any(|n| n == "close");
    let hints = headers::connection_hints(&head);
    assert_eq!(hints.close, close, "close hint of {head:?}");
    assert_eq!(hints.upgrade, head.contains_key("upgrade"));
    assert_eq!(
        hints.transfer_encoding,
        head.contains_key("transfer-encoding")
    );

    // `te: trailers` may stay; `close` is taken as the option, never as a header's name
    // (src/proxy/headers.rs, `strip_connection`).
    let gone = |name: &HeaderName, mesh: bool| {
        HOP_BY_HOP.contains(&name.as_str())
            || (named.contains(name) && name != "te" && name != "close")
            || (mesh && name.as_str().starts_with("x-mesh-"))
    };
    let check = |before: &HeaderMap, after: &HeaderMap, mesh: bool| {
        for name in before.keys() {
            if gone(name, mesh) {
                assert!(
                    !after.contains_key(name),
                    "{name} left in {after:?} from {before:?}"
                );
            } else if name != "te" {
                let was: Vec<_> = before.get_all(name).iter().collect();
                let is: Vec<_> = after.get_all(name).iter().collect();
                assert_eq!(was, is, "{name} changed");
            }
        }
        for value in after.get_all("te") {
            assert!(
                value.as_bytes().eq_ignore_ascii_case(b"trailers"),
                "te: {value:?} left"
            );
        }
    };

    let mut stripped = head.clone();
    headers::strip_hop_by_hop(&mut stripped);
    check(&head, &stripped, false);

    let mut response = head.clone();
    headers::strip_response(&mut response, true);
    for name in response.keys() {
        assert!(!name.as_str().starts_with("x-mesh-") || name == "x-mesh-error");
    }
    let mut keep_none = head.clone();
    headers::strip_response(&mut keep_none, false);
    check(&head, &keep_none, true);

    let peer = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let mut inbound = head.clone();
    headers::strip_inbound(&mut inbound, Some(peer));
    for name in inbound.keys() {
        // `x_mesh_caller` reaches a CGI-style app as `x-mesh-caller` would.
        let dashed = name.as_str().replace('_', "-");
        let underscored = dashed != name.as_str();
        let meshlets_own =
            dashed.starts_with("x-mesh-") && (underscored || dashed != "x-mesh-token");
        assert!(!meshlets_own, "{name} reached the app");
        assert!(!dashed.starts_with("x-event-") && !dashed.starts_with("x-realtime-"));
        assert!(name != "proxy");
    }
    let forwarded: Vec<_> = inbound.get_all("x-forwarded-for").iter().collect();
    assert_eq!(forwarded.len(), 1, "one x-forwarded-for");
    assert!(forwarded[0].as_bytes().ends_with(b"10.1.2.3"));
    let _ = headers::meshlet_hops(&head);
}

/// `grpc-status` and `grpc-timeout` values (the two lines of the input): a status is a
/// number; a timeout is 1-8 digits and one unit letter, and means what the spec says.
pub fn grpc_values(data: &[u8]) {
    let mut lines = data.splitn(2, |b| *b == b'\n');
    let status = lines.next().unwrap_or_default();
    let timeout = lines.next().unwrap_or_default();
    let mut head = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(status) {
        head.insert("grpc-status", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(timeout) {
        head.insert("grpc-timeout", v);
    }
    if let Some(raw) = head.get("grpc-status").map(HeaderValue::as_bytes) {
        let digits = raw.trim_ascii();
        if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
            let want = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok());
            assert_eq!(grpc::status(&head), want);
        }
    }
    let _ = grpc::is_grpc(&head);
    let Some(raw) = head.get("grpc-timeout").map(HeaderValue::as_bytes) else {
        return;
    };
    let parsed = grpc::timeout(&head);
    let Some((&unit, digits)) = raw.split_last() else {
        assert!(parsed.is_none());
        return;
    };
    // The spec allows 8 digits; more are read too (saturating), a sign or space never.
    let number = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
        .flatten();
    let (Some(n), true) = (number, b"HMSmun".contains(&unit)) else {
        assert!(
            parsed.is_none(),
            "{:?} accepted as {parsed:?}",
            String::from_utf8_lossy(raw)
        );
        return;
    };
    let want = match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        _ => Duration::from_nanos(n),
    };
    assert_eq!(parsed, Some(want), "{:?}", String::from_utf8_lossy(raw));
}
