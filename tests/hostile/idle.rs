//! 10,000 idle connections over the four listeners of a meshlet run as its own process
//! (`meshlet run`, so only the client side's descriptors count against this process):
//! silent ones and keep-alive ones that are parked after their answer. The neighbours
//! keep their latency, a parked connection's next request is answered, and meshlet
//! neither panics nor refuses a connection under its limits.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::io::AsyncReadExt;

use crate::kit::*;
use crate::support::{eventually, free_port, metric, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_meshlet");

/// Connections opened at once while the flood is built.
const AT_ONCE: usize = 500;

/// `count` connections to `addr`; with `request`, each sends one well-behaved request and
/// reads its answer first (and then idles: parked on the data plane).
async fn open(addr: SocketAddr, listener: Listener, count: usize, request: bool) -> Vec<Raw> {
    let mut all = Vec::with_capacity(count);
    for start in (0..count).step_by(AT_ONCE) {
        let batch = join_all((start..count.min(start + AT_ONCE)).map(|_| async {
            let mut raw = Raw::connect(addr).await;
            if request {
                let head = format!("{}\r\n", listener.head("GET", listener.good_path()));
                assert!(raw.send(head.as_bytes()).await);
                let reply = raw.reply(Duration::from_secs(10)).await.expect("an answer");
                assert_eq!(reply.status, 200, "{listener:?}: {reply:?}");
            }
            raw
        }))
        .await;
        all.extend(batch);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_leave_every_listener_serving() {
    meshlet::sidecar::raise_open_files_limit();
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    if soft < 12_000 {
        eprintln!(
            "SKIPPED ten_thousand_idle_connections: RLIMIT_NOFILE is {soft}, 12000 needed \
             (10,000 client sockets, their upstreams' and the test's own)"
        );
        return;
    }
    let upstream = Upstream::start("inventory").await;
    let app = Upstream::start("app").await;
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let yaml = format!(
        "service: {{name: orders, app: \"http://{}\"}}\nworkers: 2\n\
         registry: {{static: {{inventory: [\"{}\"]}}}}\n\
         limits: {{header_read_timeout: 30s}}\n\
         listen: {{outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, api: 127.0.0.1:{}, telemetry: 127.0.0.1:{}}}\n",
        app.addr, upstream.addr, ports[0], ports[1], ports[2], ports[3]
    );
    let mut config = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::io::Write::write_all(&mut config, yaml.as_bytes()).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(config.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("meshlet runs");
    let mut stderr = child.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    let addr = |listener: Listener| -> SocketAddr {
        let port = match listener {
            Listener::Outbound => ports[0],
            Listener::Inbound => ports[1],
            Listener::Api => ports[2],
            Listener::Telemetry => ports[3],
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    };
    let telemetry = addr(Listener::Telemetry);
    assert!(
        eventually(Duration::from_secs(15), || async {
            tokio::net::TcpStream::connect(telemetry).await.is_ok()
                && metric(telemetry, "meshlet_config_reloads_total").await >= 0.0
        })
        .await,
        "meshlet did not start"
    );
    for listener in ALL {
        probe(addr(listener), listener).await;
    }

    // 2,000 silent and 2,000 parked on each data-plane listener, 1,000 silent on each
    // control-plane one (their limit is 1024): 10,000.
    let mut held = Vec::new();
    for listener in DATA_PLANE {
        held.extend(open(addr(listener), listener, 2000, false).await);
        held.extend(open(addr(listener), listener, 2000, true).await);
    }
    for listener in [Listener::Api, Listener::Telemetry] {
        held.extend(open(addr(listener), listener, 1000, false).await);
    }
    assert_eq!(held.len(), 10_000);
    for listener in DATA_PLANE {
        let parked = format!(
            "meshlet_parked_connections{{listener=\"{}\"}}",
            format!("{listener:?}").to_lowercase()
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                metric(telemetry, &parked).await >= 2000.0
            })
            .await,
            "{parked} = {}",
            metric(telemetry, &parked).await
        );
    }
    // The neighbours: fresh connections on every listener, answered within the bound.
    for listener in ALL {
        for _ in 0..5 {
            let took = probe(addr(listener), listener).await;
            assert!(
                took < NEIGHBOUR_BOUND,
                "{listener:?}: {took:?} with 10,000 idle"
            );
        }
    }
    // Parked connections wake for their next request (100 of each listener's).
    let parked_ones: Vec<(usize, Listener)> =
        vec![(2000, Listener::Outbound), (6000, Listener::Inbound)];
    for (first, listener) in parked_ones {
        let woken = join_all(held[first..first + 100].iter_mut().map(|raw| async move {
            let head = format!("{}\r\n", listener.head("GET", listener.good_path()));
            assert!(raw.send(head.as_bytes()).await);
            raw.reply(Duration::from_secs(5)).await.map(|r| r.status)
        }))
        .await;
        assert!(
            woken.iter().all(|s| *s == Some(200)),
            "{listener:?}: parked connections woken: {woken:?}"
        );
    }
    // Nothing was refused: every listener was under its limit.
    for name in ["outbound", "inbound", "api", "telemetry"] {
        let refused = format!("meshlet_connections_refused_total{{listener=\"{name}\"}}");
        assert_eq!(metric(telemetry, &refused).await, 0.0, "{refused}");
    }
    drop(held);
    child.kill().await.expect("meshlet stopped");
    let log = log.await.expect("the log");
    assert!(!log.contains("panicked"), "meshlet panicked:\n{log}");
    drop(config);
}
