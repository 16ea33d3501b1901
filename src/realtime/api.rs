//! The app's side of the hub on the local API (15000): `POST /v1/broadcast`,
//! `POST /v1/rooms/{room}/join|leave`, `GET /v1/rooms`, `GET /v1/rooms/{room}/presence`
//! and `GET /v1/realtime`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::cluster::Op;
use super::delivery::Target;
use super::error::RealtimeError;
use super::Realtime;
use crate::identity::request_id;
use crate::wire::answer::{self, AnswerBody};

/// Largest API body.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    to: Target,
    #[serde(default = "default_event")]
    event: String,
    #[serde(default)]
    data: Value,
}

fn default_event() -> String {
    "message".to_owned()
}

/// Routes one local API request.
pub async fn handle(hub: &Arc<Realtime>, req: Request<Incoming>) -> Response<AnswerBody> {
    let request_id = request_id::of(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let result = match (&method, segments.as_slice()) {
        (&Method::POST, ["v1", "broadcast"]) => broadcast(hub, req).await,
        (&Method::POST, ["v1", "rooms", room, "join"]) => {
            membership(hub, Op::Join, room, req).await
        }
        (&Method::POST, ["v1", "rooms", room, "leave"]) => {
            membership(hub, Op::Leave, room, req).await
        }
        (&Method::GET, ["v1", "rooms"]) => rooms(hub).await,
        (&Method::GET, ["v1", "rooms", room, "presence"]) => presence(hub, room).await,
        (&Method::GET, ["v1", "realtime"]) => Ok(answer::json(StatusCode::OK, &hub.stats())),
        _ => return answer::not_found(&req),
    };
    result.unwrap_or_else(|e| e.to_response(&hub.service, &request_id))
}

async fn body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, RealtimeError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| RealtimeError::BodyTooLarge(MAX_BODY))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| RealtimeError::BadRequest(format!("invalid JSON body: {e}")))
}

async fn broadcast(
    hub: &Arc<Realtime>,
    req: Request<Incoming>,
) -> Result<Response<AnswerBody>, RealtimeError> {
    let b: Broadcast = body(req).await?;
    let published = hub.broadcast(b.to, b.event, b.data).await?;
    Ok(answer::json(
        StatusCode::ACCEPTED,
        &json!({"id": published.id, "offset": published.offset}),
    ))
}

async fn membership(
    hub: &Arc<Realtime>,
    op: Op,
    room: &str,
    req: Request<Incoming>,
) -> Result<Response<AnswerBody>, RealtimeError> {
    let to: Target = body(req).await?;
    if matches!(to, Target::All | Target::Room(_)) {
        return Err(RealtimeError::BadRequest(
            "name a {\"user\":…} or a {\"client\":…}".to_owned(),
        ));
    }
    let published = hub.membership(op, room, to).await?;
    Ok(answer::json(
        StatusCode::ACCEPTED,
        &json!({"id": published.id, "room": room}),
    ))
}

/// Every room with a member on any meshlet: `clients` counts them all, `local` those of
/// this meshlet. Presence is written in the background, so this meshlet's own rooms are
/// merged in as the hub holds them right now.
async fn rooms(hub: &Realtime) -> Result<Response<AnswerBody>, RealtimeError> {
    let mut rooms: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    if let Some(cluster) = &hub.cluster {
        for (room, n) in cluster
            .rooms()
            .await
            .map_err(|e| RealtimeError::Unavailable(e.to_string()))?
        {
            rooms.insert(room, (n, 0));
        }
    }
    for (room, n) in hub.hub.room_sizes() {
        let entry = rooms.entry(room.to_string()).or_default();
        entry.1 = n as u64;
        entry.0 = entry.0.max(entry.1);
    }
    let rooms: Vec<Value> = rooms
        .into_iter()
        .map(|(room, (clients, local))| json!({"room": room, "clients": clients, "local": local}))
        .collect();
    Ok(answer::json(StatusCode::OK, &json!({ "rooms": rooms })))
}

async fn presence(hub: &Realtime, room: &str) -> Result<Response<AnswerBody>, RealtimeError> {
    if !super::frames::valid_room(room) {
        return Err(RealtimeError::BadRoom(room.to_owned()));
    }
    let members: Vec<(String, String)> = match &hub.cluster {
        Some(cluster) => cluster
            .presence(room)
            .await
            .map_err(|e| RealtimeError::Unavailable(e.to_string()))?,
        None => hub
            .hub
            .members(room)
            .into_iter()
            .map(|(c, u)| (c.to_string(), u.as_deref().unwrap_or("").to_owned()))
            .collect(),
    };
    let users: BTreeSet<&str> = members
        .iter()
        .map(|(_, u)| u.as_str())
        .filter(|u| !u.is_empty())
        .collect();
    let clients: Vec<Value> = members
        .iter()
        .map(|(c, u)| json!({"client": c, "user": if u.is_empty() { None } else { Some(u) }}))
        .collect();
    Ok(answer::json(
        StatusCode::OK,
        &json!({"room": room, "users": users, "clients": clients}),
    ))
}
