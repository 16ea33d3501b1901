//! An event as an AMQP message and back (docs/events.md, "RabbitMQ"): the body is the
//! payload byte for byte; the stored entry's other fields travel as headers of the same
//! names (`event_id`, `event_type`, `timestamp`, `source`, `version`, `traceparent`), with
//! `message_id` = event id, `type` = event type, persistent delivery. A message read back
//! becomes the same [`Entry`] the Redis path delivers, so the envelope, the DLQ listing and
//! the headers to the app are built by the same code.

use std::time::SystemTime;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

use crate::events::envelope::{Entry, NewEvent};

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The entry's fields other than the payload, in stored order: each is a header.
const EVENT_HEADERS: [&str; 6] = [
    "event_id",
    "event_type",
    "timestamp",
    "source",
    "version",
    "traceparent",
];

/// What a dead letter adds to the event's headers, in listing order.
pub const DEAD_LETTER_HEADERS: [&str; 5] =
    ["group", "reason", "attempts", "last_status", "failed_at"];

/// The header naming a dead letter (a UUIDv7: time-ordered) for listing and replay.
pub const DLQ_ID: &str = "dlq_id";

/// The quorum queue's count of earlier deliveries of this message that were returned.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// Properties of a new event's message.
pub fn event_properties(event: &NewEvent) -> BasicProperties {
    let fields = event.fields();
    let headers: Vec<(&str, &str)> = fields
        .iter()
        .filter(|(k, _)| *k != "payload")
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    properties(&headers)
}

/// Properties carrying `headers` (name, value) plus the standard ones derived from them.
pub fn properties(headers: &[(&str, &str)]) -> BasicProperties {
    let mut table = FieldTable::default();
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(now_secs());
    for &(name, value) in headers {
        match name {
            "event_id" => props = props.with_message_id(ShortString::from(value)),
            "event_type" => props = props.with_type(ShortString::from(value)),
            "source" => props = props.with_app_id(ShortString::from(value)),
            _ => {}
        }
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    props.with_headers(table)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A header as text (strings, or numbers a foreign producer may have sent).
pub fn header(props: &BasicProperties, name: &str) -> Option<String> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => integer(other).map(|n| n.to_string()),
    }
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

/// Earlier deliveries of this message returned to the queue (app failures requeued after
/// their backoff, a meshlet that died holding it): the attempt number is this plus one.
pub fn delivery_count(props: &BasicProperties) -> u64 {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(DELIVERY_COUNT))
        .and_then(integer)
        .map_or(0, |n| n.max(0) as u64)
}

/// The message as a stored entry named `id`: the event's fields in stored order, then the
/// dead-letter fields when present. A message from a producer that is not meshlet falls
/// back on `message_id`, `type` (or the routing key) and `app_id`.
pub fn entry(id: String, props: &BasicProperties, routing_key: &str, body: &[u8]) -> Entry {
    let fallback = |name: &str| -> String {
        let standard = match name {
            "event_id" => props.message_id().as_ref(),
            "event_type" => props.kind().as_ref(),
            "source" => props.app_id().as_ref(),
            _ => None,
        };
        match (name, standard) {
            (_, Some(s)) => s.as_str().to_owned(),
            ("event_type", None) => routing_key.to_owned(),
            ("version", None) => "1".to_owned(),
            _ => String::new(),
        }
    };
    let mut fields = Vec::with_capacity(13);
    for name in EVENT_HEADERS {
        let value = header(props, name).unwrap_or_else(|| fallback(name));
        if name == "traceparent" {
            fields.push((
                "payload".to_owned(),
                String::from_utf8_lossy(body).into_owned(),
            ));
        }
        fields.push((name.to_owned(), value));
    }
    for name in DEAD_LETTER_HEADERS {
        if let Some(value) = header(props, name) {
            fields.push((name.to_owned(), value));
        }
    }
    Entry { id, fields }
}

/// The event's own headers of `entry` (what a replay publishes again).
pub fn event_headers(entry: &Entry) -> Vec<(&'static str, &str)> {
    EVENT_HEADERS
        .into_iter()
        .map(|name| (name, entry.get(name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_the_round_trip() {
        let event = NewEvent::new(
            "trade.executed",
            Some("t-1".to_owned()),
            "orders",
            2,
            r#"{"px":1.5}"#.to_owned(),
            String::new(),
        );
        let props = event_properties(&event);
        assert_eq!(props.message_id().as_ref().map(|s| s.as_str()), Some("t-1"));
        assert_eq!(props.delivery_mode(), &Some(2));
        let e = entry(
            "x".into(),
            &props,
            "trade.executed",
            event.payload.as_bytes(),
        );
        let want: Vec<(String, String)> = event
            .fields()
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        assert_eq!(e.fields, want);
        assert_eq!(delivery_count(&props), 0);
    }

    #[test]
    fn a_foreign_message_falls_back_on_standard_properties() {
        let props = BasicProperties::default().with_message_id("m-1".into());
        let e = entry("x".into(), &props, "p.q", b"not json");
        assert_eq!(e.get("event_id"), "m-1");
        assert_eq!(e.get("event_type"), "p.q");
        assert_eq!(e.get("version"), "1");
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        assert_eq!(delivery_count(&props.with_headers(headers)), 3);
    }
}
