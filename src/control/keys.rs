//! Every Redis key and pub/sub channel name meshlet uses, under `registry.prefix` (`mesh` by
//! default), in one place and grouped by the contract that defines them: the registry
//! (docs/registry.md), events (docs/events.md) and the realtime hub (docs/realtime.md).
//! The names are contracts other programs rely on (a Python service registering itself,
//! an operator's `redis-cli`): change none without changing its page.
//!
//! ```text
//! docs/registry.md   {prefix}:services  {prefix}:svc:{service}  {prefix}:inst:{service}:{id}
//!                    {prefix}:changes
//! docs/events.md     {prefix}:events:{{type}}  {prefix}:evid:{{type}}:{source}:{event_id}
//!                    {prefix}:dlq:{{type}}
//! docs/realtime.md   {prefix}:rt:{svc}:all  {prefix}:rt:{svc}:room:{{room}}
//!                    {prefix}:rt:{svc}:user:{{user}}  {prefix}:rt:{svc}:hist:{{room}}
//!                    {prefix}:rt:{svc}:presence:{{room}}  {prefix}:rt:{svc}:alive:{instance}
//!                    {prefix}:rt:{svc}:instances  {prefix}:rt:{svc}:rooms:{instance}
//! ```
//!
//! Trust boundaries (docs/security.md): a dedupe key names the event's type and publishing
//! service, so one id reused for another type or by another service is a new event; every
//! hub key and channel names the service (`{svc}` = `service.name`), so services sharing
//! one Redis and prefix never share a hub. Service names and event types are
//! `[A-Za-z0-9._-]`: no `:`, so no two scopes spell the same key.
//!
//! `{{type}}` and `{{room}}` are the name in literal braces: a Redis Cluster hash tag, so the
//! keys one script touches share a slot (docs/scaling.md). One server and Sentinel use
//! the same names; the braces change nothing there.

/// Key and channel names under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }
}

/// The service registry (docs/registry.md).
impl Keys {
    /// `{prefix}:services`: SET of every service name that has registered.
    pub fn services(&self) -> String {
        format!("{}:services", self.prefix)
    }

    /// `{prefix}:svc:{service}`: ZSET of instance ids, score = expiry (unix ms).
    pub fn instances_of(&self, service: &str) -> String {
        format!("{}:svc:{service}", self.prefix)
    }

    /// `{prefix}:inst:{service}:{id}`: HASH of one instance.
    pub fn instance(&self, service: &str, id: &str) -> String {
        format!("{}:inst:{service}:{id}", self.prefix)
    }

    /// `{prefix}:changes`: channel, message = the name of a service that changed.
    pub fn changes(&self) -> String {
        format!("{}:changes", self.prefix)
    }
}

/// Events (docs/events.md).
impl Keys {
    /// `{prefix}:events:{{type}}`: STREAM of the events of `event_type`. The braces are a
    /// Redis Cluster hash tag: a type's stream, dedupe keys and dead letters share a slot,
    /// so one script may touch them all (docs/scaling.md).
    pub fn event_stream(&self, event_type: &str) -> String {
        format!("{}:events:{{{event_type}}}", self.prefix)
    }

    /// `{prefix}:evid:{{type}}:{source}:{event_id}`: STRING, the dedupe key of `event_id`
    /// published as `event_type` by the service `source`. The same id of another type or
    /// from another service is another event.
    pub fn event_dedupe(&self, event_type: &str, source: &str, event_id: &str) -> String {
        format!("{}:evid:{{{event_type}}}:{source}:{event_id}", self.prefix)
    }

    /// `{prefix}:dlq:{{type}}`: STREAM of the dead letters of `event_type`.
    pub fn dead_letters(&self, event_type: &str) -> String {
        format!("{}:dlq:{{{event_type}}}", self.prefix)
    }
}

/// The realtime hub (docs/realtime.md).
impl Keys {
    /// The hub keys of `service`: every one under `{prefix}:rt:{service}:`.
    pub fn hub(&self, service: &str) -> HubKeys {
        HubKeys {
            base: format!("{}:rt:{service}", self.prefix),
        }
    }
}

/// Key and channel names of one service's realtime hub, all under `{prefix}:rt:{svc}:`
/// (docs/realtime.md): another service on the same Redis and prefix has its own.
#[derive(Clone, Debug)]
pub struct HubKeys {
    /// `{prefix}:rt:{svc}`.
    base: String,
}

impl HubKeys {
    /// `{prefix}:rt:{svc}:all`: channel every meshlet of the service listens to.
    pub fn rt_all(&self) -> String {
        format!("{}:all", self.base)
    }

    /// `{prefix}:rt:{svc}:room:{{room}}`: channel of one room (sharded on a cluster; the
    /// hash tag puts it in the slot of the room's history, which one script writes both).
    pub fn rt_room(&self, room: &str) -> String {
        format!("{}:room:{{{room}}}", self.base)
    }

    /// `{prefix}:rt:{svc}:user:{{user}}`: channel of one user (sharded on a cluster).
    pub fn rt_user(&self, user: &str) -> String {
        format!("{}:user:{{{user}}}", self.base)
    }

    /// `{prefix}:rt:{svc}:hist:{{room}}`: STREAM, the history of a room.
    pub fn rt_history(&self, room: &str) -> String {
        format!("{}:hist:{{{room}}}", self.base)
    }

    /// `{prefix}:rt:{svc}:presence:{{room}}`: HASH client id → user of a room.
    pub fn rt_presence(&self, room: &str) -> String {
        format!("{}:presence:{{{room}}}", self.base)
    }

    /// `{prefix}:rt:{svc}:alive:{instance}`: STRING, the liveness key of a meshlet.
    pub fn rt_alive(&self, instance: &str) -> String {
        format!("{}:alive:{instance}", self.base)
    }

    /// `{prefix}:rt:{svc}:instances`: SET of the service's meshlets that write presence.
    pub fn rt_instances(&self) -> String {
        format!("{}:instances", self.base)
    }

    /// `{prefix}:rt:{svc}:rooms:{instance}`: SET of the rooms a meshlet has presence
    /// entries in.
    pub fn rt_instance_rooms(&self, instance: &str) -> String {
        format!("{}:rooms:{instance}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn every_name_is_spelled_as_its_page_says() {
        let k = Keys::new("mesh");
        // docs/registry.md
        assert_eq!(k.services(), "mesh:services");
        assert_eq!(k.instances_of("orders"), "mesh:svc:orders");
        assert_eq!(
            k.instance("orders", "orders-7e05b8"),
            "mesh:inst:orders:orders-7e05b8"
        );
        assert_eq!(k.changes(), "mesh:changes");
        // docs/events.md
        assert_eq!(
            k.event_stream("trade.executed"),
            "mesh:events:{trade.executed}"
        );
        assert_eq!(
            k.event_dedupe("trade.executed", "orders", "ev-1"),
            "mesh:evid:{trade.executed}:orders:ev-1"
        );
        // One id of another type, or from another service, is another key.
        assert_ne!(
            k.event_dedupe("trade.executed", "orders", "ev-1"),
            k.event_dedupe("trade.cancelled", "orders", "ev-1")
        );
        assert_ne!(
            k.event_dedupe("trade.executed", "orders", "ev-1"),
            k.event_dedupe("trade.executed", "billing", "ev-1")
        );
        assert_eq!(
            k.dead_letters("trade.executed"),
            "mesh:dlq:{trade.executed}"
        );
        // docs/realtime.md: every hub key under the service's name
        let h = k.hub("chat");
        assert_eq!(h.rt_all(), "mesh:rt:chat:all");
        assert_eq!(h.rt_room("lobby"), "mesh:rt:chat:room:{lobby}");
        assert_eq!(h.rt_user("u1"), "mesh:rt:chat:user:{u1}");
        assert_eq!(h.rt_history("lobby"), "mesh:rt:chat:hist:{lobby}");
        assert_eq!(h.rt_presence("lobby"), "mesh:rt:chat:presence:{lobby}");
        assert_eq!(h.rt_alive("chat-7e05b8"), "mesh:rt:chat:alive:chat-7e05b8");
        assert_eq!(h.rt_instances(), "mesh:rt:chat:instances");
        assert_eq!(
            h.rt_instance_rooms("chat-7e05b8"),
            "mesh:rt:chat:rooms:chat-7e05b8"
        );
        // Another service's hub shares no name with this one.
        let other = k.hub("billing");
        assert_ne!(other.rt_all(), h.rt_all());
        assert_ne!(other.rt_user("u1"), h.rt_user("u1"));
        assert_ne!(other.rt_instances(), h.rt_instances());
        // Another prefix changes only the prefix.
        assert_eq!(Keys::new("staging").changes(), "staging:changes");
    }
}
