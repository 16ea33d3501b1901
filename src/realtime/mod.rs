//! The realtime hub (docs/realtime.md): WebSocket clients on the inbound listener, rooms, users
//! and broadcast across every meshlet of a service. docs/realtime.md is the contract.
//!
//! - [`auth`]: the client's HS256 JWT, checked before the upgrade.
//! - [`frames`]: the JSON frames clients and the hub exchange.
//! - [`hub`]: this meshlet's clients, rooms and users, and local fan-out.
//! - [`connection`]: one client's socket task (frames, pings, send queue, close codes).
//! - [`queue`]: a client's bounded send queue.
//! - [`cluster`]: Redis pub/sub, history and presence, shared by every meshlet.
//! - [`history`]: in-memory history for a hub without Redis.
//! - [`app`]: client messages POSTed to the app (`client_publish: app`).
//! - [`api`]: the app's local API on 15000.
//!
//! A message's journey: app `POST /v1/broadcast` → [`Realtime::broadcast`] → Redis (XADD
//! and PUBLISH in one script) → every meshlet's subscriber → [`Realtime::dispatch`] → the
//! hub's fan-out into each member's bounded queue → its connection task → the socket.
//! Without `registry.redis` the hub skips Redis and dispatches locally.

pub mod api;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod connection;
pub mod error;
pub mod frames;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod queue;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::{ClientPublish, RealtimeConfig};
use crate::control::{Context, Shutdown};
use crate::identity::request_id;
use crate::proxy::inbound::InboundRoute;
use crate::wire::AnswerBody;
use app::AppClient;
use auth::Verifier;
use cluster::{Channel, Cluster, ClusterConfig, Envelope, HistoryLimits, Op, Recovery};
use error::RealtimeError;
use history::LocalHistory;
use hub::{Client, Delivery, Hub, Offset, Target};
use metrics::RealtimeMetrics;

/// Local API paths the hub answers (on 15000).
pub const API_PATHS: &[&str] = &["/v1/broadcast", "/v1/rooms", "/v1/realtime"];

/// How long a join waits for its room's Redis subscription to be confirmed.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);

/// The hub of one sidecar.
pub struct Realtime {
    path: String,
    service: String,
    config: RealtimeConfig,
    verifier: Verifier,
    hub: Arc<Hub>,
    /// The Redis side; `None` without `registry.redis` (one meshlet, local fan-out).
    cluster: Option<Arc<Cluster>>,
    /// History when there is no Redis.
    local_history: LocalHistory,
    app: Option<Arc<AppClient>>,
    /// The control-plane runtime, where Redis and app connections live.
    control: Handle,
    shutdown: Shutdown,
    metrics: RealtimeMetrics,
    instance: String,
    next_client: AtomicU64,
}

/// The hub's WebSocket path on the inbound listener.
struct WebSocketRoute(Arc<Realtime>);

impl InboundRoute for WebSocketRoute {
    fn path(&self) -> &str {
        &self.0.path
    }

    fn answer(&self, req: Request<Incoming>) -> Response<AnswerBody> {
        self.0.accept(req)
    }
}

/// What a join found: the room's latest offset, and what the client missed.
#[derive(Debug)]
pub struct Joined {
    /// The room.
    pub room: Arc<str>,
    /// History read after the subscription was confirmed.
    pub recovery: Recovery,
}

/// The answer to a broadcast.
#[derive(Debug)]
pub struct Published {
    /// Message id.
    pub id: String,
    /// History offset, when the message went to a room with history.
    pub offset: Option<String>,
}

impl Realtime {
    /// Starts the hub when `realtime` is configured: its Redis subscriber and presence
    /// keeper run on the calling (control-plane) runtime until `context.shutdown`.
    pub fn start(context: &Context<'_>) -> Option<Arc<Realtime>> {
        let config = context.config.realtime.clone()?;
        let metrics = RealtimeMetrics::new(context.metrics.registry());
        let hub = Hub::new(config.max_connections as usize, metrics.clone());
        let history = HistoryLimits {
            size: config.history.size,
            ttl: config.history.ttl.get(),
        };
        let cluster = context.redis.as_ref().map(|link| {
            Cluster::new(
                ClusterConfig {
                    link: link.clone(),
                    prefix: context.config.registry.prefix.to_string(),
                    instance: context.instance_id.to_owned(),
                    history,
                    ttl: context.config.registry.ttl.get(),
                    heartbeat: context.config.registry.heartbeat.get(),
                },
                hub.clone(),
            )
        });
        let app = context
            .config
            .service
            .app
            .as_ref()
            .and_then(|a| AppClient::new(&a.0, &config.on_message))
            .map(Arc::new);
        let realtime = Arc::new(Realtime {
            path: config.path.clone(),
            service: context.config.service.name.to_string(),
            verifier: Verifier::new(config.auth.as_ref()),
            local_history: LocalHistory::new(history.size, history.ttl),
            config,
            hub,
            cluster: cluster.as_ref().map(|(c, _)| c.clone()),
            app,
            control: Handle::current(),
            shutdown: context.shutdown.clone(),
            metrics,
            instance: context.instance_id.to_owned(),
            next_client: AtomicU64::new(1),
        });
        let closing = realtime.clone();
        let shutdown = context.shutdown.wait();
        tokio::spawn(async move {
            // Wakes every socket task, even one stuck in a write, to drain and close (1001).
            shutdown.await;
            for client in closing.hub.all_clients() {
                client.close(hub::CloseReason::Shutdown);
            }
        });
        if let Some((cluster, tasks)) = cluster {
            let hub = realtime.clone();
            let dispatch: cluster::Dispatch = Arc::new(move |envelope| hub.dispatch(envelope));
            cluster.spawn(tasks, dispatch, context.shutdown.clone());
        }
        tracing::info!(
            path = %realtime.path,
            redis = realtime.cluster.is_some(),
            "realtime hub started"
        );
        Some(realtime)
    }

    /// The hub's WebSocket endpoint, as the inbound listener serves it.
    pub fn route(self: &Arc<Self>) -> Arc<dyn InboundRoute> {
        Arc::new(WebSocketRoute(self.clone()))
    }

    /// Answers a WebSocket connect: 101 and a socket task, or a docs/errors.md refusal. The
    /// token is checked and a connection slot taken before the upgrade.
    pub fn accept(self: &Arc<Self>, req: Request<Incoming>) -> Response<AnswerBody> {
        match self.admit(&req) {
            Ok((response, client, admission)) => {
                self.metrics.connects.accepted.inc();
                let hub = self.clone();
                // Taken out of the request now, so the task does not keep the request.
                let upgrade = hyper::upgrade::on(req);
                tokio::spawn(async move {
                    match upgrade.await {
                        Ok(upgraded) => connection::serve(hub, upgraded, client, admission).await,
                        Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
                    }
                });
                response
            }
            Err(e) => {
                match e {
                    RealtimeError::Unauthenticated(_) => {
                        self.metrics.connects.unauthenticated.inc()
                    }
                    RealtimeError::Overloaded(_) => self.metrics.connects.overloaded.inc(),
                    _ => self.metrics.connects.bad_request.inc(),
                }
                e.to_response(&self.service, &request_id::of(req.headers()))
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn admit(
        self: &Arc<Self>,
        req: &Request<Incoming>,
    ) -> Result<(Response<AnswerBody>, Arc<Client>, hub::Admission), RealtimeError> {
        let key = websocket_key(req)?;
        let identity = self.verifier.verify(req.uri().query(), req.headers())?;
        if self.shutdown.is_started() {
            return Err(RealtimeError::Overloaded(self.hub.connections()));
        }
        let admission = self.hub.admit().ok_or(RealtimeError::Overloaded(
            self.config.max_connections as usize,
        ))?;
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = Arc::from(format!("{}:{n}", self.instance));
        let client = Client::new(id, identity, self.config.send_queue as usize);
        let mut resp = Response::new(AnswerBody::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        // The accept key is base64: always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
        Ok((resp, client, admission))
    }

    /// Answers a local API request under [`API_PATHS`].
    pub async fn handle_api(self: &Arc<Self>, req: Request<Incoming>) -> Response<AnswerBody> {
        api::handle(self, req).await
    }

    /// Registers a connected client and subscribes to its user's channel.
    async fn connected(&self, client: &Arc<Client>) {
        self.hub.register(client);
        if let (Some(cluster), Some(user)) = (&self.cluster, &client.user) {
            if let Err(e) = cluster
                .subscribe(Channel::User(user.clone()), SUBSCRIBE_WAIT)
                .await
            {
                tracing::debug!(error = %e, "user channel not subscribed yet; retried on reconnect");
            }
        }
    }

    /// Removes a client from the hub, its rooms' presence, and the channels only it held.
    fn disconnected(&self, client: &Client) {
        let departure = self.hub.unregister(client);
        if let Some(cluster) = &self.cluster {
            for room in departure.rooms {
                cluster.presence_remove(room, client.id.clone());
            }
            for room in departure.empty_rooms {
                cluster.release(Channel::Room(room));
            }
            if let Some(user) = departure.user_gone {
                cluster.release(Channel::User(user));
            }
        }
    }

    /// Puts `client` in `room`; answers once the room's subscription is confirmed, with
    /// the room's history read after it (subscribe first, then read: nothing falls between).
    pub async fn join(
        &self,
        client: &Arc<Client>,
        room: &str,
        since: Option<&str>,
    ) -> Result<Joined, RealtimeError> {
        let room: Arc<str> = Arc::from(room);
        let added = self.hub.join(client, &room).ok_or(RealtimeError::Gone)?;
        let Some(cluster) = &self.cluster else {
            return Ok(Joined {
                recovery: self.local_history.recover(&room, since),
                room,
            });
        };
        if let Err(e) = cluster
            .subscribe(Channel::Room(room.clone()), SUBSCRIBE_WAIT)
            .await
        {
            if added {
                self.leave(client, &room);
            }
            return Err(RealtimeError::Unavailable(e.to_string()));
        }
        if added {
            cluster.presence_add(room.clone(), client.id.clone(), client.user.clone());
        }
        let recovery = if self.config.history.size > 0 {
            cluster.recover(&room, since).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "history unreadable; joined without recovery");
                Recovery::default()
            })
        } else {
            Recovery::default()
        };
        Ok(Joined { room, recovery })
    }

    /// Takes `client` out of `room`; returns whether it was a member.
    pub fn leave(&self, client: &Client, room: &str) -> bool {
        let Some(empty) = self.hub.leave(client, room) else {
            return false;
        };
        if let Some(cluster) = &self.cluster {
            let room: Arc<str> = Arc::from(room);
            cluster.presence_remove(room.clone(), client.id.clone());
            if empty {
                cluster.release(Channel::Room(room));
            }
        }
        true
    }

    /// Sends a message to `to` on every meshlet of the service.
    pub async fn broadcast(
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
    pub async fn membership(
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
    pub async fn client_publish(
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
                    if let Err(e) = app.post(body, &client.id, client.user.as_deref()).await {
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
    pub fn dispatch(self: &Arc<Self>, envelope: Envelope) {
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

    /// WebSocket clients connected to this meshlet.
    pub fn connections(&self) -> usize {
        self.hub.connections()
    }

    /// The numbers of `GET /v1/realtime`.
    pub fn stats(&self) -> Value {
        serde_json::json!({
            "connections": self.hub.connections(),
            "rooms": self.hub.room_sizes().len(),
            "messages_in": self.metrics.messages_in.get(),
            "messages_out": self.metrics.messages_out.get(),
            "slow_clients_dropped": self.metrics.slow_dropped.get(),
            "max_connections": self.config.max_connections,
            "redis": match &self.cluster {
                None => "off",
                Some(c) if c.is_up() => "up",
                Some(_) => "down",
            },
        })
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

/// The `Sec-WebSocket-Key` of a valid HTTP/1.1 upgrade request.
fn websocket_key(req: &Request<Incoming>) -> Result<String, RealtimeError> {
    if req.method() != Method::GET {
        return Err(RealtimeError::NotWebSocket("the method must be GET"));
    }
    if req.version() != Version::HTTP_11 {
        return Err(RealtimeError::NotWebSocket("WebSocket needs HTTP/1.1"));
    }
    let h = req.headers();
    let has = |name: http::header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has(UPGRADE, "websocket") || !has(CONNECTION, "upgrade") {
        return Err(RealtimeError::NotWebSocket(
            "missing Upgrade: websocket / Connection: Upgrade",
        ));
    }
    if h.get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(RealtimeError::NotWebSocket(
            "Sec-WebSocket-Version must be 13",
        ));
    }
    h.get(SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or(RealtimeError::NotWebSocket("missing Sec-WebSocket-Key"))
}
