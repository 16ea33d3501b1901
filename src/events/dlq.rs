//! Dead letters for operators: list `{prefix}:dlq:{type}` a page at a time, and replay
//! entries to their stream (same event id, no dedupe, original fields only), each replay
//! and its removal from the DLQ one script. Writing dead letters is delivery's job
//! ([`super::deliver`]).

use std::time::Duration;

use crate::control::redis::Conn;
use redis::{RedisError, Value};

use super::envelope::{as_array, as_string, parse_entries, Entry};
use super::publish::minid;
use super::scripts::REPLAY;
use crate::control::keys::Keys;

/// Largest page of a listing.
pub const MAX_PAGE: usize = 1000;
/// Entries replayed per round when replaying everything.
const REPLAY_PAGE: usize = 100;

/// One page of dead letters.
#[derive(Debug)]
pub struct Page {
    /// Entries, oldest first.
    pub entries: Vec<Entry>,
    /// Pass as `after` for the next page; `None` at the end.
    pub next: Option<String>,
}

/// Lists dead letters of `event_type` after `after` (exclusive), at most `count`.
pub async fn list(
    conn: &mut Conn,
    keys: &Keys,
    event_type: &str,
    after: Option<&str>,
    count: usize,
) -> Result<Page, RedisError> {
    let count = count.clamp(1, MAX_PAGE);
    let start = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
    let reply: Value = redis::cmd("XRANGE")
        .arg(keys.dead_letters(event_type))
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let entries = parse_entries(&reply);
    let next = (entries.len() == count)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Page { entries, next })
}

/// One replayed dead letter.
#[derive(Debug, serde::Serialize)]
pub struct Replayed {
    /// Its id in the DLQ (now removed).
    pub dlq_id: String,
    /// Its new id in the stream.
    pub stream_id: String,
    /// The event id, unchanged.
    pub event_id: String,
}

/// What a replay did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayReport {
    /// Entries put back on the stream.
    pub replayed: Vec<Replayed>,
    /// Ids asked for that the DLQ does not hold.
    pub missing: Vec<String>,
}

/// Replays the listed DLQ ids, or every entry present when the replay starts.
pub async fn replay(
    conn: &mut Conn,
    keys: &Keys,
    event_type: &str,
    ids: Option<&[String]>,
    retention: Duration,
) -> Result<ReplayReport, RedisError> {
    let mut report = ReplayReport::default();
    if let Some(ids) = ids {
        for id in ids {
            replay_one(conn, keys, event_type, id, retention, &mut report).await?;
        }
        return Ok(report);
    }
    // Everything up to the newest entry now: dead letters written meanwhile wait.
    let last: Value = redis::cmd("XREVRANGE")
        .arg(keys.dead_letters(event_type))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut *conn)
        .await?;
    let Some(end) = parse_entries(&last).pop().map(|e| e.id) else {
        return Ok(report);
    };
    let mut after: Option<String> = None;
    loop {
        let start = after
            .as_deref()
            .map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let page: Value = redis::cmd("XRANGE")
            .arg(keys.dead_letters(event_type))
            .arg(start)
            .arg(&end)
            .arg("COUNT")
            .arg(REPLAY_PAGE)
            .query_async(&mut *conn)
            .await?;
        let ids: Vec<String> = parse_entries(&page).into_iter().map(|e| e.id).collect();
        for id in &ids {
            replay_one(conn, keys, event_type, id, retention, &mut report).await?;
        }
        match ids.last() {
            Some(id) if ids.len() == REPLAY_PAGE => after = Some(id.clone()),
            _ => return Ok(report),
        }
    }
}

async fn replay_one(
    conn: &mut Conn,
    keys: &Keys,
    event_type: &str,
    id: &str,
    retention: Duration,
    report: &mut ReplayReport,
) -> Result<(), RedisError> {
    let reply: Value = REPLAY
        .key(keys.dead_letters(event_type))
        .key(keys.event_stream(event_type))
        .arg(id)
        .arg(minid(retention))
        .invoke_async(conn)
        .await?;
    match as_array(&reply) {
        Some([stream_id, event_id]) => report.replayed.push(Replayed {
            dlq_id: id.to_owned(),
            stream_id: as_string(stream_id).unwrap_or_default(),
            event_id: as_string(event_id).unwrap_or_default(),
        }),
        _ => report.missing.push(id.to_owned()),
    }
    Ok(())
}
