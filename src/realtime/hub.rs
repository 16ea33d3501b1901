//! This meshlet's share of the hub: the connected clients, the rooms and users they belong
//! to, and local fan-out. Fan-out never waits on a socket: each client has a bounded queue
//! drained by its own connection task, and a client whose queue is full is marked slow and
//! closed (4408) instead of slowing the others.
//!
//! Lock order: `rooms` before a client's own `rooms`; no lock is held across an `.await`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::ThreadId;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::auth::Identity;
use super::close::CloseReason;
use super::delivery::{Delivery, Target};
use super::error::RealtimeError;
use super::metrics::RealtimeMetrics;
use super::queue::{PushError, SendQueue};

/// A connected client as the hub sees it.
pub struct Client {
    /// Unique id: `{instance}:{n}`, so presence can tell which meshlet holds it.
    pub id: Arc<str>,
    /// Verified identity.
    pub identity: Identity,
    /// The user id as a shared key.
    pub user: Option<Arc<str>>,
    /// Deliveries waiting for the connection task.
    pub queue: SendQueue<Arc<Delivery>>,
    rooms: Mutex<HashSet<Arc<str>>>,
    close: Mutex<Option<CloseReason>>,
    /// Woken when the hub wants the connection closed.
    pub closing: Notify,
    /// The runtime (and its thread) the connection's task runs on: fan-out hands each
    /// worker its share in one task, so waking the connection tasks stays on their own
    /// thread instead of costing a cross-thread wake-up each. `None` outside a runtime.
    home: Option<Home>,
}

/// The thread and runtime a connection's task lives on.
type Home = (ThreadId, Handle);

impl Client {
    /// A client with an empty send queue of `queue_len` messages.
    pub fn new(id: Arc<str>, identity: Identity, queue_len: usize) -> Arc<Client> {
        let user = identity.user.as_deref().map(Arc::from);
        Arc::new(Client {
            id,
            identity,
            user,
            queue: SendQueue::new(queue_len),
            rooms: Mutex::new(HashSet::new()),
            close: Mutex::new(None),
            closing: Notify::new(),
            home: Handle::try_current()
                .ok()
                .map(|h| (std::thread::current().id(), h)),
        })
    }

    /// Queues `delivery` without waiting. A full queue marks the client slow; returns
    /// whether the client was newly found slow.
    pub fn send(&self, delivery: &Arc<Delivery>) -> bool {
        match self.queue.push(delivery.clone()) {
            Ok(()) => false,
            Err(PushError::Full) => self.close(CloseReason::Slow),
            Err(PushError::Closed) => false,
        }
    }

    /// Asks the connection task to close; the first reason wins. Returns whether this call
    /// set it.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut close = self.close.lock().unwrap_or_else(|e| e.into_inner());
        if close.is_some() {
            return false;
        }
        *close = Some(reason);
        self.closing.notify_one();
        true
    }

    /// Rooms the client is in.
    #[cfg(test)]
    fn rooms(&self) -> Vec<Arc<str>> {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The reason set by [`Client::close`].
    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Members = HashMap<Arc<str>, Arc<Client>>;

/// A room member as presence lists it: (client id, user).
pub type Member = (Arc<str>, Option<Arc<str>>);

/// The clients, rooms and users of this meshlet.
pub struct Hub {
    clients: RwLock<Members>,
    rooms: RwLock<HashMap<Arc<str>, Members>>,
    users: RwLock<HashMap<Arc<str>, Members>>,
    admitted: AtomicUsize,
    max_connections: usize,
    /// `realtime.max_rooms_per_client`, checked on join only (never on fan-out).
    max_rooms: usize,
    metrics: RealtimeMetrics,
}

/// A slot under `max_connections`, given back when dropped.
pub struct Admission {
    hub: Arc<Hub>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hub.admitted.fetch_sub(1, Ordering::AcqRel);
        self.hub.metrics.connections.dec();
    }
}

/// What removing a client left behind: rooms and user channels nobody holds any more.
#[derive(Debug, Default)]
pub struct Departure {
    /// Rooms that lost their last local member.
    pub empty_rooms: Vec<Arc<str>>,
    /// Rooms the client was in.
    pub rooms: Vec<Arc<str>>,
    /// The user's last local connection closed.
    pub user_gone: Option<Arc<str>>,
}

impl Hub {
    /// An empty hub: at most `max_connections` clients, each in at most `max_rooms` rooms.
    pub fn new(max_connections: usize, max_rooms: usize, metrics: RealtimeMetrics) -> Arc<Hub> {
        Arc::new(Hub {
            clients: RwLock::default(),
            rooms: RwLock::default(),
            users: RwLock::default(),
            admitted: AtomicUsize::new(0),
            max_connections,
            max_rooms,
            metrics,
        })
    }

    /// Takes a connection slot, or `None` at `max_connections`.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        let max = self.max_connections;
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.metrics.connections.inc();
        Some(Admission { hub: self.clone() })
    }

    /// Connections held (admitted, including those still upgrading).
    pub fn connections(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Adds a connected client; returns whether it is its user's first local connection.
    pub fn register(&self, client: &Arc<Client>) -> bool {
        write(&self.clients).insert(client.id.clone(), client.clone());
        match &client.user {
            Some(user) => {
                let mut users = write(&self.users);
                let members = users.entry(user.clone()).or_default();
                members.insert(client.id.clone(), client.clone());
                members.len() == 1
            }
            None => false,
        }
    }

    /// Removes a client from everything.
    pub fn unregister(&self, client: &Client) -> Departure {
        write(&self.clients).remove(&client.id);
        let mut departure = Departure::default();
        {
            let mut rooms = write(&self.rooms);
            let mine: Vec<Arc<str>> = lock(&client.rooms).drain().collect();
            for room in mine {
                if let Some(members) = rooms.get_mut(&room) {
                    members.remove(&client.id);
                    if members.is_empty() {
                        rooms.remove(&room);
                        departure.empty_rooms.push(room.clone());
                    }
                }
                departure.rooms.push(room);
            }
            self.metrics.rooms.set(rooms.len() as i64);
        }
        if let Some(user) = &client.user {
            let mut users = write(&self.users);
            if let Some(members) = users.get_mut(user) {
                members.remove(&client.id);
                if members.is_empty() {
                    users.remove(user);
                    departure.user_gone = Some(user.clone());
                }
            }
        }
        departure
    }

    /// Puts `client` in `room`; returns whether it was not a member before. Refused with
    /// [`RealtimeError::Gone`] when the client is no longer connected (a server-side join
    /// that raced its disconnect must not leave it in a room nobody would ever take it
    /// out of), and with [`RealtimeError::TooManyRooms`] when it is in
    /// `max_rooms_per_client` rooms already (joining one it is in is always fine).
    pub fn join(&self, client: &Arc<Client>, room: &Arc<str>) -> Result<bool, RealtimeError> {
        let mut rooms = write(&self.rooms);
        // Checked under the rooms lock: `unregister` removes the client from `clients`
        // before it empties the client's rooms under this lock, so either this join
        // sees it gone, or `unregister` sees the room this join added.
        if !read(&self.clients).contains_key(&client.id) {
            return Err(RealtimeError::Gone);
        }
        {
            // Under the rooms lock too: two joins of one client cannot both pass the limit.
            let mine = lock(&client.rooms);
            if mine.len() >= self.max_rooms && !mine.contains(room) {
                return Err(RealtimeError::TooManyRooms(self.max_rooms));
            }
        }
        let added = rooms
            .entry(room.clone())
            .or_default()
            .insert(client.id.clone(), client.clone())
            .is_none();
        lock(&client.rooms).insert(room.clone());
        self.metrics.rooms.set(rooms.len() as i64);
        Ok(added)
    }

    /// Takes `client` out of `room`; returns `Some(room_now_empty)` when it was a member.
    pub fn leave(&self, client: &Client, room: &str) -> Option<bool> {
        let mut rooms = write(&self.rooms);
        let members = rooms.get_mut(room)?;
        members.remove(&client.id)?;
        lock(&client.rooms).remove(room);
        let empty = members.is_empty();
        if empty {
            rooms.remove(room);
        }
        self.metrics.rooms.set(rooms.len() as i64);
        Some(empty)
    }

    /// Whether any local client is in `room`.
    pub fn has_room(&self, room: &str) -> bool {
        read(&self.rooms).contains_key(room)
    }

    /// Whether any local client belongs to `user`.
    pub fn has_user(&self, user: &str) -> bool {
        read(&self.users).contains_key(user)
    }

    /// Rooms and users held locally (what to subscribe to after a reconnect).
    pub fn held(&self) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        (
            read(&self.rooms).keys().cloned().collect(),
            read(&self.users).keys().cloned().collect(),
        )
    }

    /// Local rooms with their member counts.
    pub fn room_sizes(&self) -> Vec<(Arc<str>, usize)> {
        let mut sizes: Vec<_> = read(&self.rooms)
            .iter()
            .map(|(r, m)| (r.clone(), m.len()))
            .collect();
        sizes.sort();
        sizes
    }

    /// Local members of `room` as (client, user) pairs.
    pub fn members(&self, room: &str) -> Vec<Member> {
        read(&self.rooms)
            .get(room)
            .map(|m| m.values().map(|c| (c.id.clone(), c.user.clone())).collect())
            .unwrap_or_default()
    }

    /// Local clients a target names (for server-side join and leave).
    pub fn clients_for(&self, target: &Target) -> Vec<Arc<Client>> {
        match target {
            Target::All => read(&self.clients).values().cloned().collect(),
            Target::Room(r) => read(&self.rooms)
                .get(r.as_str())
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            Target::User(u) => read(&self.users)
                .get(u.as_str())
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            Target::Client(c) => read(&self.clients)
                .get(c.as_str())
                .cloned()
                .into_iter()
                .collect(),
        }
    }

    /// Every local client (shutdown).
    pub fn all_clients(&self) -> Vec<Arc<Client>> {
        read(&self.clients).values().cloned().collect()
    }

    /// Queues `delivery` for every local client `target` names; returns how many.
    /// Never waits: a full queue marks that client slow.
    ///
    /// The members are collected under the lock, then each worker runtime gets its share
    /// in one task (inline for the calling thread's own): at 10,000 recipients, waking
    /// every connection task from the subscriber's thread cost one cross-thread wake-up
    /// (an eventfd write) per client, and most of a broadcast's latency.
    pub fn deliver(&self, target: &Target, delivery: &Arc<Delivery>) -> usize {
        let started = Instant::now();
        let mut groups: Vec<(Option<Home>, Vec<Arc<Client>>)> = Vec::new();
        let mut reached = 0usize;
        let mut add = |client: &Arc<Client>| {
            reached += 1;
            let thread = client.home.as_ref().map(|(t, _)| *t);
            match groups
                .iter_mut()
                .find(|(home, _)| home.as_ref().map(|(t, _)| *t) == thread)
            {
                Some((_, clients)) => clients.push(client.clone()),
                None => groups.push((client.home.clone(), vec![client.clone()])),
            }
        };
        match target {
            Target::All => read(&self.clients).values().for_each(&mut add),
            Target::Room(r) => {
                if let Some(m) = read(&self.rooms).get(r.as_str()) {
                    m.values().for_each(&mut add);
                }
            }
            Target::User(u) => {
                if let Some(m) = read(&self.users).get(u.as_str()) {
                    m.values().for_each(&mut add);
                }
            }
            Target::Client(c) => {
                if let Some(client) = read(&self.clients).get(c.as_str()) {
                    add(client);
                }
            }
        }
        let here = std::thread::current().id();
        for (home, clients) in groups {
            let delivery = delivery.clone();
            let metrics = self.metrics.clone();
            let push = move || {
                let slow = clients.iter().filter(|c| c.send(&delivery)).count() as u64;
                if slow > 0 {
                    metrics.slow_dropped.inc_by(slow);
                }
            };
            match home {
                Some((thread, handle)) if thread != here => {
                    // Tasks spawned from one thread run in order: per client, messages
                    // stay in the order they were dispatched.
                    handle.spawn(async move { push() });
                }
                _ => push(),
            }
        }
        self.metrics.fanout.observe(started.elapsed().as_secs_f64());
        reached
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock leaves plain maps behind: still consistent enough to
    // keep serving, so poisoning is ignored.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Arc<Hub> {
        Hub::new(2, 3, RealtimeMetrics::new(&prometheus::Registry::new()))
    }

    #[test]
    fn admission_is_capped_and_returned() {
        let hub = hub();
        let a = hub.admit().expect("first");
        let _b = hub.admit().expect("second");
        assert!(hub.admit().is_none());
        drop(a);
        assert!(hub.admit().is_some());
    }

    #[test]
    fn a_client_that_left_cannot_be_joined_to_a_room() {
        let hub = hub();
        let client = Client::new("i:1".into(), Identity::default(), 1);
        hub.register(&client);
        hub.unregister(&client);
        let room: Arc<str> = "r".into();
        assert!(matches!(hub.join(&client, &room), Err(RealtimeError::Gone)));
        assert!(!hub.has_room("r"));
        assert!(client.rooms().is_empty());
    }

    #[test]
    fn a_client_joins_at_most_max_rooms() {
        let hub = hub();
        let client = Client::new("i:1".into(), Identity::default(), 1);
        hub.register(&client);
        for r in ["a", "b", "c"] {
            assert!(matches!(hub.join(&client, &r.into()), Ok(true)));
        }
        let fourth: Arc<str> = "d".into();
        assert!(matches!(
            hub.join(&client, &fourth),
            Err(RealtimeError::TooManyRooms(3))
        ));
        assert!(!hub.has_room("d"));
        // Joining a room it is in again is not a new room.
        assert!(matches!(hub.join(&client, &"a".into()), Ok(false)));
        hub.leave(&client, "a");
        assert!(matches!(hub.join(&client, &fourth), Ok(true)));
    }

    #[test]
    fn full_queue_marks_the_client_slow_once() {
        let hub = hub();
        let client = Client::new("i:1".into(), Identity::default(), 1);
        hub.register(&client);
        let room: Arc<str> = "r".into();
        assert!(matches!(hub.join(&client, &room), Ok(true)));
        let d = Delivery::plain("x".into());
        assert_eq!(hub.deliver(&Target::Room("r".into()), &d), 1);
        assert!(client.close_reason().is_none());
        hub.deliver(&Target::Room("r".into()), &d);
        hub.deliver(&Target::Room("r".into()), &d);
        assert_eq!(client.close_reason(), Some(CloseReason::Slow));
        assert_eq!(hub.metrics.slow_dropped.get(), 1);
        let gone = hub.unregister(&client);
        assert_eq!(gone.empty_rooms.len(), 1);
        assert!(!hub.has_room("r"));
    }
}
