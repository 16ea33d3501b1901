//! The machine's RabbitMQ (127.0.0.1:5672, guest/guest) for tests of `events.broker: amqp`:
//! a fresh vhost per test, created and deleted with `rabbitmqctl`, so tests never see each
//! other's queues. [`Vhost::create`] answers `None` (and says why) only when `rabbitmqctl`
//! is missing, so a machine without RabbitMQ skips these tests instead of failing them.
//!
//! Restarting the broker (`stop_app` / `start_app`) affects every vhost: a test that does
//! it holds [`exclusive`], every other test holds [`shared`], so no test meets the restart
//! of another; [`StoppedBroker`] starts the broker again when dropped, whatever happened.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Shared by the tests that use the broker; taken whole by one that restarts it.
static BROKER: RwLock<()> = RwLock::const_new(());

/// Held while a test uses the broker without restarting it.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    BROKER.read().await
}

/// Held while a test restarts the broker.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    BROKER.write().await
}

fn rabbitmqctl(args: &[&str]) -> std::io::Result<Output> {
    Command::new("rabbitmqctl").args(args).output()
}

/// Runs `rabbitmqctl args`, up to 3 times: under load, the CLI's own Erlang node sometimes
/// fails to reach the broker's on the first try.
fn run(args: &[&str]) {
    let mut last = String::new();
    for _ in 0..3 {
        let out = rabbitmqctl(args).expect("rabbitmqctl runs");
        if out.status.success() {
            return;
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("rabbitmqctl {args:?}: {last}");
}

/// A vhost of its own on the machine's broker; deleted when dropped.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    /// A new vhost guest may use; `None` (with the reason printed) without `rabbitmqctl`.
    pub fn create() -> Option<Vhost> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        if rabbitmqctl(&["--version"]).is_err() {
            eprintln!("skipped: rabbitmqctl not found (RabbitMQ is not installed here)");
            return None;
        }
        let name = format!(
            "meshlet-test-{}-{}-{:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        run(&["add_vhost", &name]);
        run(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Some(Vhost { name })
    }

    /// `amqp://guest:guest@127.0.0.1:5672/{vhost}`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// Ready messages in `queue`, read with a passive declaration (`None`: no such queue).
    pub async fn messages(&self, queue: &str) -> Option<u32> {
        use lapin::options::QueueDeclareOptions;
        let conn = lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect to rabbitmq");
        let channel = conn.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
            .await;
        let _ = conn.close(200, "done".into()).await;
        declared.ok().map(|q| q.message_count())
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        // Retried like `run`, without a panic (the test may be unwinding already).
        for _ in 0..3 {
            match rabbitmqctl(&["delete_vhost", &self.name]) {
                Ok(out) if out.status.success() => return,
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        eprintln!("could not delete the vhost {}", self.name);
    }
}

/// The broker stopped (`rabbitmqctl stop_app`); started again when dropped.
pub struct StoppedBroker {
    started: bool,
}

impl StoppedBroker {
    /// Stops the broker application (the Erlang node stays up).
    pub fn stop() -> StoppedBroker {
        run(&["stop_app"]);
        StoppedBroker { started: false }
    }

    /// Starts it again and waits until it accepts connections (at most 60 s).
    pub fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        run(&["start_app"]);
        let _ = rabbitmqctl(&["await_startup", "--timeout", "60"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect("127.0.0.1:5672").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("rabbitmq does not accept connections 60 s after start_app");
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        if !self.started {
            self.started = true;
            let _ = rabbitmqctl(&["start_app"]);
            let _ = rabbitmqctl(&["await_startup", "--timeout", "60"]);
        }
    }
}
