//! Where the control plane's Redis is (docs/scaling.md): one server, a master found through
//! Sentinel, or a Redis Cluster; and how a connection to it is opened. Sentinel is asked
//! anew at every connect, so a reconnect after a failover lands on the new master without
//! a restart; a "master" that answers `ROLE` as a replica is refused the same way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    ProtocolVersion, RedisConnectionInfo, RedisError, RedisResult, TlsMode,
};
use tokio::time::timeout;

use super::conn::Conn;
use super::REDIS_IO_TIMEOUT;
use crate::config::{ClusterConfig, Secret, SentinelConfig, Store};

/// The Redis the control plane talks to (no I/O until a connection is asked for).
#[derive(Clone, Debug)]
pub enum Target {
    /// One server (`registry.redis`); boxed, a client is large beside the others.
    Server(Box<Client>),
    /// The master a set of sentinels names (`registry.sentinel`).
    Sentinel(std::sync::Arc<Sentinels>),
    /// A Redis Cluster (`registry.cluster`).
    Cluster(ClusterTarget),
}

/// A cluster's seed nodes and credentials; every connection is its own `ClusterClient`
/// so that a pub/sub session gets a push channel of its own.
#[derive(Clone, Debug)]
pub struct ClusterTarget {
    nodes: Vec<ConnectionInfo>,
    tls: bool,
}

impl Target {
    /// The target `store` names.
    pub fn new(store: Store<'_>) -> RedisResult<Target> {
        match store {
            Store::Server(url) => Ok(Target::Server(Box::new(Client::open(url.expose())?))),
            Store::Sentinel(s) => Ok(Target::Sentinel(std::sync::Arc::new(Sentinels::new(s)?))),
            Store::Cluster(c) => Ok(Target::Cluster(ClusterTarget::new(c)?)),
        }
    }

    /// One server at `url` (operators' commands given `--redis URL`).
    pub fn server(url: &str) -> RedisResult<Target> {
        Ok(Target::Server(Box::new(Client::open(url)?)))
    }

    /// Whether this is a Redis Cluster (multi-key pipelines split, sharded pub/sub).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// Whether writes have replicas worth a `WAIT` (Sentinel and Cluster; docs/events.md).
    pub fn is_replicated(&self) -> bool {
        !matches!(self, Target::Server(_))
    }

    /// A new connection for commands, replies bounded by `response_timeout`.
    pub async fn connect(&self, response_timeout: Duration) -> RedisResult<Conn> {
        match self {
            Target::Server(client) => Ok(Conn::Server(
                multiplexed(client, response_timeout).await?,
                None,
            )),
            Target::Sentinel(sentinels) => {
                sentinels.watch_switches(sentinels);
                let (client, addr) = sentinels.master().await?;
                let mut conn = multiplexed(&client, response_timeout).await?;
                ensure_master(&mut conn).await?;
                Ok(Conn::Server(conn, Some(addr.into())))
            }
            Target::Cluster(cluster) => {
                let client = cluster.builder(response_timeout).build()?;
                let conn = timeout(REDIS_IO_TIMEOUT * 2, client.get_async_connection())
                    .await
                    .map_err(|_| timed_out("cluster connect"))??;
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// The client of the one server to open a pub/sub connection on (Sentinel: today's
    /// master); `None` on a cluster, which subscribes through [`ClusterTarget`].
    pub async fn pubsub_client(&self) -> RedisResult<Option<Client>> {
        match self {
            Target::Server(client) => Ok(Some(Client::clone(client))),
            Target::Sentinel(sentinels) => Ok(Some(sentinels.master().await?.0)),
            Target::Cluster(_) => Ok(None),
        }
    }

    /// How many times the master changed since start (Sentinel's `+switch-master`; always
    /// 0 elsewhere): a connection made under an older count is to a demoted master.
    pub fn switches(&self) -> u64 {
        match self {
            Target::Sentinel(s) => *s.switches.borrow(),
            _ => 0,
        }
    }

    /// Fires at the next master switch (Sentinel only; never elsewhere).
    pub fn switched(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Target::Sentinel(s) => Some(s.switches.subscribe()),
            _ => None,
        }
    }

    /// The cluster's description, when this is one.
    pub fn cluster(&self) -> Option<&ClusterTarget> {
        match self {
            Target::Cluster(c) => Some(c),
            _ => None,
        }
    }
}

async fn multiplexed(
    client: &Client,
    response_timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_IO_TIMEOUT))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// A demoted master (after a failover, before its sentinels reconfigure it) still accepts
/// connections: writes there would be refused or lost, so it is not used.
async fn ensure_master(conn: &mut MultiplexedConnection) -> RedisResult<()> {
    let role: redis::Value = redis::cmd("ROLE").query_async(conn).await?;
    let is_master = match &role {
        redis::Value::Array(items) => matches!(items.first(),
            Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"),
        _ => false,
    };
    if is_master {
        Ok(())
    } else {
        Err(RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "the server sentinel named is not a master (yet)",
        )))
    }
}

fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// How to reach a data node: credentials and TLS shared by every node of a set. Its
/// Debug hides the password, as redis-rs does in a connection's (a [`Target`] or a
/// [`super::Link`] printed must not show it).
#[derive(Clone)]
struct NodeAuth {
    username: Option<String>,
    password: Option<String>,
    tls: bool,
    protocol: ProtocolVersion,
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl NodeAuth {
    fn info(&self, host: &str, port: u16) -> ConnectionInfo {
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        };
        let mut redis = RedisConnectionInfo::default().set_protocol(self.protocol);
        if let Some(user) = &self.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password);
        }
        // `(host, port)` into an address cannot fail: nothing is parsed.
        let base = (host, port)
            .into_connection_info()
            .unwrap_or_else(|_| unreachable!("a (host, port) pair is always a connection info"));
        base.set_addr(addr).set_redis_settings(redis)
    }
}

/// A configured password; an empty one (`${VAR:-}` with the variable unset) is none.
/// Sent, it would be `AUTH ""`, which a server or sentinel without a password refuses,
/// failing every connection.
fn password(secret: Option<&Secret>) -> Option<String> {
    secret
        .map(|s| s.expose().to_owned())
        .filter(|p| !p.is_empty())
}

/// Splits `host:port` (the config checked its shape at load).
fn host_port(node: &str) -> RedisResult<(String, u16)> {
    let bad = || {
        RedisError::from((
            ErrorKind::InvalidClientConfig,
            "expected host:port",
            node.to_owned(),
        ))
    };
    let (host, port) = node.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), port))
}

/// Longest [`Sentinels::confirms_master`] waits for one sentinel's answer.
const CONFIRM_WAIT: Duration = Duration::from_millis(500);

/// A set of sentinels watching one master.
#[derive(Debug)]
pub struct Sentinels {
    master_name: String,
    sentinels: Vec<Client>,
    data: NodeAuth,
    /// The sentinel that answered last: asked first next time.
    last_good: AtomicUsize,
    /// Counts `+switch-master` announcements of this master. A planned failover
    /// (`SENTINEL FAILOVER`) leaves the old master answering as one for seconds, with no
    /// replica: writes there are lost when it is demoted. So every connection is dropped
    /// at the switch, not at the first error (docs/scaling.md).
    switches: tokio::sync::watch::Sender<u64>,
    watching: std::sync::atomic::AtomicBool,
}

impl Sentinels {
    fn new(config: &SentinelConfig) -> RedisResult<Sentinels> {
        let sentinel_auth = NodeAuth {
            username: None,
            password: password(config.sentinel_password.as_ref()),
            tls: config.tls,
            protocol: ProtocolVersion::RESP2,
        };
        let sentinels = config
            .nodes
            .iter()
            .map(|n| {
                let (host, port) = host_port(n.as_str())?;
                Client::open(sentinel_auth.info(&host, port))
            })
            .collect::<RedisResult<Vec<_>>>()?;
        Ok(Sentinels {
            master_name: config.master.to_string(),
            sentinels,
            data: NodeAuth {
                username: config.username.as_ref().map(|u| u.to_string()),
                password: password(config.password.as_ref()),
                tls: config.tls,
                protocol: ProtocolVersion::RESP2,
            },
            last_good: AtomicUsize::new(0),
            switches: tokio::sync::watch::Sender::new(0),
            watching: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts, once, the task that listens for `+switch-master` on the sentinels. It holds
    /// only a weak reference and ends when the set is dropped.
    fn watch_switches(&self, this: &std::sync::Arc<Sentinels>) {
        if !self.watching.swap(true, Ordering::AcqRel) {
            tokio::spawn(follow_switches(std::sync::Arc::downgrade(this)));
        }
    }

    /// A client for the master today's sentinels name, and its `host:port`: each sentinel
    /// is asked in turn, starting with the one that answered last, until one knows it.
    pub async fn master(&self) -> RedisResult<(Client, String)> {
        let start = self.last_good.load(Ordering::Relaxed);
        let mut last_error = None;
        for i in 0..self.sentinels.len() {
            let index = (start + i) % self.sentinels.len();
            match self.ask(&self.sentinels[index]).await {
                Ok((host, port)) => {
                    self.last_good.store(index, Ordering::Relaxed);
                    let client = Client::open(self.data.info(&host, port))?;
                    return Ok((client, format!("{host}:{port}")));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from((ErrorKind::InvalidClientConfig, "no sentinel configured"))
        }))
    }

    async fn ask(&self, sentinel: &Client) -> RedisResult<(String, u16)> {
        let mut conn = multiplexed(sentinel, REDIS_IO_TIMEOUT).await?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await?;
        addr.ok_or_else(|| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "the sentinel does not know this master (registry.sentinel.master?)",
                self.master_name.clone(),
            ))
        })
    }

    /// Whether the server at `addr` (`host:port`) is, by every sentinel that answers,
    /// this set's master with no failover going on. Asked before acknowledging a write
    /// that no replica confirmed: a master with no replica is also what the old master
    /// looks like from its replica's promotion until its demotion (a planned failover, or
    /// a switch not yet announced), and a write there is lost when it is demoted. Only a
    /// failover's leader flags `failover_in_progress`, and sentinels learn a switch at
    /// different moments, so all are asked, at once, within 500 ms; a sentinel that does
    /// not answer in that time is not counted (the bound is per sentinel: one hung
    /// sentinel must not discard the others' answers), and none answering is a no.
    pub async fn confirms_master(&self, addr: &str) -> bool {
        let asks = self.sentinels.iter().map(|sentinel| async move {
            timeout(CONFIRM_WAIT, self.names_master(sentinel, addr))
                .await
                .ok()
                .flatten()
        });
        let answered: Vec<bool> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        !answered.is_empty() && answered.iter().all(|ok| *ok)
    }

    /// Whether `sentinel` names `addr` as this set's master with no failover going on;
    /// `None` when it does not answer.
    async fn names_master(&self, sentinel: &Client, addr: &str) -> Option<bool> {
        let mut conn = multiplexed(sentinel, REDIS_IO_TIMEOUT).await.ok()?;
        let fields: Vec<String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await
            .ok()?;
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == name)
                .and_then(|kv| kv.get(1))
                .map(String::as_str)
                .unwrap_or("")
        };
        let named = format!("{}:{}", field("ip"), field("port"));
        Some(!field("flags").contains("failover_in_progress") && named == addr)
    }

    /// The monitored master's name.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }
}

impl ClusterTarget {
    fn new(config: &ClusterConfig) -> RedisResult<ClusterTarget> {
        let auth = NodeAuth {
            username: config.username.as_ref().map(|u| u.to_string()),
            password: password(config.password.as_ref()),
            tls: config.tls,
            // Sharded pub/sub arrives as RESP3 pushes on a cluster connection.
            protocol: ProtocolVersion::RESP3,
        };
        let nodes = config
            .nodes
            .iter()
            .map(|n| host_port(n.as_str()).map(|(h, p)| auth.info(&h, p)))
            .collect::<RedisResult<Vec<_>>>()?;
        Ok(ClusterTarget {
            nodes,
            tls: config.tls,
        })
    }

    /// A client builder with meshlet's timeouts; the caller may add a push sender.
    pub fn builder(&self, response_timeout: Duration) -> ClusterClientBuilder {
        let builder = ClusterClientBuilder::new(self.nodes.clone());
        // Certificates come from the webpki roots, as for a single `rediss://` server.
        let builder = if self.tls {
            builder.tls(TlsMode::Secure)
        } else {
            builder
        };
        builder
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(REDIS_IO_TIMEOUT)
            .response_timeout(response_timeout)
            // Fail a command within a few seconds of a node's loss rather than retrying
            // for long: callers have their own retry and backoff (docs/scaling.md).
            .retries(3)
    }

    /// A connection (its own client) whose pushes (pub/sub messages, disconnections) go to
    /// `pushes`.
    pub async fn pubsub(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> RedisResult<redis::cluster_async::ClusterConnection> {
        let client: ClusterClient = self.builder(REDIS_IO_TIMEOUT).push_sender(pushes).build()?;
        timeout(REDIS_IO_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| timed_out("cluster connect"))?
    }
}

/// Listens on one sentinel after another for `+switch-master` of the watched master and
/// bumps [`Sentinels::switches`] at each.
async fn follow_switches(set: std::sync::Weak<Sentinels>) {
    let mut backoff = super::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut index = 0usize;
    loop {
        let (client, name) = match set.upgrade() {
            Some(s) => (
                s.sentinels[index % s.sentinels.len()].clone(),
                s.master_name.clone(),
            ),
            None => return,
        };
        match listen_for_switches(&client, &name, &set).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "sentinel switch listener lost; trying the next sentinel")
            }
        }
        index += 1;
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// `Ok` when the set was dropped; `Err` when this sentinel's connection failed.
async fn listen_for_switches(
    sentinel: &Client,
    master: &str,
    set: &std::sync::Weak<Sentinels>,
) -> RedisResult<()> {
    use futures_util::StreamExt;
    let mut pubsub = timeout(REDIS_IO_TIMEOUT, sentinel.get_async_pubsub())
        .await
        .map_err(|_| timed_out("sentinel connect"))??;
    timeout(REDIS_IO_TIMEOUT, pubsub.subscribe("+switch-master"))
        .await
        .map_err(|_| timed_out("sentinel subscribe"))??;
    let mut messages = pubsub.into_on_message();
    loop {
        // Wakes now and then to notice the set is gone.
        let msg = match timeout(Duration::from_secs(5), messages.next()).await {
            Err(_) if set.strong_count() == 0 => return Ok(()),
            Err(_) => continue,
            Ok(None) => return Err(timed_out("sentinel connection closed")),
            Ok(Some(msg)) => msg,
        };
        // `<master name> <old ip> <old port> <new ip> <new port>`
        let payload: String = msg.get_payload().unwrap_or_default();
        if payload.split(' ').next() != Some(master) {
            continue;
        }
        let Some(this) = set.upgrade() else {
            return Ok(());
        };
        this.switches.send_modify(|n| *n += 1);
        tracing::warn!(master, switch = %payload, "sentinel switched the master; reconnecting to the new one");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Text;

    /// One sentinel on the default port watching `mymaster`, with these passwords.
    fn sentinel_config(password: &str, sentinel_password: &str) -> SentinelConfig {
        SentinelConfig {
            master: Text::from("mymaster"),
            nodes: vec![Text::from("127.0.0.1:26379")],
            password: Some(Secret::from(password)),
            username: None,
            sentinel_password: Some(Secret::from(sentinel_password)),
            tls: false,
        }
    }

    #[test]
    fn an_empty_password_is_no_password() {
        let config = sentinel_config("", "");
        let set = Sentinels::new(&config).expect("a valid set");
        let sentinel = set.sentinels[0].get_connection_info().redis_settings();
        assert_eq!(sentinel.password(), None);
        assert_eq!(set.data.password, None);
        let config = SentinelConfig {
            password: Some(Secret::from("pw")),
            ..config
        };
        assert_eq!(
            Sentinels::new(&config)
                .expect("a valid set")
                .data
                .password
                .as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn a_printed_target_hides_its_passwords() {
        let config = sentinel_config("data-s3cret", "sentinel-s3cret");
        let target = Target::new(Store::Sentinel(&config)).expect("a valid target");
        let shown = format!("{target:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let cluster = ClusterConfig {
            nodes: vec![Text::from("127.0.0.1:7000")],
            password: Some(Secret::from("cluster-s3cret")),
            username: None,
            tls: false,
        };
        let shown = format!(
            "{:?}",
            Target::new(Store::Cluster(&cluster)).expect("valid")
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
