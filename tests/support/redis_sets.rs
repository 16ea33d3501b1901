//! Redis topologies of a test's own beyond one server, for the `registry.sentinel` and
//! `registry.cluster` backends: a [`SentinelSet`] (a master, its replica and three sentinels)
//! and a [`ClusterSet`] (three masters with a replica each). Every process runs on free
//! 127.0.0.1 ports with its own temp dir and is SIGKILLed on drop. The sets also inject the
//! failures the tests need (a master SIGKILLed, a `CLUSTER FAILOVER`, a slot migrated) and
//! wait for their end on the servers' own signals (roles, link status, what sentinels name),
//! every wait bounded in time.
//!
//! Everything here blocks the calling thread: from a multi-thread tokio test, call the long
//! waits inside `tokio::task::block_in_place` so the in-process meshlets keep running.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;

use super::free_port;

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "mymaster";
/// Sentinels call a master down after this long without a valid reply.
const DOWN_AFTER_MS: u64 = 1_000;
/// A failover the sentinels started must end within this long (or it is retried after 2x).
const FAILOVER_TIMEOUT_MS: u64 = 3_000;
/// Cluster nodes call a peer failing after this long; short so an unreachable master is
/// replaced quickly, long enough for a loaded 2-core test machine.
const CLUSTER_NODE_TIMEOUT_MS: u64 = 2_000;
/// Keys per `MIGRATE` of a slot migration, and the pause after each batch.
const MIGRATE_BATCH: usize = 5;
const MIGRATE_PAUSE: Duration = Duration::from_millis(50);
/// How long one connect or one reply of the harness's own connections may take: a node that
/// stopped answering must not hang a test.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Starting a whole set, replication and gossip included.
const SETTLE: Duration = Duration::from_secs(30);
/// Between two polls of a server's state.
const POLL: Duration = Duration::from_millis(20);

/// Passwords of a set; `None` leaves that part open.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// `requirepass` (and `masterauth`) of the data nodes.
    pub password: Option<String>,
    /// `requirepass` of the sentinels (a [`SentinelSet`] only).
    pub sentinel_password: Option<String>,
}

impl Auth {
    /// Both passwords set (letters and digits: they go into URLs and YAML as they are).
    pub fn passwords(password: &str, sentinel_password: &str) -> Auth {
        Auth {
            password: Some(password.to_owned()),
            sentinel_password: Some(sentinel_password.to_owned()),
        }
    }
}

/// What a redis-server process is started as.
#[derive(Clone, Debug)]
enum Kind {
    /// A data node; a replica of the master on the given port when set.
    Data { replica_of: Option<u16> },
    /// A node with `cluster-enabled yes` (its bus on [`Node::bus_port`]).
    Cluster,
    /// A sentinel, with these lines after `port`/`bind`/`dir` in its sentinel.conf.
    Sentinel { conf: String },
}

/// One redis-server process (a data node, a cluster node or a sentinel).
struct Node {
    port: u16,
    /// The cluster bus (`--cluster-port`): `port + 10000`, the default, may not be free or
    /// may not even be a port.
    bus_port: u16,
    dir: tempfile::TempDir,
    kind: Kind,
    /// The password clients give this node.
    password: Option<String>,
    /// Data nodes: the password of the master they replicate (`masterauth`).
    masterauth: Option<String>,
    child: Option<Child>,
}

impl Node {
    /// Starts a node on free ports, trying others when a port was taken meanwhile.
    fn start(kind: Kind, password: Option<&str>, masterauth: Option<&str>) -> Node {
        for _ in 0..20 {
            let mut node = Node {
                port: free_port(),
                bus_port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                kind: kind.clone(),
                password: password.map(str::to_owned),
                masterauth: masterauth.map(str::to_owned),
                child: None,
            };
            if node.spawn() {
                return node;
            }
        }
        panic!("could not start redis-server ({kind:?}) on a free port");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn dir(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 temp path")
    }

    fn command(&self) -> Command {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        match &self.kind {
            Kind::Sentinel { conf } => {
                let path = self.dir.path().join("sentinel.conf");
                // Sentinels rewrite their file with what they learn, so it is theirs to keep.
                let text = format!("port {port}\nbind 127.0.0.1\ndir {}\n{conf}", self.dir());
                std::fs::write(&path, text).expect("sentinel.conf written");
                cmd.arg(path).arg("--sentinel");
            }
            Kind::Data { .. } | Kind::Cluster => {
                cmd.args(["--port", &port, "--bind", "127.0.0.1", "--dir", self.dir()]);
                // No persistence; replicas sync at once (7.0 waits 5 s for more replicas).
                cmd.args(["--save", "", "--appendonly", "no"]);
                cmd.args(["--repl-diskless-sync-delay", "0"]);
            }
        }
        if let Kind::Data {
            replica_of: Some(master),
        } = &self.kind
        {
            cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        if let Kind::Cluster = &self.kind {
            cmd.args(["--cluster-enabled", "yes"]);
            cmd.args(["--cluster-config-file", "nodes.conf"]);
            cmd.args([
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT_MS.to_string(),
            ]);
            cmd.args(["--cluster-port", &self.bus_port.to_string()]);
        }
        if !matches!(self.kind, Kind::Sentinel { .. }) {
            if let Some(pw) = &self.password {
                cmd.args(["--requirepass", pw]);
            }
            if let Some(pw) = &self.masterauth {
                cmd.args(["--masterauth", pw]);
            }
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    /// Spawns the process and waits until it answers PING; false when it exited (a port
    /// was taken) or never answered.
    fn spawn(&mut self) -> bool {
        let child = self
            .command()
            .spawn()
            .expect("redis-server must be installed (bash .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if let Ok(mut conn) = self.try_conn() {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(POLL);
        }
        self.kill();
        false
    }

    fn url(&self) -> String {
        url(self.addr(), self.password.as_deref())
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        open(self.addr(), self.password.as_deref())
    }

    fn conn(&self) -> redis::Connection {
        self.try_conn()
            .unwrap_or_else(|e| panic!("connection to {}: {e}", self.addr()))
    }

    /// SIGKILL (no shutdown, no last words to replicas or sentinels).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process: a stopped node keeps its connections
    /// open and answers nothing, as a stalled machine does.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running node").id();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -{signal} {pid}");
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis://[:password@]addr`: no database number, sentinels have none.
fn url(addr: SocketAddr, password: Option<&str>) -> String {
    match password {
        Some(pw) => format!("redis://:{pw}@{addr}"),
        None => format!("redis://{addr}"),
    }
}

/// A connection with bounded connect, read and write times.
fn open(addr: SocketAddr, password: Option<&str>) -> redis::RedisResult<redis::Connection> {
    let conn = redis::Client::open(url(addr, password))?.get_connection_with_timeout(IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// Polls `check` until it gives a value or `within` passes (then panics, naming `what`).
fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// `INFO section` as its `key:value` lines.
fn info(conn: &mut redis::Connection, section: &str) -> HashMap<String, String> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query(conn)
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The `role` of INFO replication (`master` or `slave`), `None` when the node does not answer.
fn role(addr: SocketAddr, password: Option<&str>) -> Option<String> {
    let mut conn = open(addr, password).ok()?;
    info(&mut conn, "replication").remove("role")
}

/// Whether the node at `addr` is a replica of `master` with its link up (synced).
fn replicates(addr: SocketAddr, master: SocketAddr, password: Option<&str>) -> bool {
    let Ok(mut conn) = open(addr, password) else {
        return false;
    };
    let i = info(&mut conn, "replication");
    i.get("role").map(String::as_str) == Some("slave")
        && i.get("master_port") == Some(&master.port().to_string())
        && i.get("master_link_status").map(String::as_str) == Some("up")
}

/// `127.0.0.1:port` lines of `addrs`, for a YAML list (`["a", "b"]`).
fn yaml_list(addrs: &[SocketAddr]) -> String {
    let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// What the tests need of any set: where a meshlet's `registry:` points, and a connection
/// to the master that holds a key (to look at what meshlets wrote).
pub trait RedisSet {
    /// The entry under `registry:` (`sentinel: {...}` or `cluster: {...}`), without braces
    /// around it: `MeshletSpec::on` takes it as it is.
    fn registry_entry(&self) -> String;
    /// A connection to the master that holds `key` now.
    fn conn_for(&self, key: &str) -> redis::Connection;
    /// The masters' addresses now.
    fn masters(&self) -> Vec<SocketAddr>;
    /// The replicas of the master that holds `key` now.
    fn replicas_for(&self, key: &str) -> Vec<SocketAddr>;
    /// Stops the data node at `addr` (SIGSTOP): its master still counts it as connected,
    /// but it confirms nothing (`WAIT` times out).
    fn pause(&self, addr: SocketAddr);
    /// Lets a paused node run again (SIGCONT).
    fn resume(&self, addr: SocketAddr);
    /// Whether rooms and users take sharded pub/sub here (`SSUBSCRIBE`; a cluster only).
    fn sharded_pubsub(&self) -> bool;
    /// The channels some client subscribed to on any running data node: `PUBSUB CHANNELS`,
    /// or `PUBSUB SHARDCHANNELS` when `sharded`.
    fn subscribed_channels(&self, sharded: bool) -> HashSet<String>;
}

/// [`RedisSet::subscribed_channels`] over `nodes`.
fn channels_of(nodes: &[Node], sharded: bool) -> HashSet<String> {
    let what = if sharded { "SHARDCHANNELS" } else { "CHANNELS" };
    nodes
        .iter()
        .filter(|n| n.is_running())
        .filter_map(|n| n.try_conn().ok())
        .flat_map(|mut c| {
            redis::cmd("PUBSUB")
                .arg(what)
                .query::<Vec<String>>(&mut c)
                .unwrap_or_default()
        })
        .collect()
}

fn node_at(nodes: &[Node], addr: SocketAddr) -> &Node {
    nodes
        .iter()
        .find(|n| n.addr() == addr)
        .unwrap_or_else(|| panic!("{addr} is not a node of the set"))
}

/// The end of a Sentinel failover as a test saw it.
#[derive(Clone, Copy, Debug)]
pub struct Switch {
    /// The master that was killed.
    pub from: SocketAddr,
    /// The master a sentinel names now.
    pub to: SocketAddr,
    /// When a sentinel was first seen naming `to` (what `+switch-master` announces): the
    /// start of docs' "within 10 s" bound.
    pub at: Instant,
}

/// A master, its replica and three sentinels (quorum 2) monitoring it as [`MASTER_NAME`].
pub struct SentinelSet {
    /// The data nodes: the first master and its replica (roles change on failover).
    data: Vec<Node>,
    sentinels: Vec<Node>,
    auth: Auth,
    /// The master [`SentinelSet::kill_master`] killed last.
    killed: Option<SocketAddr>,
}

impl SentinelSet {
    /// A set without passwords, ready: the replica synced, every sentinel naming the master
    /// and knowing the replica and the two other sentinels.
    pub fn start() -> SentinelSet {
        SentinelSet::start_with(Auth::default())
    }

    /// [`SentinelSet::start`] with `requirepass` on the data nodes and/or the sentinels.
    pub fn start_with(auth: Auth) -> SentinelSet {
        let pw = auth.password.as_deref();
        let master = Node::start(Kind::Data { replica_of: None }, pw, pw);
        let replica = Node::start(
            Kind::Data {
                replica_of: Some(master.port),
            },
            pw,
            pw,
        );
        let (m, r) = (master.addr(), replica.addr());
        wait_for("replica synced", SETTLE, || {
            replicates(r, m, pw).then_some(())
        });
        let conf = sentinel_conf(master.port, &auth);
        let sentinels = (0..3)
            .map(|_| {
                Node::start(
                    Kind::Sentinel { conf: conf.clone() },
                    auth.sentinel_password.as_deref(),
                    None,
                )
            })
            .collect();
        let set = SentinelSet {
            data: vec![master, replica],
            sentinels,
            auth,
            killed: None,
        };
        set.wait_sentinels_agree(m, r);
        set
    }

    /// Waits until every sentinel names `master`, sees `replica` up and knows the two other
    /// sentinels (they find each other through hello messages on the master, every 2 s).
    fn wait_sentinels_agree(&self, master: SocketAddr, replica: SocketAddr) {
        for s in &self.sentinels {
            wait_for("sentinel knows the set", SETTLE, || {
                let mut conn = s.try_conn().ok()?;
                let named = ask_master(&mut conn)?;
                let replicas = sentinel_table(&mut conn, "REPLICAS");
                let peers = sentinel_table(&mut conn, "SENTINELS");
                let replica_up = replicas.iter().any(|r| {
                    r.get("port") == Some(&replica.port().to_string())
                        && r.get("flags")
                            .is_some_and(|f| !f.contains("down") && !f.contains("disconnected"))
                });
                (named == master && replica_up && peers.len() == self.sentinels.len() - 1)
                    .then_some(())
            });
        }
    }

    /// The sentinels' addresses.
    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(Node::addr).collect()
    }

    /// SIGKILLs sentinel `index` (of [`SentinelSet::sentinel_addrs`]); the two others still
    /// make the quorum of 2.
    pub fn kill_sentinel(&mut self, index: usize) -> SocketAddr {
        let sentinel = &mut self.sentinels[index];
        sentinel.kill();
        sentinel.addr()
    }

    /// The master, as the first sentinel that answers names it.
    pub fn master_addr(&self) -> SocketAddr {
        wait_for("a sentinel names the master", SETTLE, || {
            self.sentinels
                .iter()
                .find_map(|s| ask_master(&mut s.try_conn().ok()?))
        })
    }

    /// The data nodes that run and are not the master.
    pub fn replica_addrs(&self) -> Vec<SocketAddr> {
        let master = self.master_addr();
        self.data
            .iter()
            .filter(|n| n.is_running() && n.addr() != master)
            .map(Node::addr)
            .collect()
    }

    /// A connection to the current master.
    pub fn master_conn(&self) -> redis::Connection {
        self.conn_to(self.master_addr())
    }

    /// A connection to the data node at `addr`.
    pub fn conn_to(&self, addr: SocketAddr) -> redis::Connection {
        open(addr, self.auth.password.as_deref())
            .unwrap_or_else(|e| panic!("connection to {addr}: {e}"))
    }

    /// The URL of the data node at `addr` (with its password).
    pub fn url_of(&self, addr: SocketAddr) -> String {
        url(addr, self.auth.password.as_deref())
    }

    /// SIGKILLs the current master; returns its address.
    pub fn kill_master(&mut self) -> SocketAddr {
        let master = self.master_addr();
        let node = self
            .data
            .iter_mut()
            .find(|n| n.addr() == master)
            .expect("the master sentinels name is one of the set's");
        node.kill();
        self.killed = Some(master);
        master
    }

    /// A planned failover: `SENTINEL FAILOVER` on the first running sentinel. The old master
    /// keeps running (and answering as a master until the sentinels demote it); returns it.
    /// [`SentinelSet::wait_switch`] then waits for the new one.
    pub fn fail_over(&mut self) -> SocketAddr {
        let master = self.master_addr();
        let sentinel = self
            .sentinels
            .iter()
            .find(|s| s.is_running())
            .expect("a running sentinel");
        let reply: redis::RedisResult<String> = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query(&mut sentinel.try_conn().expect("the sentinel answers"));
        assert_eq!(reply.as_deref(), Ok("OK"), "SENTINEL FAILOVER");
        // What `wait_switch` waits to see replaced (nothing was killed).
        self.killed = Some(master);
        master
    }

    /// Waits until the server at `addr` answers as a replica (a demoted master).
    pub fn wait_replica(&self, addr: SocketAddr, within: Duration) {
        wait_for("the old master is a replica", within, || {
            (role(addr, self.auth.password.as_deref()).as_deref() == Some("slave")).then_some(())
        });
    }

    /// Waits (up to `within`) until a sentinel names a master other than the one
    /// [`SentinelSet::kill_master`] killed; `at` is when that was first seen. Returns only
    /// once every sentinel names it and it answers as a master, so a test may use it at once.
    pub fn wait_switch(&self, within: Duration) -> Switch {
        let from = self.killed.expect("kill_master before wait_switch");
        let (to, at) = wait_for("a sentinel names a new master", within, || {
            self.sentinels.iter().find_map(|s| {
                let named = ask_master(&mut s.try_conn().ok()?)?;
                (named != from).then(|| (named, Instant::now()))
            })
        });
        // Then every sentinel names it (they spread the news in hello messages) and it
        // answers as a master: asking any sentinel, or writing to it, is now safe.
        wait_for("every sentinel names the new master", within, || {
            self.sentinels
                .iter()
                .filter(|s| s.is_running())
                .all(|s| s.try_conn().ok().and_then(|mut c| ask_master(&mut c)) == Some(to))
                .then_some(())
        });
        wait_for("the new master answers as master", within, || {
            (role(to, self.auth.password.as_deref()).as_deref() == Some("master")).then_some(())
        });
        Switch { from, to, at }
    }

    /// Starts the killed master again on its port (empty: nothing is persisted) and waits
    /// until the sentinels made it a synced replica of the new master, so the master has a
    /// replica to `WAIT` for again.
    pub fn revive_killed(&mut self) {
        let killed = self
            .killed
            .take()
            .expect("kill_master before revive_killed");
        let master = self.master_addr();
        let node = self
            .data
            .iter_mut()
            .find(|n| n.addr() == killed)
            .expect("the killed node is one of the set's");
        // Same port, or the sentinels would not know it: retry while the port is released.
        wait_for("the killed master starts again", SETTLE, || {
            node.spawn().then_some(())
        });
        let pw = self.auth.password.clone();
        wait_for("the old master replicates the new one", SETTLE, || {
            replicates(killed, master, pw.as_deref()).then_some(())
        });
    }
}

impl RedisSet for SentinelSet {
    fn registry_entry(&self) -> String {
        let mut entry = format!(
            "sentinel: {{master: {MASTER_NAME}, nodes: {}",
            yaml_list(&self.sentinel_addrs())
        );
        if let Some(pw) = &self.auth.password {
            entry.push_str(&format!(", password: \"{pw}\""));
        }
        if let Some(pw) = &self.auth.sentinel_password {
            entry.push_str(&format!(", sentinel_password: \"{pw}\""));
        }
        entry.push('}');
        entry
    }

    fn conn_for(&self, _key: &str) -> redis::Connection {
        self.master_conn()
    }

    fn masters(&self) -> Vec<SocketAddr> {
        vec![self.master_addr()]
    }

    fn replicas_for(&self, _key: &str) -> Vec<SocketAddr> {
        self.replica_addrs()
    }

    fn pause(&self, addr: SocketAddr) {
        node_at(&self.data, addr).signal("STOP");
    }

    fn resume(&self, addr: SocketAddr) {
        node_at(&self.data, addr).signal("CONT");
    }

    fn sharded_pubsub(&self) -> bool {
        false
    }

    fn subscribed_channels(&self, sharded: bool) -> HashSet<String> {
        channels_of(&self.data, sharded)
    }
}

/// The sentinel.conf lines after `port`, `bind` and `dir`.
fn sentinel_conf(master_port: u16, auth: &Auth) -> String {
    let mut conf = format!(
        "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
         sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
         sentinel parallel-syncs {MASTER_NAME} 1\n"
    );
    if let Some(pw) = &auth.password {
        conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {pw}\n"));
    }
    if let Some(pw) = &auth.sentinel_password {
        // Sentinels talk to each other too: each needs the others' password.
        conf.push_str(&format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n"));
    }
    conf
}

/// `SENTINEL get-master-addr-by-name`, `None` when the sentinel does not answer or knows none.
fn ask_master(conn: &mut redis::Connection) -> Option<SocketAddr> {
    let (host, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER_NAME)
        .query(conn)
        .ok()?;
    format!("{host}:{port}").parse().ok()
}

/// `SENTINEL REPLICAS|SENTINELS name` as one map per row (empty when it fails).
fn sentinel_table(conn: &mut redis::Connection, what: &str) -> Vec<HashMap<String, String>> {
    redis::cmd("SENTINEL")
        .arg(what)
        .arg(MASTER_NAME)
        .query(conn)
        .unwrap_or_default()
}

/// One range of slots and who serves it (`CLUSTER SLOTS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: SocketAddr,
    pub replicas: Vec<SocketAddr>,
}

/// A slot that changed hands: its master before and after.
#[derive(Clone, Copy, Debug)]
pub struct Handover {
    pub slot: u16,
    pub from: SocketAddr,
    pub to: SocketAddr,
}

/// Three masters with a replica each (`redis-cli --cluster create --cluster-replicas 1`).
pub struct ClusterSet {
    nodes: Vec<Node>,
    password: Option<String>,
}

impl ClusterSet {
    /// A cluster without a password, ready: every node `cluster_state:ok` with all slots and
    /// nodes known, every replica synced, and every node agreeing on who serves which slot.
    pub fn start() -> ClusterSet {
        ClusterSet::start_with(None)
    }

    /// [`ClusterSet::start`] with `requirepass` (and `masterauth`) `password` on every node.
    pub fn start_with(password: Option<&str>) -> ClusterSet {
        let nodes: Vec<Node> = (0..6)
            .map(|_| Node::start(Kind::Cluster, password, password))
            .collect();
        let set = ClusterSet {
            nodes,
            password: password.map(str::to_owned),
        };
        set.create();
        set.wait_settled(SETTLE);
        set
    }

    /// `redis-cli --cluster create`, bounded: it waits for the nodes to agree, without limit.
    fn create(&self) {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        cmd.args(self.nodes.iter().map(|n| n.addr().to_string()));
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
        if let Some(pw) = &self.password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli must be installed with redis-server");
        let status = wait_for("redis-cli --cluster create exits", SETTLE, || {
            child.try_wait().ok().flatten()
        });
        if !status.success() {
            let out = child.wait_with_output().expect("redis-cli output");
            panic!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Waits until every running node is `cluster_state:ok`, knows every node, every replica
    /// is synced and every node tells the same slot map.
    fn wait_settled(&self, within: Duration) {
        wait_for("the cluster settles", within, || {
            self.settled().then_some(())
        });
    }

    fn settled(&self) -> bool {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.is_running()).collect();
        let mut maps = Vec::new();
        for n in &running {
            let Ok(mut conn) = n.try_conn() else {
                return false;
            };
            let ci = cluster_info(&mut conn);
            let ok = ci.get("cluster_state").map(String::as_str) == Some("ok")
                && ci.get("cluster_slots_ok").map(String::as_str) == Some("16384");
            if !ok {
                return false;
            }
            let i = info(&mut conn, "replication");
            if i.get("role").map(String::as_str) == Some("slave")
                && i.get("master_link_status").map(String::as_str) != Some("up")
            {
                return false;
            }
            match slot_map(&mut conn) {
                Some(map) => maps.push(map),
                None => return false,
            }
        }
        // Every running node appears in the map (as a master or a replica) and all agree.
        let Some(first) = maps.first() else {
            return false;
        };
        let listed = |a: SocketAddr| {
            first
                .iter()
                .any(|r| r.master == a || r.replicas.contains(&a))
        };
        maps.iter().all(|m| m == first) && running.iter().all(|n| listed(n.addr()))
    }

    /// Every node's address (the seeds a meshlet may be given).
    pub fn seed_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(Node::addr).collect()
    }

    /// `CLUSTER SLOTS` as the first node that answers tells it.
    pub fn slot_map(&self) -> Vec<SlotRange> {
        wait_for("a node tells the slot map", SETTLE, || {
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .find_map(|n| slot_map(&mut n.try_conn().ok()?))
        })
    }

    /// The hash slot of `key` (hash tags included).
    pub fn slot_of(&self, key: &str) -> u16 {
        let mut conn = self.any_conn();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .expect("CLUSTER KEYSLOT")
    }

    /// The range serving `slot` now.
    fn range_of(&self, slot: u16) -> SlotRange {
        self.slot_map()
            .into_iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .expect("every slot is served")
    }

    /// The master that serves `key` now.
    pub fn master_of(&self, key: &str) -> SocketAddr {
        self.range_of(self.slot_of(key)).master
    }

    /// A connection to the node at `addr`.
    pub fn conn_to(&self, addr: SocketAddr) -> redis::Connection {
        open(addr, self.password.as_deref()).unwrap_or_else(|e| panic!("connection to {addr}: {e}"))
    }

    fn any_conn(&self) -> redis::Connection {
        wait_for("a cluster node answers", SETTLE, || {
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .find_map(|n| n.try_conn().ok())
        })
    }

    fn node_id(&self, addr: SocketAddr) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.conn_to(addr))
            .expect("CLUSTER MYID")
    }

    /// `CLUSTER FAILOVER` on the replica of the master serving `key`'s slot (a coordinated
    /// failover: the master stops writes until its replica caught up, then they swap roles).
    /// Waits until the two swapped, the old master synced as a replica, and every node
    /// agrees the replica serves the slot now.
    pub fn failover_master_of(&self, key: &str) -> Handover {
        let slot = self.slot_of(key);
        let range = self.range_of(slot);
        let replica = *range.replicas.first().expect("every master has a replica");
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut self.conn_to(replica))
            .expect("CLUSTER FAILOVER");
        let pw = self.password.clone();
        wait_for("the replica took over the slot", SETTLE, || {
            (self.range_of(slot).master == replica
                && replicates(range.master, replica, pw.as_deref()))
            .then_some(())
        });
        self.wait_settled(SETTLE);
        Handover {
            slot,
            from: range.master,
            to: replica,
        }
    }

    /// SIGKILLs the master serving `key`'s slot and waits until the cluster promoted its
    /// replica (after `cluster-node-timeout`, 2 s, and an election) and every node that
    /// runs agrees on it.
    pub fn kill_master_of(&mut self, key: &str) -> Handover {
        let slot = self.slot_of(key);
        let range = self.range_of(slot);
        let replica = *range.replicas.first().expect("every master has a replica");
        self.nodes
            .iter_mut()
            .find(|n| n.addr() == range.master)
            .expect("the slot's master is one of the set's")
            .kill();
        wait_for("the replica took over the slot", SETTLE, || {
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .all(|n| serves(n, slot) == Some(replica))
                .then_some(())
        });
        self.wait_settled(SETTLE);
        Handover {
            slot,
            from: range.master,
            to: replica,
        }
    }

    /// Moves `key`'s slot, keys and all, to another master (`SETSLOT IMPORTING/MIGRATING`,
    /// `MIGRATE` in batches, `SETSLOT NODE` on every master); clients meanwhile get `ASK`
    /// and `TRYAGAIN` as during an operator's resharding.
    pub fn migrate_slot_of(&self, key: &str) -> Handover {
        let slot = self.slot_of(key);
        let from = self.range_of(slot).master;
        let masters = self.masters();
        let to = *masters
            .iter()
            .find(|m| **m != from)
            .expect("another master");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let setslot = |at: SocketAddr, state: &str, id: &str| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .query(&mut self.conn_to(at))
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {state} at {at}: {e}"));
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
        let mut src = self.conn_to(from);
        // Small batches with a pause between them: a test's load overlaps the migration
        // (a slot of a few hundred keys moves in about a second, not in one round trip).
        // Bounded: a slot of a test holds far fewer than 10,000 batches of keys.
        for _ in 0..10_000 {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(MIGRATE_BATCH)
                .query(&mut src)
                .expect("CLUSTER GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to.port())
                .arg("")
                .arg(0)
                .arg(5_000);
            if let Some(pw) = &self.password {
                migrate.arg("AUTH").arg(pw);
            }
            let _: () = migrate
                .arg("KEYS")
                .arg(&keys)
                .query(&mut src)
                .expect("MIGRATE");
            std::thread::sleep(MIGRATE_PAUSE);
        }
        // The new owner first, then the old one, then the others (the documented order).
        setslot(to, "NODE", &to_id);
        setslot(from, "NODE", &to_id);
        for m in masters.iter().filter(|m| **m != from && **m != to) {
            setslot(*m, "NODE", &to_id);
        }
        wait_for("every node names the slot's new master", SETTLE, || {
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .all(|n| serves(n, slot) == Some(to))
                .then_some(())
        });
        Handover { slot, from, to }
    }
}

impl RedisSet for ClusterSet {
    fn registry_entry(&self) -> String {
        let mut entry = format!("cluster: {{nodes: {}", yaml_list(&self.seed_addrs()));
        if let Some(pw) = &self.password {
            entry.push_str(&format!(", password: \"{pw}\""));
        }
        entry.push('}');
        entry
    }

    fn conn_for(&self, key: &str) -> redis::Connection {
        self.conn_to(self.master_of(key))
    }

    fn masters(&self) -> Vec<SocketAddr> {
        let mut masters: Vec<SocketAddr> = self.slot_map().into_iter().map(|r| r.master).collect();
        masters.sort();
        masters.dedup();
        masters
    }

    fn replicas_for(&self, key: &str) -> Vec<SocketAddr> {
        self.range_of(self.slot_of(key)).replicas
    }

    fn pause(&self, addr: SocketAddr) {
        node_at(&self.nodes, addr).signal("STOP");
    }

    fn resume(&self, addr: SocketAddr) {
        node_at(&self.nodes, addr).signal("CONT");
    }

    fn sharded_pubsub(&self) -> bool {
        true
    }

    fn subscribed_channels(&self, sharded: bool) -> HashSet<String> {
        channels_of(&self.nodes, sharded)
    }
}

/// The master `node` says serves `slot`, `None` when it does not answer.
fn serves(node: &Node, slot: u16) -> Option<SocketAddr> {
    let map = slot_map(&mut node.try_conn().ok()?)?;
    map.into_iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .map(|r| r.master)
}

/// `CLUSTER INFO` as its `key:value` lines.
fn cluster_info(conn: &mut redis::Connection) -> HashMap<String, String> {
    let text: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query(conn)
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// `CLUSTER SLOTS`, sorted by first slot; `None` when the node does not answer.
fn slot_map(conn: &mut redis::Connection) -> Option<Vec<SlotRange>> {
    let rows: Vec<Vec<Value>> = redis::cmd("CLUSTER").arg("SLOTS").query(conn).ok()?;
    let mut map = Vec::new();
    for row in rows {
        let mut cells = row.into_iter();
        let start: u16 = redis::from_redis_value(cells.next()?).ok()?;
        let end: u16 = redis::from_redis_value(cells.next()?).ok()?;
        let mut nodes = cells.map(|node| {
            // [ip, port, id, {hostname...}]: the first two are what this harness needs.
            let parts: Vec<Value> = redis::from_redis_value(node).ok()?;
            let mut parts = parts.into_iter();
            let ip: String = redis::from_redis_value(parts.next()?).ok()?;
            let port: u16 = redis::from_redis_value(parts.next()?).ok()?;
            format!("{ip}:{port}").parse::<SocketAddr>().ok()
        });
        let master = nodes.next()??;
        let replicas = nodes.collect::<Option<Vec<_>>>()?;
        let mut replicas = replicas;
        replicas.sort();
        map.push(SlotRange {
            start,
            end,
            master,
            replicas,
        });
    }
    map.sort_by_key(|r| r.start);
    Some(map)
}
