//! What meshlets publish to each other over Redis, and store in a room's history: the
//! [`Envelope`] (JSON, `id` first so the publish script can put the `offset` in front) and
//! its [`Op`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::realtime::delivery::Target;

/// What a message or membership change does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Deliver a message.
    #[default]
    Message,
    /// Server-side join of `room`.
    Join,
    /// Server-side leave of `room`.
    Leave,
}

/// What meshlets publish to each other (and store in history, without `offset`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// History offset; set by Redis, first so the publish script can prepend it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// Message id (UUIDv7).
    pub id: String,
    /// Recipients.
    pub to: Target,
    /// Message, join or leave.
    #[serde(default)]
    pub op: Op,
    /// The room of a join or leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Event name.
    #[serde(default)]
    pub event: String,
    /// Payload.
    #[serde(default)]
    pub data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_starts_with_id_so_the_script_can_prepend_the_offset() {
        let e = Envelope {
            offset: None,
            id: "x".into(),
            to: Target::Room("r".into()),
            op: Op::Message,
            room: None,
            event: "e".into(),
            data: serde_json::json!(1),
        };
        let text = serde_json::to_string(&e).expect("serializes");
        assert!(text.starts_with(r#"{"id":"#), "{text}");
        let with_offset = format!(r#"{{"offset":"1-0",{}"#, &text[1..]);
        let back: Envelope = serde_json::from_str(&with_offset).expect("parses");
        assert_eq!(back.offset.as_deref(), Some("1-0"));
        assert_eq!(back.to, Target::Room("r".into()));
    }
}
