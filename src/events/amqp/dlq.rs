//! Dead letters on RabbitMQ for operators (docs/events.md, "RabbitMQ"): this service's
//! `{prefix}.{service}.{type}.dlq`, listed and replayed through the same API and CLI as on
//! Redis Streams. A queue cannot be read without taking its messages, so both read the DLQ
//! on a channel of their own with `basic.get` (no ack) and close the channel at the end,
//! which returns every message not acked: a listing changes nothing, a replay acks what it
//! republished. Each dead letter is named by its `dlq_id` (a UUIDv7, so ids sort by time);
//! a replay republishes the event (original headers, same event id) to this service's
//! queue only, confirmed, before it acks the dead letter.

use std::collections::BTreeSet;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;

use super::connection::{bounded, AmqpError, Broker, AMQP_IO_TIMEOUT};
use super::message::{self, DLQ_ID};
use super::topology::{short, Names};
use crate::events::dlq::{Page, MAX_PAGE};
use crate::events::envelope::Entry;

/// Most dead letters one listing or replay reads.
pub const MAX_SCAN: u32 = 10_000;

/// Whether `id` can be a dead letter's id (a UUID as meshlet writes them).
pub fn valid_dlq_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// One replayed dead letter.
#[derive(Debug, serde::Serialize)]
pub struct Replayed {
    /// Its id in the DLQ (now removed).
    pub dlq_id: String,
    /// The event id, unchanged.
    pub event_id: String,
}

/// What a replay did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayReport {
    /// Dead letters put back on this service's queue.
    pub replayed: Vec<Replayed>,
    /// Ids asked for that the DLQ does not hold.
    pub missing: Vec<String>,
}

/// Lists this service's dead letters of `event_type` after `after`, oldest first.
pub async fn list(
    broker: &Broker,
    names: &Names,
    event_type: &str,
    after: Option<&str>,
    count: usize,
) -> Result<Page, AmqpError> {
    let count = count.clamp(1, MAX_PAGE);
    let channel = broker.channel().await?;
    let dlq = names.dead_letters(event_type);
    let read = read_all(&channel, &dlq).await;
    // Closing returns every message read: a listing takes nothing.
    let _ = bounded(channel.close(200, "dead letters listed".into())).await;
    let read = read?;
    settle(broker, &dlq, read.len()).await;
    let mut entries: Vec<Entry> = read
        .into_iter()
        .map(|(_, entry)| entry)
        .filter(|e| after.is_none_or(|a| e.id.as_str() > a))
        .collect();
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    let more = entries.len() > count;
    entries.truncate(count);
    let next = more.then(|| entries.last().map(|e| e.id.clone())).flatten();
    Ok(Page { entries, next })
}

/// Replays the listed dead letters, or all of them, to this service's queue.
pub async fn replay(
    broker: &Broker,
    names: &Names,
    event_type: &str,
    ids: Option<&[String]>,
) -> Result<ReplayReport, AmqpError> {
    let channel = broker.channel().await?;
    let replayed = replay_on(&channel, names, event_type, ids).await;
    let _ = bounded(channel.close(200, "dead letters replayed".into())).await;
    let (read, replayed) = replayed?;
    settle(
        broker,
        &names.dead_letters(event_type),
        read - replayed.len(),
    )
    .await;
    let mut report = ReplayReport {
        missing: Vec::new(),
        replayed,
    };
    if let Some(ids) = ids {
        let done: BTreeSet<&str> = report.replayed.iter().map(|r| r.dlq_id.as_str()).collect();
        report.missing = ids
            .iter()
            .filter(|id| !done.contains(id.as_str()))
            .cloned()
            .collect();
    }
    Ok(report)
}

async fn replay_on(
    channel: &Channel,
    names: &Names,
    event_type: &str,
    ids: Option<&[String]>,
) -> Result<(usize, Vec<Replayed>), AmqpError> {
    bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
    let queue = short(&names.queue(event_type))?;
    let wanted: Option<BTreeSet<&str>> = ids.map(|ids| ids.iter().map(String::as_str).collect());
    let mut replayed = Vec::new();
    let read = read_all(channel, &names.dead_letters(event_type)).await?;
    let total = read.len();
    for (message, entry) in read {
        if wanted
            .as_ref()
            .is_some_and(|w| !w.contains(entry.id.as_str()))
        {
            continue; // left unacked: returned when the channel closes
        }
        let props = message::properties(&message::event_headers(&entry));
        let confirm = bounded(channel.basic_publish(
            "".into(),
            queue.clone(),
            BasicPublishOptions::default(),
            entry.get("payload").as_bytes(),
            props,
        ))
        .await?;
        let confirmation = tokio::time::timeout(AMQP_IO_TIMEOUT, confirm)
            .await
            .map_err(|_| AmqpError::Timeout(AMQP_IO_TIMEOUT))??;
        if confirmation.is_nack() {
            return Err(AmqpError::Nacked);
        }
        bounded(message.ack(BasicAckOptions::default())).await?;
        replayed.push(Replayed {
            dlq_id: entry.id.clone(),
            event_id: entry.get("event_id").to_owned(),
        });
    }
    Ok((total, replayed))
}

/// Waits (at most [`AMQP_IO_TIMEOUT`]) until `dlq` holds again at least the `returned`
/// messages a closed channel gave back: the broker requeues them a moment after the close,
/// and a listing right after must not miss them.
async fn settle(broker: &Broker, dlq: &str, returned: usize) {
    if returned == 0 {
        return;
    }
    let Ok(channel) = broker.channel().await else {
        return;
    };
    let deadline = tokio::time::Instant::now() + AMQP_IO_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        match ready_count(&channel, dlq).await {
            Ok(n) if n as usize >= returned => break,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            Err(_) => break,
        }
    }
    let _ = bounded(channel.close(200, "settled".into())).await;
}

/// Ready messages in `queue` (a passive declaration).
async fn ready_count(channel: &Channel, queue: &str) -> Result<u32, AmqpError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue =
        bounded(channel.queue_declare(short(queue)?, passive, FieldTable::default())).await?;
    Ok(queue.message_count())
}

/// Reads (without acking) the dead letters `dlq` holds now, at most [`MAX_SCAN`]. A DLQ
/// that does not exist (this service does not subscribe to the type) holds none.
async fn read_all(
    channel: &Channel,
    dlq: &str,
) -> Result<Vec<(lapin::message::Delivery, Entry)>, AmqpError> {
    let name = short(dlq)?;
    let total = match ready_count(channel, dlq).await {
        Ok(n) => n.min(MAX_SCAN),
        Err(AmqpError::Broker(e)) if e.is_amqp_soft_error() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let got =
            bounded(channel.basic_get(name.clone(), BasicGetOptions { no_ack: false })).await?;
        let Some(got) = got else { break };
        let delivery = got.delivery;
        let id = message::header(&delivery.properties, DLQ_ID)
            .unwrap_or_else(|| format!("00000000-{:x}", delivery.delivery_tag));
        let entry = message::entry(
            id,
            &delivery.properties,
            delivery.routing_key.as_str(),
            &delivery.data,
        );
        out.push((delivery, entry));
    }
    Ok(out)
}
