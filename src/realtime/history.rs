//! Room history kept in memory for a hub without Redis (one meshlet): the same offsets
//! (`ms-seq`) and the same recovery rule as the Redis streams of [`super::cluster`], capped
//! at `history.size` entries per room and dropped `history.ttl` after a room's last message.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::cluster::{Envelope, Recovery};
use super::delivery::Offset;

struct Log {
    entries: VecDeque<(Offset, Envelope)>,
    touched: Instant,
}

/// Per-room history in memory.
pub struct LocalHistory {
    size: usize,
    ttl: Duration,
    last: Mutex<(Offset, HashMap<String, Log>)>,
}

impl LocalHistory {
    /// History of `size` entries per room (0 = off) living `ttl` after the last message.
    pub fn new(size: u32, ttl: Duration) -> Self {
        LocalHistory {
            size: size as usize,
            ttl,
            last: Mutex::new((Offset::ZERO, HashMap::new())),
        }
    }

    /// Assigns the next offset to a room message, stores it, and hands it to `deliver`
    /// while the history is locked, so a concurrent join sees it either in history or
    /// live (never neither). Without history, only delivers.
    pub fn publish(
        &self,
        room: &str,
        mut envelope: Envelope,
        deliver: impl FnOnce(Envelope),
    ) -> Option<String> {
        if self.size == 0 {
            deliver(envelope);
            return None;
        }
        let mut guard = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (last, rooms) = &mut *guard;
        *last = last.next(now_ms());
        let offset = *last;
        envelope.offset = Some(offset.to_string());
        let log = rooms.entry(room.to_owned()).or_insert_with(|| Log {
            entries: VecDeque::new(),
            touched: Instant::now(),
        });
        log.touched = Instant::now();
        log.entries.push_back((offset, envelope.clone()));
        while log.entries.len() > self.size {
            log.entries.pop_front();
        }
        deliver(envelope);
        Some(offset.to_string())
    }

    /// The same rule as Redis: recovered only when `since` is still held.
    pub fn recover(&self, room: &str, since: Option<&str>) -> Recovery {
        let mut guard = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (_, rooms) = &mut *guard;
        let ttl = self.ttl;
        rooms.retain(|_, log| log.touched.elapsed() < ttl);
        let Some(log) = rooms.get(room) else {
            return Recovery::default();
        };
        let mut recovery = Recovery {
            latest: log.entries.back().map(|(o, _)| *o),
            ..Recovery::default()
        };
        let Some(since) = since.and_then(Offset::parse) else {
            return recovery;
        };
        if let Some(pos) = log.entries.iter().position(|(o, _)| *o == since) {
            recovery.recovered = true;
            recovery.missed = log
                .entries
                .iter()
                .skip(pos + 1)
                .map(|(_, e)| e.clone())
                .collect();
        }
        recovery
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::cluster::Op;
    use crate::realtime::delivery::Target;

    fn envelope(n: i64) -> Envelope {
        Envelope {
            offset: None,
            id: n.to_string(),
            to: Target::Room("r".into()),
            op: Op::Message,
            room: None,
            event: "e".into(),
            data: n.into(),
        }
    }

    #[test]
    fn recovers_what_is_still_held() {
        let h = LocalHistory::new(3, Duration::from_secs(60));
        let offsets: Vec<String> = (0..5)
            .filter_map(|n| h.publish("r", envelope(n), |_| {}))
            .collect();
        let r = h.recover("r", Some(&offsets[2]));
        assert!(r.recovered);
        assert_eq!(r.missed.len(), 2);
        assert_eq!(r.missed[0].data, 3);
        let trimmed = h.recover("r", Some(&offsets[0]));
        assert!(!trimmed.recovered);
        assert_eq!(
            trimmed.latest.map(|o| o.to_string()),
            Some(offsets[4].clone())
        );
        assert!(!h.recover("other", Some(&offsets[4])).recovered);
    }
}
