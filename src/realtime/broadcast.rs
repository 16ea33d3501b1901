//! Messages and server-side membership changes: published to every meshlet of the service
//! (through Redis, or straight to this meshlet's clients without it), and applied to the
//! local clients they name when they arrive ([`Realtime::dispatch`]). A client's own
//! `publish` frame goes the same way, or to the app (`client_publish`).

use std::sync::Arc;

use serde_json::Value;

use super::cluster::{Envelope, Op};
use super::delivery::{Delivery, Offset, Target};
use super::error::RealtimeError;
use super::frames;
use super::hub::Client;
use super::Realtime;
use crate::config::ClientPublish;

/// The answer to a broadcast.
#[derive(Debug)]
pub(crate) struct Published {
    /// Message id.
    pub(crate) id: String,
    /// History offset, when the message went to a room with history.
    pub(crate) offset: Option<String>,
}

impl Realtime {
    /// Sends a message to `to` on every meshlet of the service.
    pub(crate) async fn broadcast(
        self: &Arc<Self>,
        to: Target,
        event: String,
        data: Value,
    ) -> Result<Published, RealtimeError> {
        check_target(&to)?;
        let envelope = Envelope {
            offset: None,
            id: uuid::Uuid::now_v7().to_string(),
            to,
            op: Op::Message,
            room: None,
            event,
            data,
        };
        self.send(envelope).await
    }

    /// Server-side join or leave of `room` for the clients `to` names, on every meshlet.
    pub(crate) async fn membership(
        self: &Arc<Self>,
        op: Op,
        room: &str,
        to: Target,
    ) -> Result<Published, RealtimeError> {
        check_target(&to)?;
        if !frames::valid_room(room) {
            return Err(RealtimeError::BadRoom(room.to_owned()));
        }
        let envelope = Envelope {
            offset: None,
            id: uuid::Uuid::now_v7().to_string(),
            to,
            op,
            room: Some(room.to_owned()),
            event: String::new(),
            data: Value::Null,
        };
        self.send(envelope).await
    }

    async fn send(self: &Arc<Self>, envelope: Envelope) -> Result<Published, RealtimeError> {
        let id = envelope.id.clone();
        let offset = match &self.cluster {
            Some(cluster) => cluster
                .publish(&envelope)
                .await
                .map_err(|e| RealtimeError::Unavailable(e.to_string()))?,
            None => match (&envelope.to, envelope.op) {
                (Target::Room(room), Op::Message) => {
                    let room = room.clone();
                    self.local_history
                        .publish(&room, envelope, |e| self.dispatch(e))
                }
                _ => {
                    self.dispatch(envelope);
                    None
                }
            },
        };
        Ok(Published { id, offset })
    }

    /// A client's `publish` frame, per `client_publish`.
    pub(crate) async fn client_publish(
        self: &Arc<Self>,
        client: &Arc<Client>,
        room: String,
        event: Option<String>,
        data: Value,
    ) -> Result<(), RealtimeError> {
        if !frames::valid_room(&room) {
            return Err(RealtimeError::BadRoom(room));
        }
        if !client.identity.may_join(&room) {
            return Err(RealtimeError::Forbidden(room));
        }
        match self.config.client_publish {
            ClientPublish::Deny => Err(RealtimeError::PublishDenied),
            ClientPublish::Room => {
                let event = event.unwrap_or_else(|| "message".to_owned());
                self.broadcast(Target::Room(room), event, data)
                    .await
                    .map(|_| ())
            }
            ClientPublish::App => {
                let app = self.app.clone().ok_or(RealtimeError::NoApp)?;
                // One slot per post in flight, given back when the app answered: a slow
                // app costs the client an `overloaded` frame, not a pile of tasks.
                let slot =
                    self.app_slots.clone().try_acquire_owned().map_err(|_| {
                        RealtimeError::AppBusy(self.config.app_concurrency as usize)
                    })?;
                let body = serde_json::json!({
                    "client": client.id.as_ref(),
                    "user": client.user.as_deref(),
                    "room": room,
                    "event": event,
                    "data": data,
                });
                let client = client.clone();
                // On the control plane: the app connection pool lives there, and the
                // socket task goes on reading while the app answers.
                self.control.spawn(async move {
                    let body = bytes::Bytes::from(body.to_string());
                    let posted = app.post(body, &client.id, client.user.as_deref()).await;
                    drop(slot);
                    if let Err(e) = posted {
                        let frame = frames::error("publish_failed", &e.to_string());
                        client.send(&Delivery::plain(frame));
                    }
                });
                Ok(())
            }
        }
    }

    /// Applies an envelope from Redis (or from this meshlet without Redis) to the local
    /// clients it names.
    pub(crate) fn dispatch(self: &Arc<Self>, envelope: Envelope) {
        match envelope.op {
            Op::Message => {
                let room = match &envelope.to {
                    Target::Room(r) => Some(Arc::<str>::from(r.as_str())),
                    _ => None,
                };
                let frame = frames::message(
                    room.as_deref(),
                    envelope.offset.as_deref(),
                    &envelope.event,
                    &envelope.data,
                );
                let delivery = Arc::new(Delivery {
                    offset: envelope.offset.as_deref().and_then(Offset::parse),
                    room,
                    frame,
                });
                self.hub.deliver(&envelope.to, &delivery);
            }
            Op::Join | Op::Leave => {
                let Some(room) = envelope.room else { return };
                for client in self.hub.clients_for(&envelope.to) {
                    let hub = self.clone();
                    let room = room.clone();
                    let op = envelope.op;
                    tokio::spawn(async move { hub.apply_membership(op, &client, &room).await });
                }
            }
        }
    }

    async fn apply_membership(&self, op: Op, client: &Arc<Client>, room: &str) {
        let frame = if op == Op::Join {
            match self.join(client, room, None).await {
                Ok(joined) => {
                    let latest = joined.recovery.latest.map(|o| o.to_string());
                    frames::joined(room, latest.as_deref(), false)
                }
                Err(e) => frames::error(e.code(), &e.to_string()),
            }
        } else {
            self.leave(client, room);
            frames::left(room)
        };
        client.send(&Delivery::plain(frame));
    }
}

fn check_target(to: &Target) -> Result<(), RealtimeError> {
    match to {
        Target::Room(room) if !frames::valid_room(room) => {
            Err(RealtimeError::BadRoom(room.clone()))
        }
        Target::User(s) | Target::Client(s) if s.is_empty() => Err(RealtimeError::BadRequest(
            "`to.user` and `to.client` must not be empty".to_owned(),
        )),
        _ => Ok(()),
    }
}
