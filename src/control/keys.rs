//! Every Redis key and pub/sub channel name meshlet uses, under `registry.prefix` (`mesh` by
//! default), in one place and grouped by the contract that defines them: the registry
//! (docs/registry.md), events (docs/events.md) and the realtime hub (docs/realtime.md).
//! The names are contracts other programs rely on (a Python service registering itself,
//! an operator's `redis-cli`): change none without changing its page.
//!
//! ```text
//! docs/registry.md   {prefix}:services  {prefix}:svc:{service}  {prefix}:inst:{service}:{id}
//!                    {prefix}:changes
//! docs/events.md     {prefix}:events:{type}  {prefix}:evid:{event_id}  {prefix}:dlq:{type}
//! docs/realtime.md   {prefix}:rt:all  {prefix}:rt:room:{room}  {prefix}:rt:user:{user}
//!                    {prefix}:rt:hist:{room}  {prefix}:rt:presence:{room}
//!                    {prefix}:rt:alive:{instance}  {prefix}:rt:instances
//!                    {prefix}:rt:rooms:{instance}
//! ```

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
    /// `{prefix}:events:{type}`: STREAM of the events of `event_type`.
    pub fn event_stream(&self, event_type: &str) -> String {
        format!("{}:events:{event_type}", self.prefix)
    }

    /// `{prefix}:evid:{event_id}`: STRING, the dedupe key of `event_id`.
    pub fn event_dedupe(&self, event_id: &str) -> String {
        format!("{}:evid:{event_id}", self.prefix)
    }

    /// `{prefix}:dlq:{type}`: STREAM of the dead letters of `event_type`.
    pub fn dead_letters(&self, event_type: &str) -> String {
        format!("{}:dlq:{event_type}", self.prefix)
    }
}

/// The realtime hub (docs/realtime.md).
impl Keys {
    /// `{prefix}:rt:all`: channel every meshlet of the service listens to.
    pub fn rt_all(&self) -> String {
        format!("{}:rt:all", self.prefix)
    }

    /// `{prefix}:rt:room:{room}`: channel of one room.
    pub fn rt_room(&self, room: &str) -> String {
        format!("{}:rt:room:{room}", self.prefix)
    }

    /// `{prefix}:rt:user:{user}`: channel of one user.
    pub fn rt_user(&self, user: &str) -> String {
        format!("{}:rt:user:{user}", self.prefix)
    }

    /// `{prefix}:rt:hist:{room}`: STREAM, the history of a room.
    pub fn rt_history(&self, room: &str) -> String {
        format!("{}:rt:hist:{room}", self.prefix)
    }

    /// `{prefix}:rt:presence:{room}`: HASH client id → user of a room.
    pub fn rt_presence(&self, room: &str) -> String {
        format!("{}:rt:presence:{room}", self.prefix)
    }

    /// `{prefix}:rt:alive:{instance}`: STRING, the liveness key of a meshlet.
    pub fn rt_alive(&self, instance: &str) -> String {
        format!("{}:rt:alive:{instance}", self.prefix)
    }

    /// `{prefix}:rt:instances`: SET of the meshlets that write presence.
    pub fn rt_instances(&self) -> String {
        format!("{}:rt:instances", self.prefix)
    }

    /// `{prefix}:rt:rooms:{instance}`: SET of the rooms a meshlet has presence entries in.
    pub fn rt_instance_rooms(&self, instance: &str) -> String {
        format!("{}:rt:rooms:{instance}", self.prefix)
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
            "mesh:events:trade.executed"
        );
        assert_eq!(k.event_dedupe("ev-1"), "mesh:evid:ev-1");
        assert_eq!(k.dead_letters("trade.executed"), "mesh:dlq:trade.executed");
        // docs/realtime.md
        assert_eq!(k.rt_all(), "mesh:rt:all");
        assert_eq!(k.rt_room("lobby"), "mesh:rt:room:lobby");
        assert_eq!(k.rt_user("u1"), "mesh:rt:user:u1");
        assert_eq!(k.rt_history("lobby"), "mesh:rt:hist:lobby");
        assert_eq!(k.rt_presence("lobby"), "mesh:rt:presence:lobby");
        assert_eq!(k.rt_alive("orders-7e05b8"), "mesh:rt:alive:orders-7e05b8");
        assert_eq!(k.rt_instances(), "mesh:rt:instances");
        assert_eq!(
            k.rt_instance_rooms("orders-7e05b8"),
            "mesh:rt:rooms:orders-7e05b8"
        );
        // Another prefix changes only the prefix.
        assert_eq!(Keys::new("staging").changes(), "staging:changes");
    }
}
