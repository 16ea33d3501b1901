//! What a lost pub/sub session would otherwise drop (docs/realtime.md, "Failure
//! behaviour"): room messages published while this meshlet's subscriber was reconnecting
//! were stored in their room's history but never reached its clients that stayed
//! connected, and those clients have no sign that they should rejoin with `since`.
//!
//! The subscriber therefore remembers, per room it holds, the last history offset it
//! dispatched ([`Resume`]). When a session begins it reads each held room's history after
//! that offset and dispatches it in order before any live message of the new session (the
//! live ones wait in the connection meanwhile); live messages the replay already covered
//! are dropped. A room the subscriber starts to hold gets the history's latest offset as
//! its starting point, so the first gap has a start too. Without history (`size: 0`)
//! there is nothing to read, and none of this runs.

use std::collections::HashMap;
use std::sync::Arc;

use redis::streams::StreamRangeReply;
use redis::AsyncCommands;

use super::{Cluster, ClusterError, Dispatch, Envelope, Op};
use crate::realtime::delivery::{Offset, Target};

/// Per held room: where the next gap starts, and up to where a replay already went.
#[derive(Default)]
pub(super) struct Resume {
    /// The last offset dispatched (or the history's latest when the room was first held).
    last: HashMap<Arc<str>, Offset>,
    /// After a replay: live messages up to this offset are ones it delivered already.
    replayed: HashMap<Arc<str>, Offset>,
}

impl Resume {
    /// Whether a live `envelope` is new (a replay did not deliver it), noting its offset.
    pub(super) fn admit(&mut self, envelope: &Envelope) -> bool {
        let Some((room, offset)) = room_offset(envelope) else {
            return true;
        };
        if let Some(done) = self.replayed.get(room) {
            if offset <= *done {
                return false;
            }
            // Offsets only grow: past the replay nothing can repeat any more.
            self.replayed.remove(room);
        }
        self.note(room, offset);
        true
    }

    fn note(&mut self, room: &str, offset: Offset) {
        match self.last.get_mut(room) {
            Some(last) if *last >= offset => {}
            Some(last) => *last = offset,
            None => {
                self.last.insert(Arc::from(room), offset);
            }
        }
    }

    /// Forgets a room the hub no longer holds.
    pub(super) fn forget(&mut self, room: &str) {
        self.last.remove(room);
        self.replayed.remove(room);
    }

    /// Forgets rooms the hub no longer holds.
    pub(super) fn retain(&mut self, holds: impl Fn(&str) -> bool) {
        self.last.retain(|room, _| holds(room));
        self.replayed.retain(|room, _| holds(room));
    }
}

fn room_offset(envelope: &Envelope) -> Option<(&str, Offset)> {
    match (&envelope.op, &envelope.to, envelope.offset.as_deref()) {
        (Op::Message, Target::Room(room), Some(offset)) => Some((room, Offset::parse(offset)?)),
        _ => None,
    }
}

impl Cluster {
    /// At the start of a session: every held room's history after its last offset,
    /// dispatched in order; rooms without a starting point get the history's latest.
    pub(super) async fn fill_gaps(
        &self,
        resume: &mut Resume,
        dispatch: &Dispatch,
    ) -> Result<(), ClusterError> {
        if self.history.size == 0 {
            return Ok(());
        }
        let (rooms, _) = self.hub.held();
        resume.retain(|room| rooms.iter().any(|r| &**r == room));
        let mut conn = self.conn().await?;
        for room in rooms {
            let key = self.keys.rt_history(&room);
            let Some(last) = resume.last.get(&room).copied() else {
                self.mark_start(&mut conn, &room, resume).await?;
                continue;
            };
            // `(` makes the start exclusive: the entries after `last`.
            let reply: StreamRangeReply = conn
                .xrange(&key, format!("({last}"), "+")
                .await
                .map_err(|e| self.failed(e))?;
            let mut replayed = 0usize;
            for entry in reply.ids {
                let (Some(offset), Some(mut envelope)) = (
                    Offset::parse(&entry.id),
                    entry
                        .get::<String>("m")
                        .and_then(|m| serde_json::from_str::<Envelope>(&m).ok()),
                ) else {
                    continue;
                };
                envelope.offset = Some(entry.id.clone());
                resume.note(&room, offset);
                resume.replayed.insert(room.clone(), offset);
                dispatch(envelope);
                replayed += 1;
            }
            if replayed > 0 {
                tracing::info!(room = %room, replayed, "realtime: room messages missed while the pub/sub session was down delivered from history");
            }
        }
        Ok(())
    }

    /// Rooms the subscriber has just started to hold start from their history's latest
    /// offset (`0-0` for an empty history: anything stored later is after it).
    pub(super) async fn mark_starts(
        &self,
        rooms: &[Arc<str>],
        resume: &mut Resume,
    ) -> Result<(), ClusterError> {
        if self.history.size == 0 || rooms.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        for room in rooms {
            if !resume.last.contains_key(room) {
                self.mark_start(&mut conn, room, resume).await?;
            }
        }
        Ok(())
    }

    async fn mark_start(
        &self,
        conn: &mut crate::control::redis::Conn,
        room: &Arc<str>,
        resume: &mut Resume,
    ) -> Result<(), ClusterError> {
        let reply: StreamRangeReply = conn
            .xrevrange_count(self.keys.rt_history(room), "+", "-", 1)
            .await
            .map_err(|e| self.failed(e))?;
        let latest = reply
            .ids
            .first()
            .and_then(|e| Offset::parse(&e.id))
            .or_else(|| Offset::parse("0-0"));
        if let Some(latest) = latest {
            resume.note(room, latest);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(room: &str, offset: &str) -> Envelope {
        serde_json::from_value(serde_json::json!({
            "offset": offset, "id": "x", "to": {"room": room}, "event": "e", "data": 1
        }))
        .expect("an envelope")
    }

    #[test]
    fn live_messages_a_replay_delivered_are_dropped_once() {
        let mut resume = Resume::default();
        assert!(resume.admit(&message("r", "10-0")));
        let room: Arc<str> = Arc::from("r");
        resume.note("r", Offset::parse("12-0").unwrap());
        resume
            .replayed
            .insert(room.clone(), Offset::parse("12-0").unwrap());
        assert!(!resume.admit(&message("r", "11-0")), "replayed already");
        assert!(!resume.admit(&message("r", "12-0")), "replayed already");
        assert!(resume.admit(&message("r", "13-0")));
        assert!(resume.replayed.is_empty());
        assert_eq!(resume.last[&room].to_string(), "13-0");
        assert!(resume.admit(&message("other", "1-0")), "another room");
    }

    #[test]
    fn the_last_offset_only_grows() {
        let mut resume = Resume::default();
        resume.note("r", Offset::parse("5-0").unwrap());
        resume.note("r", Offset::parse("4-0").unwrap());
        assert_eq!(resume.last["r"].to_string(), "5-0");
        resume.retain(|room| room != "r");
        assert!(resume.last.is_empty());
    }
}
