//! The JSON text frames of docs/realtime.md: what a client sends (parsed into [`ClientFrame`], or
//! a [`FrameError`] answered with an `error` frame) and what the hub sends (built once per
//! message as shared bytes, so fan-out clones a reference count, not a string).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A frame a client sent.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    /// `{"type":"join","room":"r","since":"OFFSET"}`.
    Join {
        /// Room name.
        room: String,
        /// Last offset the client saw; asks for recovery.
        #[serde(default)]
        since: Option<String>,
    },
    /// `{"type":"leave","room":"r"}`.
    Leave {
        /// Room name.
        room: String,
    },
    /// `{"type":"publish","room":"r","data":…}` (an optional `event` names it).
    Publish {
        /// Room name.
        room: String,
        /// Payload, any JSON.
        #[serde(default)]
        data: Value,
        /// Event name; `message` when absent.
        #[serde(default)]
        event: Option<String>,
    },
    /// `{"type":"ping"}`.
    Ping,
}

const KNOWN_TYPES: &[&str] = &["join", "leave", "publish", "ping"];

/// Why a client frame was refused (answered with an `error` frame; the connection stays).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not JSON at all.
    #[error("frame is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// JSON without a known `type`.
    #[error("unknown frame type `{0}`; expected join, leave, publish or ping")]
    UnknownType(String),
    /// A known type with missing or mistyped fields.
    #[error("malformed `{kind}` frame: {source}")]
    Malformed {
        /// The frame's type.
        kind: String,
        /// What serde found.
        source: serde_json::Error,
    },
    /// A binary frame.
    #[error("binary frames are not supported; send JSON text frames")]
    Binary,
}

impl FrameError {
    /// The `code` of the error frame.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::NotJson(_) => "bad_json",
            FrameError::UnknownType(_) => "unknown_type",
            FrameError::Malformed { .. } => "bad_frame",
            FrameError::Binary => "binary_unsupported",
        }
    }
}

impl ClientFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let value: Value = serde_json::from_str(text).map_err(FrameError::NotJson)?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !KNOWN_TYPES.contains(&kind.as_str()) {
            return Err(FrameError::UnknownType(kind));
        }
        serde_json::from_value(value).map_err(|source| FrameError::Malformed { kind, source })
    }
}

/// Room names: 1-200 of `A-Z a-z 0-9 . _ : - @ = +`. Safe in Redis keys and in the local
/// API's paths without escaping.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 200
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-@=+".contains(&b))
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum HubFrame<'a> {
    Welcome {
        client_id: &'a str,
        user: Option<&'a str>,
    },
    Joined {
        room: &'a str,
        offset: Option<&'a str>,
        recovered: bool,
    },
    Left {
        room: &'a str,
    },
    Pong,
    Error {
        code: &'a str,
        message: &'a str,
    },
    Message {
        room: Option<&'a str>,
        offset: Option<&'a str>,
        event: &'a str,
        data: &'a Value,
    },
}

fn encode(frame: &HubFrame<'_>) -> Utf8Bytes {
    // Serializing these plain structs (strings and a serde_json::Value) cannot fail.
    serde_json::to_string(frame)
        .unwrap_or_else(|_| String::from("{}"))
        .into()
}

/// `{"type":"welcome","client_id","user"}`.
pub fn welcome(client_id: &str, user: Option<&str>) -> Utf8Bytes {
    encode(&HubFrame::Welcome { client_id, user })
}

/// `{"type":"joined","room","offset","recovered"}`.
pub fn joined(room: &str, offset: Option<&str>, recovered: bool) -> Utf8Bytes {
    encode(&HubFrame::Joined {
        room,
        offset,
        recovered,
    })
}

/// `{"type":"left","room"}`.
pub fn left(room: &str) -> Utf8Bytes {
    encode(&HubFrame::Left { room })
}

/// `{"type":"pong"}`.
pub fn pong() -> Utf8Bytes {
    encode(&HubFrame::Pong)
}

/// `{"type":"error","code","message"}`.
pub fn error(code: &str, message: &str) -> Utf8Bytes {
    encode(&HubFrame::Error { code, message })
}

/// `{"type":"message","room","offset","event","data"}`.
pub fn message(room: Option<&str>, offset: Option<&str>, event: &str, data: &Value) -> Utf8Bytes {
    encode(&HubFrame::Message {
        room,
        offset,
        event,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_frame() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"join","room":"r","since":"1-0"}"#),
            Ok(ClientFrame::Join { since: Some(_), .. })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"leave","room":"r"}"#),
            Ok(ClientFrame::Leave { .. })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"publish","room":"r","data":{"a":1}}"#),
            Ok(ClientFrame::Publish { .. })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        ));
    }

    #[test]
    fn refuses_bad_frames_with_codes() {
        let code = |t: &str| ClientFrame::parse(t).err().map(|e| e.code());
        assert_eq!(code("nope"), Some("bad_json"));
        assert_eq!(code(r#"{"type":"dance"}"#), Some("unknown_type"));
        assert_eq!(code(r#"{"room":"r"}"#), Some("unknown_type"));
        assert_eq!(code(r#"{"type":"join"}"#), Some("bad_frame"));
    }

    #[test]
    fn hub_frames_are_the_documented_json() {
        let m = message(Some("r"), Some("1-0"), "e", &serde_json::json!({"x":1}));
        assert_eq!(
            m.as_str(),
            r#"{"type":"message","room":"r","offset":"1-0","event":"e","data":{"x":1}}"#
        );
        assert_eq!(pong().as_str(), r#"{"type":"pong"}"#);
        assert!(valid_room("orders:42"));
        assert!(!valid_room("a b"));
        assert!(!valid_room("a/b"));
    }
}
