//! What fan-out carries: the [`Delivery`] of one frame to every client a [`Target`] names,
//! and the history [`Offset`] it may have (a Redis stream id, or one of local history).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A position in a room's history: a Redis stream id (`ms-seq`), ordered numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    ms: u64,
    seq: u64,
}

impl Offset {
    /// Before every real offset.
    pub const ZERO: Offset = Offset { ms: 0, seq: 0 };

    /// Parses `ms-seq`; `None` for anything else (offsets are opaque to clients, so a
    /// foreign string simply cannot be recovered from).
    pub fn parse(s: &str) -> Option<Offset> {
        let (ms, seq) = s.split_once('-')?;
        Some(Offset {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The next offset after `self` for a given clock reading (local history).
    pub fn next(self, now_ms: u64) -> Offset {
        if now_ms > self.ms {
            Offset { ms: now_ms, seq: 0 }
        } else {
            Offset {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Who a message or a server-side membership change is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "To", into = "To")]
pub enum Target {
    /// Every client of the service.
    All,
    /// The members of a room.
    Room(String),
    /// Every connection of a user.
    User(String),
    /// One connection.
    Client(String),
}

/// The wire form of [`Target`]: `{"all":true}`, `{"room":"r"}`, `{"user":"u"}` or
/// `{"client":"c"}`, exactly one of them.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<String>,
}

impl TryFrom<To> for Target {
    type Error = String;
    fn try_from(to: To) -> Result<Target, String> {
        match (to.all, to.room, to.user, to.client) {
            (true, None, None, None) => Ok(Target::All),
            (false, Some(r), None, None) => Ok(Target::Room(r)),
            (false, None, Some(u), None) => Ok(Target::User(u)),
            (false, None, None, Some(c)) => Ok(Target::Client(c)),
            _ => Err(
                "`to` must be exactly one of {\"all\":true}, {\"room\":…}, {\"user\":…}, {\"client\":…}"
                    .to_owned(),
            ),
        }
    }
}

impl From<Target> for To {
    fn from(t: Target) -> To {
        match t {
            Target::All => To {
                all: true,
                ..To::default()
            },
            Target::Room(r) => To {
                room: Some(r),
                ..To::default()
            },
            Target::User(u) => To {
                user: Some(u),
                ..To::default()
            },
            Target::Client(c) => To {
                client: Some(c),
                ..To::default()
            },
        }
    }
}

/// One frame on its way to clients, shared by every recipient.
#[derive(Debug)]
pub struct Delivery {
    /// Room it was broadcast to (for dropping duplicates after a recovery).
    pub room: Option<Arc<str>>,
    /// Its history offset, when it has one.
    pub offset: Option<Offset>,
    /// The text frame.
    pub frame: Utf8Bytes,
}

impl Delivery {
    /// A frame that is not part of any room's history (errors, `joined`, user messages).
    pub fn plain(frame: Utf8Bytes) -> Arc<Delivery> {
        Arc::new(Delivery {
            room: None,
            offset: None,
            frame,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_order_numerically() {
        let a = Offset::parse("9-5").expect("valid");
        let b = Offset::parse("10-0").expect("valid");
        assert!(a < b);
        assert_eq!(b.to_string(), "10-0");
        assert!(Offset::parse("x").is_none());
        assert_eq!(b.next(10).to_string(), "10-1");
        assert_eq!(b.next(11).to_string(), "11-0");
    }

    #[test]
    fn targets_parse_exactly_one_of() {
        let t: Target = serde_json::from_str(r#"{"room":"r"}"#).expect("room");
        assert_eq!(t, Target::Room("r".into()));
        assert!(serde_json::from_str::<Target>(r#"{"room":"r","user":"u"}"#).is_err());
        assert!(serde_json::from_str::<Target>(r#"{}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Target::All).expect("serializes"),
            r#"{"all":true}"#
        );
    }
}
