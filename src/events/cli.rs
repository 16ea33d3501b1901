//! `meshlet events ...`: operator commands that talk to Redis directly (no running meshlet
//! needed). Each prints JSON, one document a line, so its output pipes into `jq`.

use std::time::Duration;

use redis::Value;

use super::dlq;
use super::envelope::{
    is_json, parse_entries, parse_read_reply, valid_event_id, valid_type, NewEvent,
};
use super::publish::Publisher;
use crate::control::keys::Keys;
use crate::control::redis::Link;
use crate::control::redis::REDIS_IO_TIMEOUT;

/// How long `tail` blocks per read.
const TAIL_BLOCK: Duration = Duration::from_secs(5);

pub use crate::control::cli::CliError;

/// Where the commands act.
pub struct Target {
    /// Redis.
    pub redis: crate::control::redis::Target,
    /// Key names.
    pub keys: Keys,
    /// Trimming applied by publish and replay.
    pub retention: Duration,
    /// Dedupe window applied by publish.
    pub dedupe_window: Duration,
}

/// A valid event type, or the error `events` commands print.
pub(crate) fn check_type(event_type: &str) -> Result<(), CliError> {
    if valid_type(event_type) {
        Ok(())
    } else {
        Err(CliError::Input(format!(
            "invalid event type `{event_type}`: use 1-128 of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// The input of `events publish`, on either broker: a valid type, source (a service name)
/// and event id, and a JSON payload.
pub(crate) fn check_publish(
    event_type: &str,
    json: &str,
    event_id: Option<&str>,
    source: &str,
) -> Result<(), CliError> {
    check_type(event_type)?;
    if !valid_type(source) {
        return Err(CliError::Input(format!(
            "invalid source `{source}`: a service name, 1-128 of A-Z a-z 0-9 . _ -"
        )));
    }
    is_json(json.as_bytes()).map_err(|e| CliError::Input(format!("payload is not JSON: {e}")))?;
    match event_id {
        Some(id) if !valid_event_id(id) => Err(CliError::Input(format!("invalid event id `{id}`"))),
        _ => Ok(()),
    }
}

/// `events publish TYPE JSON [--id ID] [--version N] [--source S]`: prints
/// `{"event_id","stream_id","duplicate"}`. `source` names the publishing service, and with
/// the type scopes the dedupe key (`{prefix}:evid:{type}:{source}:{id}`), so it is a service
/// name: `[A-Za-z0-9._-]{1,128}`.
pub async fn publish(
    target: &Target,
    event_type: &str,
    json: &str,
    event_id: Option<String>,
    version: u32,
    source: &str,
) -> Result<(), CliError> {
    check_publish(event_type, json, event_id.as_deref(), source)?;
    let link = std::sync::Arc::new(Link::new(target.redis.clone()));
    let publisher = Publisher::new(
        link,
        target.keys.clone(),
        target.retention,
        target.dedupe_window,
    );
    let event = NewEvent::new(
        event_type,
        event_id,
        source,
        version,
        json.to_owned(),
        String::new(),
    );
    let published = publisher.publish(&event).await?;
    println!("{}", serde_json::json!(published));
    Ok(())
}

/// `events tail TYPE [--from ID] [--count N]`: prints entries as they arrive (without a
/// consumer group: tailing takes nothing from subscribers). `--from 0` starts at the oldest.
pub async fn tail(
    target: &Target,
    event_type: &str,
    from: Option<&str>,
    count: Option<usize>,
) -> Result<(), CliError> {
    check_type(event_type)?;
    let stream = target.keys.event_stream(event_type);
    let link = Link::with_response_timeout(target.redis.clone(), TAIL_BLOCK + REDIS_IO_TIMEOUT);
    let mut conn = link.get().await?;
    let mut last = match from {
        Some(id) => id.to_owned(),
        None => {
            // `$` resolved once, so entries added between two reads are not skipped.
            let newest: Value = redis::cmd("XREVRANGE")
                .arg(&stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            parse_entries(&newest)
                .pop()
                .map_or_else(|| "0-0".to_owned(), |e| e.id)
        }
    };
    let mut printed = 0usize;
    loop {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(TAIL_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last)
            .query_async(&mut conn)
            .await?;
        for entry in parse_read_reply(&reply) {
            println!("{}", entry.to_json());
            last = entry.id;
            printed += 1;
            if count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
        }
    }
}

/// `events dlq list TYPE [--after ID] [--count N]`: prints dead letters, oldest first.
pub async fn dlq_list(
    target: &Target,
    event_type: &str,
    after: Option<&str>,
    count: usize,
) -> Result<(), CliError> {
    check_type(event_type)?;
    let link = Link::new(target.redis.clone());
    let mut conn = link.get().await?;
    let page = dlq::list(&mut conn, &target.keys, event_type, after, count).await?;
    for entry in &page.entries {
        println!("{}", entry.to_json());
    }
    if let Some(next) = page.next {
        eprintln!("more: --after {next}");
    }
    Ok(())
}

/// `events dlq replay TYPE [--id ID ...]`: re-publishes dead letters (all without `--id`).
pub async fn dlq_replay(target: &Target, event_type: &str, ids: &[String]) -> Result<(), CliError> {
    check_type(event_type)?;
    let link = Link::new(target.redis.clone());
    let mut conn = link.get().await?;
    let selected = (!ids.is_empty()).then_some(ids);
    let report = dlq::replay(
        &mut conn,
        &target.keys,
        event_type,
        selected,
        target.retention,
    )
    .await?;
    for r in &report.replayed {
        println!("{}", serde_json::json!(r));
    }
    for id in &report.missing {
        eprintln!("not in the dead-letter stream: {id}");
    }
    eprintln!(
        "replayed {} dead letter(s) of {event_type}",
        report.replayed.len()
    );
    Ok(())
}
