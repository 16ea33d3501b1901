//! The last [`RecentErrors::CAPACITY`] error answers meshlet gave itself (docs/errors.md
//! codes), newest first, for `GET /v1/stats` and the admin page. Recorded on the error
//! branches only, and only when the ring's lock is free: under a flood of refusals (429s
//! of a rate limit) the workers never wait on each other for it, and an error that finds
//! it taken is left out (the ring is a sample for people; the counters count them all).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// One error answer, as `/v1/stats` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecentError {
    /// When it was answered, RFC 3339 in UTC with milliseconds.
    pub time: String,
    /// The `destination` label (`-` when unrouted).
    pub destination: String,
    /// The docs/errors.md code.
    pub code: &'static str,
    /// The HTTP status of meshlet's answer.
    pub status: u16,
    /// The answer's message, cut to [`RecentErrors::MESSAGE_CHARS`] characters.
    pub message: String,
    /// The request's `x-request-id`.
    pub request_id: String,
}

/// A bounded ring of [`RecentError`]s, shared by every worker.
#[derive(Debug, Default)]
pub struct RecentErrors {
    ring: Mutex<VecDeque<(SystemTime, RecentError)>>,
}

impl RecentErrors {
    /// Errors kept; the oldest goes when one more arrives.
    pub const CAPACITY: usize = 50;
    /// A message longer than this is cut: an upstream's error text can be long.
    pub const MESSAGE_CHARS: usize = 300;

    /// Keeps one error answer, unless another worker is recording one at this moment.
    pub fn record(
        &self,
        destination: &str,
        code: &'static str,
        status: u16,
        message: &dyn std::fmt::Display,
        request_id: &str,
    ) {
        let mut ring = match self.ring.try_lock() {
            Ok(ring) => ring,
            // A poisoned lock only means a panic elsewhere mid-push; the ring is still whole.
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        let entry = RecentError {
            time: String::new(),
            destination: destination.to_owned(),
            code,
            status,
            message: message
                .to_string()
                .chars()
                .take(Self::MESSAGE_CHARS)
                .collect(),
            request_id: request_id.to_owned(),
        };
        if ring.len() == Self::CAPACITY {
            ring.pop_back();
        }
        ring.push_front((SystemTime::now(), entry));
    }

    /// The errors kept, newest first, with their times written out.
    pub fn newest_first(&self) -> Vec<RecentError> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .map(|(at, entry)| RecentError {
                time: humantime::format_rfc3339_millis(*at).to_string(),
                ..entry.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_fifty_newest_first_with_rfc3339_times() {
        let errors = RecentErrors::default();
        for i in 0..60 {
            errors.record("inventory", "timeout", 504, &format!("n{i}"), "rid");
        }
        let kept = errors.newest_first();
        assert_eq!(kept.len(), RecentErrors::CAPACITY);
        assert_eq!(kept[0].message, "n59");
        assert_eq!(kept[49].message, "n10");
        let time = &kept[0].time;
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
        assert_eq!(&time[10..11], "T");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let errors = RecentErrors::default();
        errors.record("-", "no_route", 404, &"é".repeat(1000), "");
        let kept = errors.newest_first();
        assert_eq!(kept[0].message.chars().count(), RecentErrors::MESSAGE_CHARS);
        assert_eq!((kept[0].code, kept[0].status), ("no_route", 404));
    }
}
