//! Listeners (docs/security.md, docs/config.md `limits`): the local API answers only
//! loopback callers' requests (a web page in a browser on the host, cross-origin or through
//! DNS rebinding, is refused), every listener holds a bounded number of connections and
//! times out the silent ones, and an idle h2 connection is told to go away.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{eventually, get_host, get_via, metric, send, sidecar, Client, Upstream};

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// A hub without Redis, so that `POST /v1/broadcast` on the local API does something.
fn hub_yaml() -> String {
    crate::support::realtime::config(None, "")
}

#[tokio::test]
async fn a_web_page_on_another_origin_cannot_post_to_the_local_api() {
    let s = sidecar(&hub_yaml()).await;
    let api = s.addresses.api;
    let host = format!("127.0.0.1:{}", api.port());
    let body = json!({"to": {"room": "lobby"}, "event": "e", "data": 1}).to_string();
    // What a browser sends for a page on evil.example that POSTs to 127.0.0.1:15000
    // (a "simple" cross-origin request: no preflight).
    for origin in ["http://evil.example", "https://evil.example:8443", "null"] {
        let headers = [
            ("host", host.as_str()),
            ("origin", origin),
            ("content-type", "text/plain"),
        ];
        let a = send(api, request("POST", "/v1/broadcast", &headers, &body))
            .await
            .unwrap();
        assert_eq!(a.status, 403, "Origin {origin}: {:?}", a.body);
        assert_eq!(a.json()["error"], "forbidden");
        assert_eq!(a.header("x-mesh-error"), "forbidden");
    }
    // The app itself (no Origin) and a page served from the host itself still may.
    for origin in [
        None,
        Some("http://localhost:3000"),
        Some("http://127.0.0.1:8080"),
    ] {
        let mut headers = vec![
            ("host", host.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend(origin.map(|o| ("origin", o)));
        let a = send(api, request("POST", "/v1/broadcast", &headers, &body))
            .await
            .unwrap();
        assert_eq!(a.status, 202, "Origin {origin:?}: {:?}", a.body);
    }
}

#[tokio::test]
async fn a_dns_rebinding_host_is_refused_on_every_local_api_route() {
    let s = sidecar(&hub_yaml()).await;
    let api = s.addresses.api;
    let port = api.port();
    // A page on evil.example whose name now resolves to 127.0.0.1: same origin for the
    // browser, but the Host header still says evil.example.
    let evil = format!("evil.example:{port}");
    for path in [
        "/v1/config",
        "/v1/registry",
        "/v1/rooms",
        "/v1/events/dlq/x",
        "/nope",
    ] {
        for host in [evil.as_str(), "evil.example", "10.1.2.3:15000"] {
            let a = get_host(api, host, path).await;
            assert_eq!(a.status, 403, "Host {host} {path}: {:?}", a.body);
            assert_eq!(a.json()["error"], "forbidden");
        }
    }
    let body = json!({"to": {"room": "lobby"}, "event": "e", "data": 1}).to_string();
    let a = send(
        api,
        request("POST", "/v1/broadcast", &[("host", &evil)], &body),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 403, "{:?}", a.body);
    // Loopback names, with or without the port, still work.
    for host in [
        format!("127.0.0.1:{port}"),
        "localhost".into(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(
            get_host(api, &host, "/v1/config").await.status,
            200,
            "Host {host}"
        );
    }
    // The telemetry listener is scraped from other hosts: not checked.
    let t = get_host(s.addresses.telemetry, &evil, "/metrics").await;
    assert_eq!(t.status, 200);
}

/// Whether the server closed `socket` (EOF or reset), without waiting.
fn closed_by_server(socket: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match socket.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test]
async fn two_thousand_idle_sockets_on_the_telemetry_port_do_not_starve_the_outbound() {
    let up = Upstream::start("inventory").await;
    let yaml = format!(
        "service: {{name: orders}}\nworkers: 1\nregistry: {{static: {{inventory: [\"{}\"]}}}}\n",
        up.addr
    );
    let s = sidecar(&yaml).await;
    let telemetry = s.addresses.telemetry;
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let socket = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(telemetry))
            .await
            .expect("connect within 5 s")
            .expect("connect");
        idle.push(socket);
    }
    // The listener keeps at most 1024 of them and closes the rest at once.
    assert!(
        eventually(Duration::from_secs(10), || async {
            idle.iter().filter(|s| closed_by_server(s)).count() >= 2000 - 1024
        })
        .await,
        "the telemetry listener kept more than 1024 idle connections ({} closed)",
        idle.iter().filter(|s| closed_by_server(s)).count()
    );
    let open = idle.iter().filter(|s| !closed_by_server(s)).count();
    assert!(open <= 1024, "{open} idle connections held open");
    // Meanwhile the app's calls go through.
    for _ in 0..20 {
        let started = Instant::now();
        let a = tokio::time::timeout(
            Duration::from_secs(5),
            get_via(s.addresses.outbound, "http://inventory/x"),
        )
        .await
        .expect("outbound answers while the telemetry port is flooded");
        assert_eq!(a.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    drop(idle);
    // Once the sockets are gone, the listener serves again; the refusals were counted.
    let refused = "meshlet_connections_refused_total{listener=\"telemetry\"}";
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(telemetry, refused).await >= (2000 - 1024) as f64
        })
        .await,
        "{refused} = {}",
        metric(telemetry, refused).await
    );
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_cut_from_the_control_plane_listeners() {
    let s = sidecar("service: {name: orders}\nlimits: {header_read_timeout: 300ms}\n").await;
    for addr in [s.addresses.api, s.addresses.telemetry] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{addr}: a silent connection stayed open past header_read_timeout"
        );
    }
}

#[tokio::test]
async fn the_connection_over_max_connections_is_closed_at_once_and_counted() {
    let up = Upstream::start("inventory").await;
    let yaml = format!(
        "service: {{name: orders}}\nworkers: 2\nlimits: {{max_connections: 10}}\nregistry: {{static: {{inventory: [\"{}\"]}}}}\n",
        up.addr
    );
    let s = sidecar(&yaml).await;
    let outbound = s.addresses.outbound;
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut client = Client::connect(outbound).await;
        assert_eq!(client.get("http://inventory/x").await.status, 200);
        held.push(client);
    }
    // The 11th: accepted by the kernel, closed by meshlet before it reads a byte.
    let mut eleventh = TcpStream::connect(outbound).await.unwrap();
    let _ = eleventh
        .write_all(b"GET http://inventory/x HTTP/1.1\r\nhost: inventory\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), eleventh.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the 11th connection was served: {read:?}"
    );
    let refused = "meshlet_connections_refused_total{listener=\"outbound\"}";
    assert_eq!(metric(s.addresses.telemetry, refused).await, 1.0);
    // Those held still work; once one closes, a new connection is served.
    assert_eq!(held[0].get("http://inventory/y").await.status, 200);
    held.pop();
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(
                send(outbound, request("GET", "http://inventory/z", &[], "")).await,
                Ok(a) if a.status == 200
            )
        })
        .await,
        "no new connection served after one of the ten closed"
    );
}

/// The frame types of an h2 connection's frames, read until GOAWAY (7) or EOF.
async fn h2_frames_until_goaway(socket: &mut TcpStream) -> Vec<u8> {
    let mut types = Vec::new();
    let mut head = [0u8; 9];
    while socket.read_exact(&mut head).await.is_ok() {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if socket.read_exact(&mut payload).await.is_err() {
            break;
        }
        types.push(head[3]);
        if head[3] == 7 {
            break;
        }
    }
    types
}

async fn h2c_connect(addr: SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame.
    socket
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    socket
}

#[tokio::test]
async fn an_idle_h2c_connection_gets_goaway_after_keepalive_timeout() {
    let s =
        sidecar("service: {name: orders}\nworkers: 1\nlimits: {keepalive_timeout: 400ms}\n").await;
    let started = Instant::now();
    let mut socket = h2c_connect(s.addresses.outbound).await;
    let frames = tokio::time::timeout(Duration::from_secs(5), h2_frames_until_goaway(&mut socket))
        .await
        .expect("the idle h2c connection was left open");
    assert_eq!(frames.last(), Some(&7), "no GOAWAY: frames {frames:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "GOAWAY before keepalive_timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_upgraded_connection_still_counts_against_max_connections() {
    // A TCP service behind `services.X.url` that holds each connection until its peer
    // closes.
    let partner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = partner.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = partner.accept().await {
            tokio::spawn(async move {
                let mut sink = [0u8; 64];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let yaml = format!(
        "service: {{name: orders}}\nworkers: 1\nlimits: {{max_connections: 3}}\nservices: {{partner: {{url: \"http://{target}\"}}}}\n"
    );
    let s = sidecar(&yaml).await;
    let outbound = s.addresses.outbound;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let mut tunnel = TcpStream::connect(outbound).await.unwrap();
        let connect = format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n");
        tunnel.write_all(connect.as_bytes()).await.unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut buf))
            .await
            .expect("CONNECT answered")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tunnels.push(tunnel);
    }
    // hyper's connection ends at the switch; each tunnel still holds its place.
    let mut fourth = TcpStream::connect(outbound).await.unwrap();
    let _ = fourth
        .write_all(b"GET http://nowhere/ HTTP/1.1\r\nhost: nowhere\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a fourth connection was served while three tunnels were open: {read:?}"
    );
    let refused = "meshlet_connections_refused_total{listener=\"outbound\"}";
    assert_eq!(metric(s.addresses.telemetry, refused).await, 1.0);
    drop(tunnels);
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(
                send(outbound, request("GET", "http://nowhere/", &[], "")).await,
                Ok(a) if a.status == 404
            )
        })
        .await,
        "no connection served after the tunnels closed"
    );
}
