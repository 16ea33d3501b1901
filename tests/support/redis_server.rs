//! A redis-server of the test's own, and registering instances in it by hand.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, now_ms};

/// A redis-server of the test's own.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `appendonly yes` (with `appendfsync everysec`) instead of no persistence.
    appendonly: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// A redis-server that keeps its data in an append-only file in its temp dir
    /// (`appendfsync everysec`), for restarts that keep the data.
    pub fn start_appendonly() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(appendonly: bool) -> RedisServer {
        for _ in 0..20 {
            let mut server = RedisServer {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                appendonly,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                if self.appendonly { "yes" } else { "no" },
                "--appendfsync",
                "everysec",
                "--dir",
                self.dir.path().to_str().expect("utf-8 temp path"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (bash .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false; // port taken: exited at once
                }
            }
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, empty (nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    /// A graceful restart on the same port and dir: [`RedisServer::shutdown`], then
    /// [`RedisServer::start_again`]; with [`RedisServer::start_appendonly`] the data comes back.
    pub fn shutdown_and_restart(&mut self) {
        self.shutdown();
        self.start_again();
    }

    /// `SHUTDOWN`: Redis writes and fsyncs its append-only file (when it has one) and exits.
    pub fn shutdown(&mut self) {
        if let Ok(mut conn) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
            // The connection closes under the command: an error reply is the normal answer.
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut conn);
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("redis-server did not exit after SHUTDOWN within 10 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Starts again on the same port and dir (after [`RedisServer::shutdown`]).
    pub fn start_again(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Registers an instance the way docs/registry.md tells a non-meshlet service to.
pub fn register_by_hand(
    conn: &mut redis::Connection,
    service: &str,
    id: &str,
    addr: SocketAddr,
    ttl_ms: u64,
) {
    register_host_by_hand(
        conn,
        service,
        id,
        &addr.ip().to_string(),
        addr.port(),
        ttl_ms,
    );
}

/// [`register_by_hand`] at any host text, as a writer of the registry may spell it.
pub fn register_host_by_hand(
    conn: &mut redis::Connection,
    service: &str,
    id: &str,
    host: &str,
    port: u16,
    ttl_ms: u64,
) {
    let now = now_ms();
    let key = format!("mesh:inst:{service}:{id}");
    let _: () = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(&key)
        .arg("host")
        .arg(host)
        .arg("port")
        .arg(port)
        .arg("version")
        .arg("test")
        .arg("status")
        .arg("up")
        .arg("metadata")
        .arg("{}")
        .arg("registered_at")
        .arg(now)
        .arg("last_heartbeat")
        .arg(now)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(ttl_ms)
        .ignore()
        .cmd("ZADD")
        .arg(format!("mesh:svc:{service}"))
        .arg(now + ttl_ms)
        .arg(id)
        .ignore()
        .cmd("SADD")
        .arg("mesh:services")
        .arg(service)
        .ignore()
        .cmd("PUBLISH")
        .arg("mesh:changes")
        .arg(service)
        .ignore()
        .query(conn)
        .expect("register");
}

pub fn deregister_by_hand(conn: &mut redis::Connection, service: &str, id: &str) {
    let _: () = redis::pipe()
        .atomic()
        .cmd("ZREM")
        .arg(format!("mesh:svc:{service}"))
        .arg(id)
        .ignore()
        .cmd("DEL")
        .arg(format!("mesh:inst:{service}:{id}"))
        .ignore()
        .cmd("PUBLISH")
        .arg("mesh:changes")
        .arg(service)
        .ignore()
        .query(conn)
        .expect("deregister");
}
