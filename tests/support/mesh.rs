//! In-process sidecars: from YAML text or a file, from a [`MeshletSpec`], and the callee +
//! caller pair of meshlets on one Redis registry that most end-to-end tests start with.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use meshlet::config::LoadedConfig;
use meshlet::sidecar::Sidecar;

use super::client::get_via;
use super::eventually;
use super::redis_server::RedisServer;

/// The listen line tests add so every listener takes a free port.
pub const FREE_PORTS: &str = "listen: {outbound: 127.0.0.1:0, inbound: 127.0.0.1:0, api: 127.0.0.1:0, telemetry: 127.0.0.1:0}\n";

/// An in-process sidecar from YAML text; listeners on 127.0.0.1:0 unless the YAML says otherwise.
pub async fn sidecar(yaml: &str) -> Sidecar {
    let text = if yaml.contains("listen:") {
        yaml.to_owned()
    } else {
        format!("{yaml}\n{FREE_PORTS}")
    };
    let loaded = LoadedConfig::from_text(&text, "test.yaml").expect("valid test config");
    Sidecar::start(loaded).await.expect("sidecar starts")
}

/// An in-process sidecar from a config file (watched for changes, like `meshlet run`).
pub async fn sidecar_from_file(path: &std::path::Path) -> Sidecar {
    let loaded = LoadedConfig::from_file(path).expect("valid test config");
    Sidecar::start(loaded).await.expect("sidecar starts")
}

/// One meshlet's config, built from its parts:
///
/// ```yaml
/// service: {name: NAME, <service keys>}
/// workers: N                                  # when set
/// registry: {redis: "URL", <registry keys>}   # when on Redis
/// <extra lines>
/// ```
#[derive(Clone, Debug)]
pub struct MeshletSpec {
    name: String,
    service: Vec<String>,
    workers: Option<usize>,
    /// The backend entry of `registry:` (`redis: "URL"`, `sentinel: {...}`, `cluster: {...}`).
    backend: Option<String>,
    registry: Vec<String>,
    extra: String,
}

impl MeshletSpec {
    /// The meshlet of service `name`, with nothing else set.
    pub fn new(name: &str) -> MeshletSpec {
        MeshletSpec {
            name: name.to_owned(),
            service: Vec::new(),
            workers: None,
            backend: None,
            registry: Vec::new(),
            extra: String::new(),
        }
    }

    /// Its app (`service.app`) is at `addr`.
    pub fn app(self, addr: SocketAddr) -> MeshletSpec {
        self.service(&format!("app: \"http://{addr}\""))
    }

    /// More keys of its `service:` entry (`"version: \"2.1\", metadata: {zone: a}"`).
    pub fn service(mut self, keys: &str) -> MeshletSpec {
        self.service.push(keys.to_owned());
        self
    }

    pub fn workers(mut self, n: usize) -> MeshletSpec {
        self.workers = Some(n);
        self
    }

    /// On the Redis registry of `redis`.
    pub fn redis(self, redis: &RedisServer) -> MeshletSpec {
        self.redis_url(&redis.url())
    }

    /// On the Redis registry at `url` (one that may not answer).
    pub fn redis_url(self, url: &str) -> MeshletSpec {
        self.on(&format!("redis: \"{url}\""))
    }

    /// On the registry backend `entry` names (`sentinel: {master: m, nodes: [...]}`, as
    /// `RedisSet::registry_entry` writes it).
    pub fn on(mut self, entry: &str) -> MeshletSpec {
        self.backend = Some(entry.to_owned());
        self
    }

    /// More keys of its `registry:` entry (`"ttl: 3s, heartbeat: 1s"`); needs a Redis.
    pub fn registry(mut self, keys: &str) -> MeshletSpec {
        self.registry.push(keys.to_owned());
        self
    }

    /// More top-level YAML (whole lines, each ending in a newline).
    pub fn with(mut self, yaml: &str) -> MeshletSpec {
        self.extra.push_str(yaml);
        self
    }

    pub fn yaml(&self) -> String {
        let mut text = format!("service: {{name: {}", self.name);
        for keys in &self.service {
            write!(text, ", {keys}").unwrap();
        }
        text.push_str("}\n");
        if let Some(n) = self.workers {
            writeln!(text, "workers: {n}").unwrap();
        }
        match &self.backend {
            Some(entry) => {
                write!(text, "registry: {{{entry}").unwrap();
                for keys in &self.registry {
                    write!(text, ", {keys}").unwrap();
                }
                text.push_str("}\n");
            }
            None => assert!(self.registry.is_empty(), "registry keys without a backend"),
        }
        text.push_str(&self.extra);
        text
    }

    pub async fn start(&self) -> Sidecar {
        sidecar(&self.yaml()).await
    }
}

/// A callee meshlet (in front of its app) and a caller meshlet that calls it by name.
pub struct Pair {
    pub callee: Sidecar,
    pub caller: Sidecar,
}

/// Starts `callee`, then `caller` (give both the same registry so the caller finds the
/// callee; [`until_status`] waits for that).
pub async fn callee_and_caller(callee: &MeshletSpec, caller: &MeshletSpec) -> Pair {
    let callee = callee.start().await;
    let caller = caller.start().await;
    Pair { callee, caller }
}

/// Whether a GET of `url` through `proxy` (HTTP_PROXY style) answers `status` within
/// `within`: the caller has discovered the callee.
#[must_use = "assert the answer: `false` means the status never came"]
pub async fn until_status(proxy: SocketAddr, url: &str, status: u16, within: Duration) -> bool {
    eventually(within, || async {
        get_via(proxy, url).await.status == status
    })
    .await
}
