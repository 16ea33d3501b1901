//! The `/v1/events` routes of the local API: publish (single and ndjson batch), the
//! dead-letter listing and replay, and a view of the subscriptions. Every failure goes
//! through [`EventsError::to_response`].

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::envelope::{is_json, valid_event_id, valid_type, NewEvent};
use super::error::EventsError;
use super::publish::Published;
use super::{amqp, dlq, Events, Store, Streams};
use crate::control::redis::REDIS_IO_TIMEOUT;
use crate::identity::request_id;
use crate::wire::answer::{self, AnswerBody};

/// Largest event payload (docs/events.md).
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// Largest ndjson batch body; each line is still at most [`MAX_PAYLOAD`].
pub const MAX_BATCH: usize = 16 * 1024 * 1024;
/// Events per pipelined round trip of a batch.
const BATCH_CHUNK: usize = 1000;
/// Longest a publish waits for Redis before answering 503: bounded, never a hang.
const PUBLISH_WAIT: Duration = REDIS_IO_TIMEOUT;
/// Default page of a DLQ listing.
const DEFAULT_PAGE: usize = 100;

/// Routes one request.
pub async fn handle(events: &Events, req: Request<Incoming>) -> Response<AnswerBody> {
    let request_id = request_id::of(req.headers());
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/v1/events").unwrap_or("");
    let method = req.method().clone();
    let answer = if rest.is_empty() || rest == "/" {
        if method == Method::GET {
            Ok(subscriptions(events))
        } else {
            Err(EventsError::NotFound(format!("{method} {path}")))
        }
    } else if let Some(tail) = rest.strip_prefix("/dlq/") {
        match (&method, tail.strip_suffix("/replay")) {
            (&Method::POST, Some(event_type)) => replay(events, event_type, req).await,
            (&Method::GET, None) => list(events, tail, req.uri().query()).await,
            _ => Err(EventsError::NotFound(format!("{method} {path}"))),
        }
    } else if method == Method::POST {
        let event_type = rest.trim_start_matches('/').to_owned();
        publish(events, &event_type, req).await
    } else {
        return answer::not_found(&req);
    };
    answer.unwrap_or_else(|e| e.to_response(&events.service, &request_id))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, EventsError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| EventsError::BadRequest(format!("header {name} is not text")))
        })
        .transpose()
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, EventsError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(EventsError::TooLarge(limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(EventsError::TooLarge(limit))
        }
        Err(e) => Err(EventsError::BadRequest(format!("cannot read body: {e}"))),
    }
}

/// `POST /v1/events/{type}`: one event, or a batch with `content-type: application/x-ndjson`.
async fn publish(
    events: &Events,
    event_type: &str,
    req: Request<Incoming>,
) -> Result<Response<AnswerBody>, EventsError> {
    if !valid_type(event_type) {
        return Err(EventsError::BadType(event_type.to_owned()));
    }
    let headers = req.headers();
    let event_id = match header(headers, "x-event-id")? {
        Some(id) => Some(id),
        None => header(headers, "idempotency-key")?,
    }
    .map(str::to_owned);
    if let Some(id) = &event_id {
        if !valid_event_id(id) {
            return Err(EventsError::BadRequest(format!(
                "invalid event id `{id}`: use 1-256 visible ASCII characters"
            )));
        }
    }
    let version = match header(headers, "x-event-version")? {
        None => 1,
        Some(v) => v.parse::<u32>().map_err(|_| {
            EventsError::BadRequest(format!("x-event-version `{v}` is not a whole number"))
        })?,
    };
    let traceparent = header(headers, "traceparent")?.unwrap_or("").to_owned();
    let batch = header(headers, CONTENT_TYPE.as_str())?
        .is_some_and(|ct| ct.starts_with("application/x-ndjson"));
    let fields = Fields {
        event_type,
        event_id,
        version,
        traceparent,
        source: &events.service,
    };
    if batch {
        let body = read_body(req, MAX_BATCH).await?;
        return publish_batch(events, fields, &body).await;
    }
    let body = read_body(req, MAX_PAYLOAD).await?;
    is_json(&body).map_err(|e| EventsError::NotJson(format!("body is not JSON: {e}")))?;
    let payload = String::from_utf8(body.to_vec())
        .map_err(|_| EventsError::NotJson("body is not UTF-8".to_owned()))?;
    let event = NewEvent::new(
        event_type,
        fields.event_id,
        fields.source,
        version,
        payload,
        fields.traceparent,
    );
    let published = store_one(events, &event).await?;
    let counters = events.metrics.publish(event_type);
    let status = if published.duplicate {
        counters.duplicate.inc();
        StatusCode::OK
    } else {
        counters.stored.inc();
        StatusCode::ACCEPTED
    };
    Ok(published_answer(status, &published))
}

/// `{"event_id","stream_id","duplicate"}`, fields in that order.
fn published_answer(status: StatusCode, published: &Published) -> Response<AnswerBody> {
    // Serializing a struct of strings and a bool cannot fail.
    let mut body = serde_json::to_vec(published).unwrap_or_default();
    body.push(b'\n');
    answer::respond(status, "application/json", Bytes::from(body))
}

struct Fields<'a> {
    event_type: &'a str,
    event_id: Option<String>,
    version: u32,
    traceparent: String,
    source: &'a str,
}

/// A batch: every line is checked before anything is stored (a bad line refuses the batch
/// whole); then the events are pipelined [`BATCH_CHUNK`] at a time. With an `x-event-id`,
/// line `i` (0-based, blank lines skipped) gets the id `{x-event-id}:{i}`, so resending the
/// batch after a failure stores only what is missing.
async fn publish_batch(
    events: &Events,
    fields: Fields<'_>,
    body: &[u8],
) -> Result<Response<AnswerBody>, EventsError> {
    let mut batch = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_PAYLOAD {
            return Err(EventsError::TooLarge(MAX_PAYLOAD));
        }
        is_json(line).map_err(|e| EventsError::NotJson(format!("line {}: {e}", n + 1)))?;
        let payload = String::from_utf8(line.to_vec())
            .map_err(|_| EventsError::NotJson(format!("line {}: not UTF-8", n + 1)))?;
        let id = fields
            .event_id
            .as_ref()
            .map(|base| format!("{base}:{}", batch.len()));
        if let Some(id) = &id {
            if !valid_event_id(id) {
                return Err(EventsError::BadRequest(format!(
                    "event id `{id}` is longer than 256 characters"
                )));
            }
        }
        batch.push(NewEvent::new(
            fields.event_type,
            id,
            fields.source,
            fields.version,
            payload,
            fields.traceparent.clone(),
        ));
    }
    let counters = events.metrics.publish(fields.event_type);
    let mut results: Vec<Published> = Vec::with_capacity(batch.len());
    for chunk in batch.chunks(BATCH_CHUNK) {
        let stored = store_chunk(events, chunk).await;
        // Counted as each event is confirmed: a batch cut short by a failure still counts
        // what it stored.
        let mut failed = None;
        let first = results.len(); // every earlier chunk was stored whole
        match stored {
            Ok(replies) => {
                for (i, reply) in replies.into_iter().enumerate() {
                    match reply {
                        Ok(p) => {
                            if p.duplicate {
                                counters.duplicate.inc();
                            } else {
                                counters.stored.inc();
                            }
                            results.push(p);
                        }
                        Err(e) if failed.is_none() => {
                            failed = Some(format!("event {} (0-based): {e}", first + i));
                        }
                        Err(_) => {}
                    }
                }
            }
            Err(e) => failed = Some(e),
        }
        if let Some(e) = failed {
            // Resending the batch with the same x-event-id stores only what is missing.
            return Err(EventsError::Unavailable(format!(
                "{e}; {} of {} events confirmed stored",
                results.len(),
                batch.len()
            )));
        }
    }
    let mut out = Vec::with_capacity(results.len() * 96);
    for published in &results {
        // Serializing a struct of strings and a bool cannot fail.
        let _ = serde_json::to_writer(&mut out, published);
        out.push(b'\n');
    }
    let mut resp = answer::respond(StatusCode::OK, "application/x-ndjson", Bytes::from(out));
    resp.headers_mut()
        .insert("x-event-count", HeaderValue::from(results.len()));
    Ok(resp)
}

/// `GET /v1/events`: what this meshlet delivers.
fn subscriptions(events: &Events) -> Response<AnswerBody> {
    answer::json(
        StatusCode::OK,
        &serde_json::json!({
            "group": events.service,
            "consumer": events.consumer,
            "subscriptions": events.subscriptions,
        }),
    )
}

fn valid_stream_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let ms = parts.next().unwrap_or("");
    let seq = parts.next().unwrap_or("0");
    !ms.is_empty()
        && ms.len() <= 20
        && seq.len() <= 20
        && !seq.is_empty()
        && ms.bytes().all(|b| b.is_ascii_digit())
        && seq.bytes().all(|b| b.is_ascii_digit())
}

/// `GET /v1/events/dlq/{type}?after=ID&count=N`.
async fn list(
    events: &Events,
    event_type: &str,
    query: Option<&str>,
) -> Result<Response<AnswerBody>, EventsError> {
    if !valid_type(event_type) {
        return Err(EventsError::BadType(event_type.to_owned()));
    }
    let mut after = None;
    let mut count = DEFAULT_PAGE;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" if valid_dlq_id(events, v) => after = Some(v.to_owned()),
            "count" => {
                count = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=dlq::MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        EventsError::BadRequest(format!("count must be 1-{}", dlq::MAX_PAGE))
                    })?
            }
            _ => {
                return Err(EventsError::BadRequest(format!(
                    "unknown or malformed query parameter `{pair}`"
                )))
            }
        }
    }
    let page = match &events.store {
        Store::Redis(streams) => {
            let redis_down = |e: redis::RedisError| {
                streams.link.failed(&e);
                EventsError::RedisDown(e.to_string())
            };
            let mut conn = streams.link.get().await.map_err(redis_down)?;
            dlq::list(
                &mut conn,
                &streams.keys,
                event_type,
                after.as_deref(),
                count,
            )
            .await
            .map_err(redis_down)?
        }
        Store::Amqp(a) => amqp::dlq::list(&a.broker, &a.names, event_type, after.as_deref(), count)
            .await
            .map_err(|e| EventsError::BrokerDown(e.to_string()))?,
    };
    let entries: Vec<serde_json::Value> = page.entries.iter().map(|e| e.to_json()).collect();
    Ok(answer::json(
        StatusCode::OK,
        &serde_json::json!({"type": event_type, "entries": entries, "next": page.next}),
    ))
}

/// `POST /v1/events/dlq/{type}/replay`, body empty (everything) or `{"ids": [...]}`.
async fn replay(
    events: &Events,
    event_type: &str,
    req: Request<Incoming>,
) -> Result<Response<AnswerBody>, EventsError> {
    if !valid_type(event_type) {
        return Err(EventsError::BadType(event_type.to_owned()));
    }
    let body = read_body(req, MAX_PAYLOAD).await?;
    let ids: Option<Vec<String>> = if body.trim_ascii().is_empty() {
        None
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Selection {
            ids: Vec<String>,
        }
        let selection: Selection = serde_json::from_slice(&body).map_err(|e| {
            EventsError::NotJson(format!("expected {{\"ids\": [\"<dlq id>\", ...]}}: {e}"))
        })?;
        if let Some(bad) = selection.ids.iter().find(|id| !valid_dlq_id(events, id)) {
            return Err(EventsError::BadRequest(format!(
                "`{bad}` is not a dead letter's id"
            )));
        }
        Some(selection.ids)
    };
    let streams = match &events.store {
        Store::Redis(streams) => streams,
        Store::Amqp(a) => return replay_amqp(a, event_type, ids.as_deref()).await,
    };
    let redis_down = |e: redis::RedisError| {
        streams.link.failed(&e);
        EventsError::RedisDown(e.to_string())
    };
    let mut conn = streams.link.get().await.map_err(redis_down)?;
    let report = dlq::replay(
        &mut conn,
        &streams.keys,
        event_type,
        ids.as_deref(),
        streams.retention,
    )
    .await
    .map_err(redis_down)?;
    tracing::info!(
        r#type = event_type,
        replayed = report.replayed.len(),
        missing = report.missing.len(),
        "dead letters replayed"
    );
    Ok(answer::json(
        StatusCode::OK,
        &serde_json::json!({
            "replayed": report.replayed.len(),
            "events": report.replayed,
            "missing": report.missing,
        }),
    ))
}

/// Stores one event where `events.broker` says, within [`PUBLISH_WAIT`].
async fn store_one(events: &Events, event: &NewEvent) -> Result<Published, EventsError> {
    let late = || format!("no answer within {PUBLISH_WAIT:?}");
    match &events.store {
        Store::Redis(Streams { publisher, .. }) => {
            tokio::time::timeout(PUBLISH_WAIT, publisher.publish(event))
                .await
                .map_err(|_| EventsError::Unavailable(late()))?
                .map_err(|e| EventsError::Unavailable(e.to_string()))
        }
        Store::Amqp(a) => tokio::time::timeout(PUBLISH_WAIT, a.publisher.publish(event))
            .await
            .map_err(|_| EventsError::BrokerUnavailable(late()))?
            .map_err(|e| EventsError::BrokerUnavailable(e.to_string())),
    }
}

/// Stores one chunk of a batch: one result per event, or the chunk failed as a whole.
async fn store_chunk(
    events: &Events,
    chunk: &[NewEvent],
) -> Result<Vec<Result<Published, String>>, String> {
    let late = || format!("no answer within {PUBLISH_WAIT:?}");
    match &events.store {
        Store::Redis(Streams { publisher, .. }) => {
            tokio::time::timeout(PUBLISH_WAIT, publisher.publish_batch(chunk))
                .await
                .map_err(|_| late())?
                .map(|replies| {
                    replies
                        .into_iter()
                        .map(|r| r.map_err(|e| e.to_string()))
                        .collect()
                })
                .map_err(|e| e.to_string())
        }
        Store::Amqp(a) => tokio::time::timeout(PUBLISH_WAIT, a.publisher.publish_batch(chunk))
            .await
            .map_err(|_| late())?
            .map(|replies| {
                replies
                    .into_iter()
                    .map(|r| r.map_err(|e| e.to_string()))
                    .collect()
            })
            .map_err(|e| e.to_string()),
    }
}

/// Whether `id` can name a dead letter: a stream id on Redis, a UUID on RabbitMQ.
fn valid_dlq_id(events: &Events, id: &str) -> bool {
    match &events.store {
        Store::Redis(_) => valid_stream_id(id),
        Store::Amqp(_) => amqp::dlq::valid_dlq_id(id),
    }
}

/// A replay on RabbitMQ: this service's dead letters back on this service's queue.
async fn replay_amqp(
    a: &amqp::AmqpEvents,
    event_type: &str,
    ids: Option<&[String]>,
) -> Result<Response<AnswerBody>, EventsError> {
    let report = amqp::dlq::replay(&a.broker, &a.names, event_type, ids)
        .await
        .map_err(|e| EventsError::BrokerDown(e.to_string()))?;
    tracing::info!(
        r#type = event_type,
        replayed = report.replayed.len(),
        missing = report.missing.len(),
        "dead letters replayed"
    );
    Ok(answer::json(
        StatusCode::OK,
        &serde_json::json!({
            "replayed": report.replayed.len(),
            "events": report.replayed,
            "missing": report.missing,
        }),
    ))
}
