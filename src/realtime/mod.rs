//! The realtime hub (docs/realtime.md): WebSocket clients on the inbound listener, rooms, users
//! and broadcast across every meshlet of a service. docs/realtime.md is the contract.
//!
//! - this file: [`Realtime`], the hub of one sidecar: start-up, joins and leaves, stats.
//! - [`auth`]: the client's HS256 JWT, checked before the upgrade.
//! - `accept`: the WebSocket endpoint: a connect checked, answered 101, its task started.
//! - [`connection`]: one client's socket task (frames, pings, send queue, close codes).
//! - [`close`]: why a connection closes, and the close code it sends.
//! - [`queue`]: a client's bounded send queue.
//! - [`frames`]: the JSON frames clients and the hub exchange.
//! - [`hub`]: this meshlet's clients, rooms and users, and local fan-out.
//! - [`delivery`]: what fan-out carries: a frame, its [`delivery::Target`], its offset.
//! - `broadcast`: messages and server-side joins and leaves, published and dispatched.
//! - [`cluster`]: Redis pub/sub, history and presence, shared by every meshlet (a folder:
//!   the subscriber, history, presence and the envelope, a file each).
//! - [`history`]: in-memory history for a hub without Redis.
//! - [`app`]: client messages POSTed to the app (`client_publish: app`).
//! - [`api`]: the app's local API on 15000.
//! - [`metrics`]: metric families and handles; [`error`]: errors and their answers.
//!
//! A message's journey: app `POST /v1/broadcast` → [`Realtime::broadcast`] → Redis (XADD
//! and PUBLISH in one script) → every meshlet's subscriber → [`Realtime::dispatch`] → the
//! hub's fan-out into each member's bounded queue → its connection task → the socket.
//! Without `registry.redis` the hub skips Redis and dispatches locally.

mod accept;
pub mod api;
pub mod app;
pub mod auth;
mod broadcast;
pub mod close;
pub mod cluster;
pub mod connection;
pub mod delivery;
pub mod error;
pub mod frames;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod queue;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::config::RealtimeConfig;
use crate::control::{Context, Shutdown};
use crate::wire::AnswerBody;
use app::OnMessage;
use auth::Verifier;
use cluster::{Channel, Cluster, ClusterConfig, HistoryLimits, Recovery};
use error::RealtimeError;
use history::LocalHistory;
use hub::{Client, Hub};
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
    app: Option<Arc<OnMessage>>,
    /// `realtime.app_concurrency`: client publishes in flight toward the app.
    app_slots: Arc<Semaphore>,
    /// The control-plane runtime, where Redis and app connections live.
    control: Handle,
    shutdown: Shutdown,
    metrics: RealtimeMetrics,
    instance: String,
    next_client: AtomicU64,
}

/// What a join found: the room's latest offset, and what the client missed.
#[derive(Debug)]
pub struct Joined {
    /// The room.
    pub room: Arc<str>,
    /// History read after the subscription was confirmed.
    pub recovery: Recovery,
}

impl Realtime {
    /// Starts the hub when `realtime` is configured: its Redis subscriber and presence
    /// keeper run on the calling (control-plane) runtime until `context.shutdown`.
    pub fn start(context: &Context<'_>) -> Option<Arc<Realtime>> {
        let config = context.config.realtime.clone()?;
        let metrics = RealtimeMetrics::new(context.metrics.registry());
        let hub = Hub::new(
            config.max_connections as usize,
            config.max_rooms_per_client as usize,
            metrics.clone(),
        );
        let history = HistoryLimits {
            size: config.history.size,
            ttl: config.history.ttl.get(),
        };
        let cluster = context.redis.as_ref().map(|link| {
            Cluster::new(
                ClusterConfig {
                    link: link.clone(),
                    prefix: context.config.registry.prefix.to_string(),
                    service: context.config.service.name.to_string(),
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
            .and_then(|a| OnMessage::new(&a.0, &config.on_message))
            .map(Arc::new);
        let realtime = Arc::new(Realtime {
            path: config.path.clone(),
            service: context.config.service.name.to_string(),
            verifier: Verifier::new(config.auth.as_ref()),
            local_history: LocalHistory::new(history.size, history.ttl),
            app_slots: Arc::new(Semaphore::new(config.app_concurrency as usize)),
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
                client.close(close::CloseReason::Shutdown);
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
        let added = self.hub.join(client, &room)?;
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
