//! The sections of the features above the proxy: `events:` (docs/events.md), `realtime:`
//! (docs/realtime.md) and `telemetry:` (docs/operations.md), with their defaults.

use serde::{Deserialize, Serialize};

use super::defaults;
use super::{Dur, Parsed, Secret, ServiceName};

/// `events:` (docs/events.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Entries older than this are trimmed.
    pub retention: Dur,
    /// A publish repeating an event id inside this window is stored once.
    pub dedupe_window: Dur,
    /// What this service receives.
    pub subscriptions: Vec<Subscription>,
    /// Sentinel/Cluster: a publish answers 202 once `WAIT` saw the entry on this many
    /// replicas (bounded by those connected; 0 = no WAIT). docs/scaling.md.
    pub replicas: u32,
    /// Where events live: `redis` (whatever `registry` names) or `amqp` (RabbitMQ).
    pub broker: EventBroker,
    /// RabbitMQ, for `broker: amqp` (docs/events.md, "RabbitMQ").
    pub amqp: AmqpConfig,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention: Dur::secs(24 * 3600),
            dedupe_window: Dur::secs(24 * 3600),
            subscriptions: Vec::new(),
            replicas: 1,
            broker: EventBroker::Redis,
            amqp: AmqpConfig::default(),
        }
    }
}

/// `events.broker`: where events are stored and delivered from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventBroker {
    /// Redis Streams on the registry's Redis.
    #[default]
    Redis,
    /// RabbitMQ (AMQP 0-9-1) at `events.amqp.url`.
    Amqp,
}

/// `events.amqp:` the RabbitMQ broker.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// `amqp://` or `amqps://` URL with the vhost; needed with `broker: amqp`.
    pub url: Option<AmqpUrl>,
    /// Unacknowledged messages the broker may push to one subscription of this meshlet.
    pub prefetch: u16,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: None,
            prefetch: 32,
        }
    }
}

/// An AMQP URL; like a Redis URL, its password is never shown (Debug, Serialize).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct AmqpUrl(pub Secret);

impl AmqpUrl {
    /// The URL as given, password included: only for connecting.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL with any password replaced.
    pub fn redacted(&self) -> String {
        let raw = self.0.expose();
        match (raw.find("://"), raw.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let creds = &raw[scheme_end + 3..at];
                let user = creds.split_once(':').map_or(creds, |(u, _)| u);
                format!("{}{user}:<redacted>{}", &raw[..scheme_end + 3], &raw[at..])
            }
            _ => raw.to_owned(),
        }
    }
}

impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for AmqpUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// One event subscription.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Event type, `[A-Za-z0-9._-]{1,128}`.
    #[serde(rename = "type")]
    pub event_type: ServiceName,
    /// Path POSTed on the app.
    pub path: String,
    /// Deliveries in all before dead-lettering.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: std::num::NonZeroU32,
    /// First redelivery pause; doubles, jittered.
    #[serde(default = "defaults::event_backoff")]
    pub backoff: Dur,
    /// Cap of the pause.
    #[serde(default = "defaults::event_max_backoff")]
    pub max_backoff: Dur,
    /// One delivery's timeout.
    #[serde(default = "defaults::event_timeout")]
    pub timeout: Dur,
    /// Deliveries in flight; 1 keeps stream order.
    #[serde(default = "defaults::one")]
    pub concurrency: std::num::NonZeroU32,
    /// Where a new group starts.
    #[serde(default)]
    pub start: StreamStart,
}

/// Where a new consumer group starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamStart {
    /// Only events published from now on.
    #[default]
    Latest,
    /// Everything the stream still holds.
    Earliest,
}

/// `realtime:` (docs/realtime.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeConfig {
    /// WebSocket path on the inbound listener.
    #[serde(default = "defaults::ws_path")]
    pub path: String,
    /// Client JWT verification.
    #[serde(default)]
    pub auth: Option<RealtimeAuth>,
    /// WebSocket ping interval.
    #[serde(default = "defaults::ping_interval")]
    pub ping_interval: Dur,
    /// No pong within this → closed.
    #[serde(default = "defaults::ping_timeout")]
    pub ping_timeout: Dur,
    /// Connection cap → 503 `overloaded`.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Messages buffered per client before it is closed as slow (4408).
    #[serde(default = "defaults::send_queue")]
    pub send_queue: u32,
    /// A client being sent messages that answers no ping for this long has stopped
    /// reading: closed as slow (4408), however much its socket buffers still absorb.
    #[serde(default = "defaults::slow_after")]
    pub slow_after: Dur,
    /// Per-room history for recovery.
    #[serde(default)]
    pub history: History,
    /// What a client's `publish` frame does.
    #[serde(default)]
    pub client_publish: ClientPublish,
    /// App path receiving client messages when `client_publish: app`.
    #[serde(default = "defaults::on_message")]
    pub on_message: String,
    /// Rooms one client may be in at once; a join beyond it gets an error frame
    /// `too_many_rooms` (the connection stays).
    #[serde(default = "defaults::max_rooms_per_client")]
    pub max_rooms_per_client: u32,
    /// Client publishes in flight toward the app per meshlet (`client_publish: app`);
    /// beyond it the client gets an error frame `overloaded`.
    #[serde(default = "defaults::app_concurrency")]
    pub app_concurrency: u32,
    /// Allow a hub without `auth` on a non-loopback inbound listener (anyone who reaches
    /// the port may connect); without it, that config is refused at start.
    #[serde(default)]
    pub allow_anonymous: bool,
}

/// `realtime.auth:`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeAuth {
    /// HS256 secret.
    pub secret: Secret,
    /// Refuse connections without a valid token.
    #[serde(default = "defaults::yes")]
    pub require: bool,
}

/// `realtime.history:`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct History {
    /// Entries kept per room; 0 = off.
    pub size: u32,
    /// How long a room's history lives after its last message.
    pub ttl: Dur,
}

impl Default for History {
    fn default() -> Self {
        History {
            size: 100,
            ttl: Dur::secs(600),
        }
    }
}

/// What a client's `publish` frame does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientPublish {
    /// POSTed to the app's `on_message`.
    #[default]
    App,
    /// Broadcast to the room.
    Room,
    /// Refused.
    Deny,
}

/// `telemetry:`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP trace export.
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

/// `telemetry.otlp:`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector URL.
    pub endpoint: Parsed<http::Uri>,
    /// How spans travel to the collector.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Share of traces started here that are sampled, 0-1.
    #[serde(default = "defaults::sample")]
    pub sample: f64,
}

/// `telemetry.otlp.protocol:` the two OTLP transports meshlet speaks. Any other value is a
/// parse error located at the value (serde names both accepted spellings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies, POSTed to `{endpoint}/v1/traces` (the default).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC: the `TraceService/Export` method at `{endpoint}`.
    #[serde(rename = "grpc")]
    Grpc,
}
