//! The event as stored (one stream entry, docs/events.md) and as delivered (the JSON envelope
//! POSTed to the app), plus the checks a publish must pass before it reaches Redis.

use std::time::SystemTime;

use redis::Value;

/// Longest `x-event-id` accepted: ids end up in Redis keys and headers.
pub const MAX_EVENT_ID: usize = 256;

/// Whether `name` is a valid event type: `[A-Za-z0-9._-]{1,128}`.
pub fn valid_type(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `id` is a usable event id: 1-256 visible ASCII characters (it names a Redis key
/// and travels in a header).
pub fn valid_event_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_EVENT_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `text` is one JSON document.
pub fn is_json(text: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<serde::de::IgnoredAny>(text).map(|_| ())
}

/// A new event, ready to be written.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// `x-event-id` / `Idempotency-Key`, else a UUIDv7.
    pub event_id: String,
    /// Stream it goes to.
    pub event_type: String,
    /// RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    /// The publishing service.
    pub source: String,
    /// `x-event-version`, default 1.
    pub version: u32,
    /// The JSON payload, byte for byte as published.
    pub payload: String,
    /// The publisher's W3C trace context, or empty.
    pub traceparent: String,
}

impl NewEvent {
    /// An event stamped now; `event_id` None makes a UUIDv7.
    pub fn new(
        event_type: &str,
        event_id: Option<String>,
        source: &str,
        version: u32,
        payload: String,
        traceparent: String,
    ) -> NewEvent {
        NewEvent {
            event_id: event_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            event_type: event_type.to_owned(),
            timestamp: now_rfc3339(),
            source: source.to_owned(),
            version,
            payload,
            traceparent,
        }
    }

    /// The entry's field/value pairs, in the order they are written (docs/events.md).
    pub fn fields(&self) -> [(&'static str, String); 7] {
        [
            ("event_id", self.event_id.clone()),
            ("event_type", self.event_type.clone()),
            ("timestamp", self.timestamp.clone()),
            ("source", self.source.clone()),
            ("version", self.version.to_string()),
            ("payload", self.payload.clone()),
            ("traceparent", self.traceparent.clone()),
        ]
    }
}

/// Now, RFC 3339 UTC with milliseconds (`2025-01-31T12:00:00.123Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Now in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One stream entry as read back: its id and its field/value pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Stream id (`ms-seq`).
    pub id: String,
    /// Field/value pairs in stream order.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// The value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The JSON envelope POSTed to the app: `{"event_id","event_type","timestamp","source",
    /// "version","payload"}`, the payload spliced in as the raw JSON text it was published
    /// as (not re-encoded). A payload written by a foreign producer that is not JSON is sent
    /// as a JSON string instead, so the envelope always parses.
    pub fn envelope(&self) -> String {
        let payload = self.get("payload");
        let mut out = String::with_capacity(payload.len() + 256);
        out.push_str("{\"event_id\":");
        push_json_string(&mut out, self.get("event_id"));
        out.push_str(",\"event_type\":");
        push_json_string(&mut out, self.get("event_type"));
        out.push_str(",\"timestamp\":");
        push_json_string(&mut out, self.get("timestamp"));
        out.push_str(",\"source\":");
        push_json_string(&mut out, self.get("source"));
        out.push_str(",\"version\":");
        let version = self.get("version");
        // A number only as JSON spells one: `001` is not (found by fuzzing), so it stays text.
        let number = !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_digit())
            && version.len() < 10
            && (version == "0" || !version.starts_with('0'));
        if number {
            out.push_str(version);
        } else {
            push_json_string(&mut out, version);
        }
        out.push_str(",\"payload\":");
        if is_json(payload.as_bytes()).is_ok() {
            out.push_str(payload.trim());
        } else {
            push_json_string(&mut out, payload);
        }
        out.push('}');
        out
    }

    /// The entry as a JSON object for operators (DLQ listings, `events tail`): every field,
    /// the payload embedded as JSON when it is JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("id".into(), self.id.clone().into());
        for (k, v) in &self.fields {
            let value = if k == "payload" {
                serde_json::from_str(v).unwrap_or_else(|_| v.clone().into())
            } else {
                v.clone().into()
            };
            map.insert(k.clone(), value);
        }
        serde_json::Value::Object(map)
    }
}

fn push_json_string(out: &mut String, s: &str) {
    // Serializing a &str to JSON cannot fail.
    out.push_str(&serde_json::Value::from(s).to_string());
}

/// A child of the publisher's trace context: same trace id and flags, a new span id. An
/// absent or malformed parent starts a new sampled trace. Well-formed means what W3C trace
/// context says and what the next meshlet's `identity::trace` accepts: lower-case hex, and
/// not version `ff` (an upper-case parent used to be copied, and the next hop then started
/// a new trace; found by fuzzing).
pub fn child_traceparent(parent: &str) -> String {
    let span = format!("{:016x}", fastrand::u64(1..));
    let parts: Vec<&str> = parent.trim().split('-').collect();
    let lower_hex = |p: &&str| p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let valid = parts.len() == 4
        && parts[0].len() == 2
        && parts[0] != "ff"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts.iter().all(lower_hex)
        && parts[1].bytes().any(|b| b != b'0');
    if valid {
        format!("00-{}-{span}-{}", parts[1], parts[3])
    } else {
        format!("00-{:032x}-{span}-01", fastrand::u128(1..))
    }
}

/// Reads entries from a stream reply: an array of `[id, [field, value, ...]]` (XRANGE,
/// XCLAIM, the entries of XAUTOCLAIM). Entries whose data is gone (nil) are skipped.
pub fn parse_entries(value: &Value) -> Vec<Entry> {
    let Some(items) = as_array(value) else {
        return Vec::new();
    };
    items.iter().filter_map(parse_entry).collect()
}

/// Reads one `[id, [field, value, ...]]`.
pub fn parse_entry(value: &Value) -> Option<Entry> {
    let pair = as_array(value)?;
    let id = as_string(pair.first()?)?;
    let raw = pair.get(1)?;
    let mut fields = Vec::new();
    match raw {
        Value::Map(kv) => {
            for (k, v) in kv {
                fields.push((as_string(k)?, as_string(v)?));
            }
        }
        other => {
            let flat = as_array(other)?;
            for kv in flat.chunks(2) {
                if let [k, v] = kv {
                    fields.push((as_string(k)?, as_string(v)?));
                }
            }
        }
    }
    Some(Entry { id, fields })
}

/// Reads an XREAD / XREADGROUP reply: `[[stream, [entries]]]` (or a map under RESP3);
/// nil (the BLOCK timed out) is no entries.
pub fn parse_read_reply(value: &Value) -> Vec<Entry> {
    match value {
        Value::Map(streams) => streams
            .iter()
            .flat_map(|(_, entries)| parse_entries(entries))
            .collect(),
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| as_array(s).and_then(|pair| pair.get(1)))
            .flat_map(parse_entries)
            .collect(),
        _ => Vec::new(),
    }
}

/// The items of an array (or set) reply.
pub fn as_array(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// A string, status or integer reply as text.
pub fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

/// An integer reply (or a string holding one).
pub fn as_int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => as_string(other)?.parse().ok(),
    }
}

/// The millisecond part of a stream id.
pub fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(payload: &str) -> Entry {
        Entry {
            id: "1-0".into(),
            fields: vec![
                ("event_id".into(), "e\"1".into()),
                ("event_type".into(), "t".into()),
                ("timestamp".into(), "2025-01-01T00:00:00.000Z".into()),
                ("source".into(), "orders".into()),
                ("version".into(), "2".into()),
                ("payload".into(), payload.into()),
                ("traceparent".into(), "".into()),
            ],
        }
    }

    #[test]
    fn envelope_embeds_the_payload_verbatim() {
        let e = entry(r#"{"b":1.50,"a":[1,2]}"#);
        assert_eq!(
            e.envelope(),
            r#"{"event_id":"e\"1","event_type":"t","timestamp":"2025-01-01T00:00:00.000Z","source":"orders","version":2,"payload":{"b":1.50,"a":[1,2]}}"#
        );
        let parsed: serde_json::Value =
            serde_json::from_str(&entry("not json").envelope()).expect("envelope is JSON");
        assert_eq!(parsed["payload"], "not json");
    }

    #[test]
    fn traceparent_continues_the_trace() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let child = child_traceparent(parent);
        assert!(child.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, parent);
        assert_eq!(child_traceparent("garbage").len(), 55);
    }

    #[test]
    fn a_version_with_leading_zeros_is_sent_as_text() {
        // Found by fuzzing (fuzz target event_envelope): `"version":001` is not JSON.
        for (version, want) in [
            ("001", serde_json::json!("001")),
            ("0", serde_json::json!(0)),
            ("12", serde_json::json!(12)),
        ] {
            let e = Entry {
                id: "1-0".into(),
                fields: vec![("version".into(), version.into())],
            };
            let parsed: serde_json::Value =
                serde_json::from_str(&e.envelope()).expect("envelope is JSON");
            assert_eq!(parsed["version"], want, "{version}");
        }
    }

    #[test]
    fn a_parent_the_next_hop_would_refuse_starts_a_new_trace() {
        // Found by fuzzing (fuzz target event_envelope): upper-case hex was copied.
        for parent in [
            "00-4bf92f3577b34dA6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let child = child_traceparent(parent);
            assert!(!child.contains("4bf92f3577b34"), "{parent} -> {child}");
            assert!(child
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || b.is_ascii_lowercase()));
        }
    }

    #[test]
    fn type_and_id_alphabets() {
        assert!(valid_type("trade.executed_v2-x"));
        assert!(!valid_type(""));
        assert!(!valid_type("a/b"));
        assert!(!valid_type(&"a".repeat(129)));
        assert!(valid_event_id("order-42:paid"));
        assert!(!valid_event_id("has space"));
    }
}
