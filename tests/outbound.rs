//! The outbound sidecar end to end: routing modes, errors, streaming, pooling, headers.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn routes_by_absolute_uri_host_header_and_path_prefix() {
    let inventory = Upstream::start("inventory").await;
    let yaml = format!(
        "service: {{name: orders}}\nworkers: 1\nregistry:\n  static:\n    inventory: [\"{}\"]\nroutes:\n  - {{prefix: /inventory/, service: inventory, strip_prefix: true}}\n  - {{prefix: /inv-full/, service: inventory}}\n",
        inventory.addr
    );
    let s = sidecar(&yaml).await;
    let out = s.addresses.outbound;

    let a = get_via(out, "http://inventory/items?sku=1").await;
    assert_eq!(a.status, 200);
    let j = a.json();
    assert_eq!(j["upstream"], "inventory");
    assert_eq!(
        j["uri"], "/items?sku=1",
        "absolute form becomes origin form upstream"
    );
    assert_eq!(j["headers"]["host"], "inventory");
    assert_eq!(j["headers"]["x-request-id"].as_str().unwrap().len(), 32);

    let a = get_host(out, "inventory:15001", "/items").await;
    assert_eq!(
        a.json()["uri"],
        "/items",
        "Host header routes, port ignored"
    );

    let a = get_host(out, "127.0.0.1:15001", "/inventory/items?x=1").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["uri"], "/items?x=1", "prefix stripped");

    let a = get_host(out, "127.0.0.1:15001", "/inv-full/items").await;
    assert_eq!(
        a.json()["uri"],
        "/inv-full/items",
        "prefix kept without strip_prefix"
    );
    assert_eq!(inventory.hits(), 4);
}

#[tokio::test]
async fn unknown_names_and_ip_literals_are_never_dialled() {
    let upstream = Upstream::start("victim").await;
    let yaml = "service: {name: orders}\nworkers: 1\n";
    let s = sidecar(yaml).await;
    let a = get_via(s.addresses.outbound, &format!("http://{}/x", upstream.addr)).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.header("x-mesh-error"), "no_route");
    let j = a.json();
    assert_eq!(j["error"], "no_route");
    assert_eq!(j["request_id"].as_str().unwrap().len(), 32);
    let a = get_host(s.addresses.outbound, "evil.example.com", "/").await;
    assert_eq!(a.status, 404);
    assert_eq!(upstream.hits(), 0, "meshlet is not an open proxy");
}

#[tokio::test]
async fn each_error_code_has_its_status_json_and_header() {
    let slow = Upstream::start("slow").await;
    let dead_port = free_port();
    let yaml = format!(
        "service: {{name: orders}}\nworkers: 1\nregistry:\n  static:\n    dead: [\"127.0.0.1:{dead_port}\"]\n    slow: [\"{}\"]\nservices:\n  empty: {{}}\n  slow: {{timeout: 200ms}}\n",
        slow.addr
    );
    let s = sidecar(&yaml).await;
    let out = s.addresses.outbound;
    let cases = [
        ("http://nowhere/", 404, "no_route", ""),
        ("http://empty/", 503, "no_endpoints", "empty"),
        ("http://dead/", 502, "upstream_unavailable", "dead"),
        ("http://slow/slow/3000", 504, "timeout", "slow"),
    ];
    for (url, status, code, service) in cases {
        let started = std::time::Instant::now();
        let a = get_via(out, url).await;
        assert_eq!(a.status.as_u16(), status, "{url}");
        assert_eq!(a.header("x-mesh-error"), code, "{url}");
        assert_eq!(a.header("content-type"), "application/json");
        let j = a.json();
        assert_eq!(j["error"], code);
        assert_eq!(j["service"], service);
        assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()));
        if code == "upstream_unavailable" {
            assert_eq!(a.header("x-mesh-attempts"), "3");
        }
        if code == "no_route" || code == "no_endpoints" {
            assert_eq!(
                a.header("x-mesh-attempts"),
                if code == "no_route" { "" } else { "0" }
            );
        }
        if code == "timeout" {
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(200) && took < Duration::from_millis(2000),
                "{took:?}"
            );
        }
    }
    let long = format!("http://slow/{}", "a".repeat(9000));
    let a = get_via(out, &long).await;
    assert_eq!(a.status, 414);
    assert_eq!(a.header("x-mesh-error"), "uri_too_long");

    let metrics = get_host(s.addresses.telemetry, "x", "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(
            r#"meshlet_errors_total{code="timeout",destination="slow",direction="outbound"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"meshlet_upstream_connect_errors_total{destination="dead"} 3"#),
        "a connect failure is retried (3 attempts by default): {text}"
    );
    assert!(text.contains(r#"meshlet_requests_total{destination="slow",direction="outbound",method="GET",status="504"} 1"#), "{text}");
}

#[tokio::test]
async fn multi_mib_bodies_stream_intact_both_ways() {
    let up = Upstream::start("echo").await;
    let yaml = format!(
        "service: {{name: orders}}\nworkers: 1\nregistry:\n  static:\n    echo: [\"{}\"]\n",
        up.addr
    );
    let s = sidecar(&yaml).await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let req = Request::post("http://echo/echo")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let a = send(s.addresses.outbound, req).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), payload.len());
    assert!(a.body == payload, "upload echoed back byte for byte");

    let n = 6 * 1024 * 1024 + 123;
    let a = get_via(s.addresses.outbound, &format!("http://echo/bytes/{n}")).await;
    assert_eq!(a.body.len(), n);
    assert!(a
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_hop_by_hop_headers_dropped() {
    let up = Upstream::start("pooled").await;
    let yaml = format!(
        "service: {{name: orders}}\nworkers: 1\nregistry:\n  static:\n    pooled: [\"{}\"]\n",
        up.addr
    );
    let s = sidecar(&yaml).await;
    for _ in 0..20 {
        let req = Request::get("http://pooled/")
            .header("connection", "x-hop")
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "yes")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = send(s.addresses.outbound, req).await.unwrap();
        let h = &a.json()["headers"];
        assert!(
            h.get("x-hop").is_none() && h.get("keep-alive").is_none(),
            "{h}"
        );
        assert_eq!(h["x-end-to-end"], "yes");
    }
    assert_eq!(up.hits(), 20);
    assert!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "20 sequential requests reuse pooled connections"
    );
}

#[tokio::test]
async fn h2c_from_the_app_is_accepted() {
    let up = Upstream::start("h1-upstream").await;
    let yaml = format!(
        "service: {{name: orders}}\nworkers: 1\nregistry:\n  static:\n    inventory: [\"{}\"]\n",
        up.addr
    );
    let s = sidecar(&yaml).await;
    let stream = tokio::net::TcpStream::connect(s.addresses.outbound)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://inventory/h2")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j["uri"], "/h2");
        assert_eq!(
            j["headers"]["host"], "inventory",
            "h2 :authority becomes Host for HTTP/1.1"
        );
    }
}

#[tokio::test]
async fn h2c_endpoints_get_multiplexed_h2() {
    let up = Upstream::start("h2-upstream").await;
    let yaml = format!(
        "service: {{name: orders}}\nworkers: 1\nregistry:\n  static:\n    greeter: [\"h2://{}\"]\n",
        up.addr
    );
    let s = sidecar(&yaml).await;
    let calls = (0..10).map(|_| get_via(s.addresses.outbound, "http://greeter/hi"));
    for a in futures_util::future::join_all(calls).await {
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["uri"], "http://greeter/hi");
    }
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one shared h2 connection"
    );
}

#[tokio::test]
async fn telemetry_and_api_views_answer_and_redact_secrets() {
    let yaml = "service: {name: orders}\nworkers: 1\nregistry:\n  static:\n    inventory: [\"127.0.0.1:9\"]\nservices:\n  weather:\n    url: http://127.0.0.1:9\n    auth: {header: Authorization, value: \"Bearer top-secret-value\"}\nauth:\n  token: {secret: [\"another-secret-0123456789abcdef0123\"]}\n";
    let s = sidecar(yaml).await;
    assert_eq!(
        get_host(s.addresses.telemetry, "x", "/healthz/live")
            .await
            .status,
        200
    );
    let ready = get_host(s.addresses.telemetry, "x", "/healthz/ready").await;
    assert_eq!(ready.status, 200, "static registry is ready at once");
    let cfg = get_host(s.addresses.api, "localhost", "/v1/config").await;
    let text = String::from_utf8_lossy(&cfg.body);
    assert!(
        !text.contains("top-secret-value") && !text.contains("another-secret"),
        "{text}"
    );
    assert!(text.contains("<redacted>"));
    assert_eq!(cfg.json()["hash"].as_str().unwrap().len(), 16);
    let reg = get_host(s.addresses.api, "localhost", "/v1/registry")
        .await
        .json();
    assert_eq!(reg["services"]["inventory"][0]["port"], 9);
    let metrics = get_host(s.addresses.telemetry, "x", "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("meshlet_endpoints{service=\"inventory\"} 1"),
        "{text}"
    );
    assert_eq!(
        get_host(s.addresses.api, "localhost", "/nope").await.status,
        404
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let up = Upstream::start("slow").await;
    let yaml = format!("service: {{name: orders}}\nworkers: 1\nshutdown_grace: 5s\nregistry:\n  static:\n    slow: [\"{}\"]\n", up.addr);
    let s = sidecar(&yaml).await;
    let out = s.addresses.outbound;
    let in_flight = tokio::spawn(async move { get_via(out, "http://slow/slow/500").await });
    assert!(eventually(Duration::from_secs(2), || async { up.hits() == 1 }).await);
    s.shutdown().await;
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, 200, "in-flight request finished during the drain");
    assert!(
        tokio::net::TcpStream::connect(out).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn a_silent_client_is_dropped_and_a_slow_h2_preface_still_means_h2() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("plain").await;
    let s = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nlimits: {{header_read_timeout: 300ms}}\nregistry: {{static: {{plain: [\"{}\"]}}}}\n",
        up.addr
    ))
    .await;

    // Connects and says nothing: closed after the header read timeout, not held forever.
    let mut silent = tokio::net::TcpStream::connect(s.addresses.outbound)
        .await
        .unwrap();
    let read = read_until_closed(&mut silent).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The h2 preface in two writes with a pause between: still served as h2c.
    let mut h2 = tokio::net::TcpStream::connect(s.addresses.outbound)
        .await
        .unwrap();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    h2.write_all(&preface[..7]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h2.write_all(&preface[7..]).await.unwrap();
    // An empty SETTINGS frame, then the server's SETTINGS must come back.
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), h2.read_exact(&mut head))
        .await
        .expect("an h2 answer")
        .unwrap();
    assert_eq!(head[3], 4, "a SETTINGS frame: {head:?}");
}

/// A keep-alive GET of `path` on `inventory`, as the bytes a raw client writes.
fn raw_get(path: &str) -> String {
    format!("GET http://inventory{path} HTTP/1.1\r\nhost: inventory\r\n\r\n")
}

/// An `orders` sidecar (one worker, `limits` as a YAML line or empty) with `inventory` at
/// `upstream`, and a raw client connection to its outbound listener.
async fn orders_with_raw_client(
    upstream: std::net::SocketAddr,
    limits: &str,
) -> (meshlet::sidecar::Sidecar, tokio::net::TcpStream) {
    let s = sidecar(&format!(
        "service: {{name: orders}}\nworkers: 1\n{limits}registry: {{static: {{inventory: [\"{upstream}\"]}}}}\n"
    ))
    .await;
    let client = tokio::net::TcpStream::connect(s.addresses.outbound)
        .await
        .unwrap();
    (s, client)
}

/// Reads from `stream` until meshlet closes it (at most 10 s): the last read's result.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("closed by meshlet")
}

/// Reads one HTTP/1.1 response (`content-length` or chunked) from `stream`: (head, body).
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    // Reads until `data` holds at least `len` bytes.
    async fn fill(stream: &mut tokio::net::TcpStream, data: &mut Vec<u8>, len: usize) {
        let mut chunk = [0u8; 64 * 1024];
        while data.len() < len {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(data));
            data.extend_from_slice(&chunk[..n]);
        }
    }
    let line_end = |data: &[u8], from: usize| {
        data[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|at| from + at)
    };
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let want = data.len() + 1;
        fill(stream, &mut data, want).await;
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let mut rest = data.split_off(head_end);
    if let Some(length) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        let length: usize = length.trim().parse().expect("a length");
        fill(stream, &mut rest, length).await;
        return (head, rest);
    }
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let (mut body, mut at) = (Vec::new(), 0);
    loop {
        let size_end = loop {
            match line_end(&rest, at) {
                Some(end) => break end,
                None => {
                    let want = rest.len() + 1;
                    fill(stream, &mut rest, want).await;
                }
            }
        };
        let size = std::str::from_utf8(&rest[at..size_end]).expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        fill(stream, &mut rest, size_end + 2 + size + 2).await;
        body.extend_from_slice(&rest[size_end + 2..size_end + 2 + size]);
        at = size_end + 2 + size + 2;
        if size == 0 {
            return (head, body);
        }
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_parked_and_served_again() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("inventory").await;
    let limits = "limits: {header_read_timeout: 2s, keepalive_timeout: 2s}\n";
    let (s, mut client) = orders_with_raw_client(up.addr, limits).await;
    let telemetry = s.addresses.telemetry;
    let parked = || async move {
        metric(
            telemetry,
            "meshlet_parked_connections{listener=\"outbound\"}",
        )
        .await
    };
    let open = || async move {
        metric(telemetry, "meshlet_open_connections{listener=\"outbound\"}").await
    };

    client.write_all(raw_get("/one").as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut client).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("/one"));
    assert!(
        eventually(Duration::from_secs(5), || async { parked().await == 1.0 }).await,
        "a quiet keep-alive connection is parked"
    );

    // A request head split by a pause longer than the park tick wakes the connection,
    // and the request is answered on it as keep-alive.
    let request = raw_get("/two");
    let (first, rest) = request.split_at(20);
    client.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.write_all(rest.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut client).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("/two"));

    // A 4 MiB answer the client reads only after a pause: nothing hyper still held to
    // send is lost to a park.
    client
        .write_all(raw_get("/bytes/4194304").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (head, body) = read_response(&mut client).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body.len(), 4 * 1024 * 1024);
    assert!(
        body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "body intact"
    );

    // Parked again, then served again: still the one connection (upstream counted 3
    // requests over a pooled connection, the client opened one).
    assert!(eventually(Duration::from_secs(5), || async { parked().await == 1.0 }).await);
    assert_eq!(open().await, 1.0);
    client.write_all(raw_get("/four").as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut client).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(up.hits(), 4);

    // Parked, a connection still ends after `keepalive_timeout` of quiet.
    let quiet_from = std::time::Instant::now();
    let read = read_until_closed(&mut client).await;
    assert!(matches!(read, Ok(0)), "{read:?}");
    assert!(quiet_from.elapsed() >= Duration::from_millis(1500));
    assert!(
        eventually(Duration::from_secs(5), || async {
            parked().await == 0.0 && open().await == 0.0
        })
        .await
    );
}

/// Sends `head` and `first` through meshlet to an upstream that answers as soon as it has
/// a request head and reads the body later (so meshlet goes on forwarding the body after
/// the answer ended), reads the answer, pauses longer than the park tick, sends `rest`,
/// and checks that nothing more is answered and nothing else reaches an upstream: the
/// body, which looks like a request, must never be read as one.
async fn assert_late_body_is_never_a_request(head: &str, first: &str, rest: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = upstream.accept().await {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                let mut answered = false;
                loop {
                    let n = match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    data.extend_from_slice(&buf[..n]);
                    if !answered && data.windows(4).any(|w| w == b"\r\n\r\n") {
                        let text = String::from_utf8_lossy(&data).to_string();
                        let _ = seen.send(text.lines().next().unwrap_or("").to_owned());
                        answered = true;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if conn.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let (_sidecar, mut client) = orders_with_raw_client(up_addr, "").await;
    client
        .write_all(format!("{head}{first}").as_bytes())
        .await
        .unwrap();
    let (answer, body) = read_response(&mut client).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert_eq!(body, b"ok");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _ = client.write_all(rest.as_bytes()).await;
    let mut more = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut more)).await;
    assert!(
        more.is_empty(),
        "nothing more was answered: {:?}",
        String::from_utf8_lossy(&more)
    );
    assert_eq!(
        seen_rx.recv().await.as_deref(),
        Some("POST /upload HTTP/1.1"),
        "the POST reached the upstream"
    );
    assert!(
        seen_rx.try_recv().is_err(),
        "nothing else reached an upstream"
    );
}

const SMUGGLED: &str = "GET http://inventory/smuggled HTTP/1.1\r\nhost: inventory\r\n\r\n";

#[tokio::test]
async fn a_request_body_still_unread_when_its_close_answer_ends_is_never_parsed_as_a_request() {
    let head = format!(
        "POST http://inventory/upload HTTP/1.1\r\nhost: inventory\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        SMUGGLED.len()
    );
    assert_late_body_is_never_a_request(&head, "", SMUGGLED).await;
}

#[tokio::test]
async fn a_request_with_both_content_length_and_chunked_is_never_parked_mid_body() {
    // hyper drops the content-length and ends keep-alive without a sign in the request
    // meshlet's handler sees.
    let head = format!(
        "POST http://inventory/upload HTTP/1.1\r\nhost: inventory\r\ntransfer-encoding: chunked\r\ncontent-length: {}\r\n\r\n",
        SMUGGLED.len()
    );
    let size_line = format!("{:x}\r\n", SMUGGLED.len());
    let rest = format!("{SMUGGLED}\r\n0\r\n\r\n");
    assert_late_body_is_never_a_request(&head, &size_line, &rest).await;
}

#[tokio::test]
async fn keep_alive_outlives_the_header_read_timeout_and_a_stalled_head_does_not() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("inventory").await;
    let limits = "limits: {header_read_timeout: 1s, keepalive_timeout: 30s}\n";
    let (_sidecar, mut client) = orders_with_raw_client(up.addr, limits).await;
    client.write_all(raw_get("/one").as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut client).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // Idle for more than twice the header read timeout: kept (keepalive_timeout).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.write_all(raw_get("/two").as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut client).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // Parked again, then a head starts and stalls (slowloris): cut after the header read
    // timeout, counted from its first bytes.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    client
        .write_all(b"GET http://inventory/three HTTP/1.1\r\n")
        .await
        .unwrap();
    let stalled = std::time::Instant::now();
    let read = read_until_closed(&mut client).await;
    let closed_after = stalled.elapsed();
    assert!(!matches!(read, Ok(n) if n > 0), "{read:?}");
    assert!(
        closed_after >= Duration::from_millis(700) && closed_after < Duration::from_secs(3),
        "closed {closed_after:?} after the head stalled"
    );
    assert_eq!(up.hits(), 2);
}

// ---- The tap (`GET /v1/tap`) and the access line (docs/operations.md "Tap",
// docs/metrics.md "Access log").

/// A `GET /v1/tap` stream, read one NDJSON line at a time.
struct TapReader {
    body: hyper::body::Incoming,
    pending: Vec<u8>,
}

/// Opens a tap on the local API at `api` with `query`: the answer's status and headers, and
/// the stream (empty unless the status is 200). The tap is open once this returns.
async fn open_tap(
    api: std::net::SocketAddr,
    query: &str,
) -> (http::StatusCode, http::HeaderMap, TapReader) {
    let stream = tokio::net::TcpStream::connect(api).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/v1/tap?{query}"))
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let reader = TapReader {
        body,
        pending: Vec::new(),
    };
    (parts.status, parts.headers, reader)
}

impl TapReader {
    /// The next line within `within`; `None` when none came or the stream ended.
    async fn next_line(&mut self, within: Duration) -> Option<serde_json::Value> {
        use http_body_util::BodyExt;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).expect("each line is JSON"));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await;
            match frame {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.pending.extend_from_slice(data);
                    }
                }
                Ok(Some(Err(_)) | None) | Err(_) => return None,
            }
        }
    }

    /// Whether the stream ends cleanly (its last chunk, not a cut connection) within
    /// `within`, whatever lines come first.
    async fn ends_cleanly(&mut self, within: Duration) -> bool {
        use http_body_util::BodyExt;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(Some(Ok(_))) => {}
                Ok(None) => return true,
                Ok(Some(Err(_))) | Err(_) => return false,
            }
        }
    }

    /// Lines until none comes for `quiet` (at most `max`).
    async fn lines_until_quiet(&mut self, quiet: Duration, max: usize) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        while lines.len() < max {
            match self.next_line(quiet).await {
                Some(line) => lines.push(line),
                None => break,
            }
        }
        lines
    }
}

/// `orders` with `inventory` (an upstream), `catalog` (another) and `dead` (a closed port).
async fn orders_for_tapping() -> (meshlet::sidecar::Sidecar, Upstream, Upstream, u16) {
    let inventory = Upstream::start("inventory").await;
    let catalog = Upstream::start("catalog").await;
    let dead = free_port();
    let s = sidecar(&format!(
        "service: {{name: orders}}\nworkers: 2\nregistry:\n  static:\n    inventory: [\"{}\"]\n    catalog: [\"{}\"]\n    dead: [\"127.0.0.1:{dead}\"]\n",
        inventory.addr, catalog.addr
    ))
    .await;
    (s, inventory, catalog, dead)
}

#[tokio::test]
async fn a_tap_sees_each_answered_request_once_with_its_path_status_attempts_and_upstream() {
    let (s, inventory, _catalog, dead) = orders_for_tapping().await;
    let out = s.addresses.outbound;
    let (status, headers, mut tap) = open_tap(s.addresses.api, "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-ndjson");

    const N: usize = 12;
    let mut ids = Vec::new();
    for i in 0..N {
        let a = get_via(out, &format!("http://inventory/items/{i}?token=secret")).await;
        assert_eq!(a.status, 200);
        ids.push(a.header("x-request-id").to_owned());
    }
    let gone = get_via(out, "http://dead/gone?q=1").await;
    assert_eq!(gone.status, 502);
    let nowhere = get_via(out, "http://nowhere/x").await;
    assert_eq!(nowhere.status, 404);

    for (i, id) in ids.iter().enumerate() {
        let line = tap.next_line(Duration::from_secs(5)).await.expect("a line");
        assert_eq!(line["direction"], "outbound", "{line}");
        assert_eq!(line["destination"], "inventory", "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(
            line["path"],
            format!("/items/{i}"),
            "never the query: {line}"
        );
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["attempts"], 1, "{line}");
        assert_eq!(line["upstream"], inventory.addr.to_string(), "{line}");
        assert_eq!(line["request_id"], id.as_str(), "{line}");
        assert!(
            line["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{line}"
        );
        let time = line["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z'),
            "RFC 3339 with ms: {time}"
        );
    }
    let line = tap
        .next_line(Duration::from_secs(5))
        .await
        .expect("the 502");
    assert_eq!(line["destination"], "dead", "{line}");
    assert_eq!(line["path"], "/gone", "{line}");
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(line["attempts"], 3, "connect failures are retried: {line}");
    assert_eq!(line["upstream"], format!("127.0.0.1:{dead}"), "{line}");
    assert_eq!(line["request_id"], gone.header("x-request-id"), "{line}");
    let line = tap
        .next_line(Duration::from_secs(5))
        .await
        .expect("the 404");
    assert_eq!(line["status"], 404, "{line}");
    assert_eq!(line["attempts"], 0, "{line}");
    assert_eq!(
        line["upstream"],
        serde_json::Value::Null,
        "no upstream tried: {line}"
    );
    assert!(
        tap.next_line(Duration::from_millis(300)).await.is_none(),
        "one line per request, no more"
    );
    assert_eq!(inventory.hits(), N);
    s.shutdown().await;
}

#[tokio::test]
async fn a_tap_with_a_service_sees_only_that_destination_and_inbound_requests_are_tapped_too() {
    let (s, _inventory, _catalog, _dead) = orders_for_tapping().await;
    let out = s.addresses.outbound;
    let (_, _, mut catalog_only) = open_tap(s.addresses.api, "service=catalog").await;
    let (_, _, mut everything) = open_tap(s.addresses.api, "rate=1000").await;
    for i in 0..4 {
        let host = if i % 2 == 0 { "inventory" } else { "catalog" };
        assert_eq!(
            get_via(out, &format!("http://{host}/n/{i}")).await.status,
            200
        );
    }
    let seen = catalog_only
        .lines_until_quiet(Duration::from_millis(500), 10)
        .await;
    let paths: Vec<&str> = seen.iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/n/1", "/n/3"], "{seen:?}");
    assert!(seen.iter().all(|l| l["destination"] == "catalog"));
    let seen = everything
        .lines_until_quiet(Duration::from_millis(500), 10)
        .await;
    assert_eq!(seen.len(), 4, "{seen:?}");

    // The inbound side: a meshlet in front of an app.
    let app = RecordingApp::ok().await;
    let billing = MeshletSpec::new("billing")
        .app(app.addr)
        .with("workers: 1\n")
        .start()
        .await;
    let (_, _, mut tap) = open_tap(billing.addresses.api, "service=billing").await;
    let inbound = billing.addresses.inbound.expect("an inbound listener");
    let a = get_host(inbound, "billing", "/invoices/7?full=1").await;
    assert_eq!(a.status, 200);
    let line = tap
        .next_line(Duration::from_secs(5))
        .await
        .expect("the inbound line");
    assert_eq!(line["direction"], "inbound", "{line}");
    assert_eq!(line["destination"], "billing", "{line}");
    assert_eq!(line["path"], "/invoices/7", "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(line["upstream"], app.addr.to_string(), "{line}");
    billing.shutdown().await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_tap_over_its_rate_drops_lines_and_says_how_many() {
    let (s, _inventory, _catalog, _dead) = orders_for_tapping().await;
    let out = s.addresses.outbound;
    let (status, _, mut tap) = open_tap(s.addresses.api, "rate=5").await;
    assert_eq!(status, 200);
    const N: u64 = 50;
    let started = std::time::Instant::now();
    for i in 0..N {
        assert_eq!(
            get_via(out, &format!("http://inventory/r/{i}"))
                .await
                .status,
            200
        );
    }
    let seconds = started.elapsed().as_secs() + 1;
    let (mut shown, mut dropped) = (0, 0);
    // Every request is either shown or counted as dropped; a quiet tap reports its drops
    // within a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shown + dropped < N && std::time::Instant::now() < deadline {
        let Some(line) = tap.next_line(Duration::from_secs(3)).await else {
            break;
        };
        match line["dropped"].as_u64() {
            Some(n) => dropped += n,
            None => shown += 1,
        }
    }
    assert_eq!(shown + dropped, N, "shown {shown}, dropped {dropped}");
    assert!(
        (5..=5 * (seconds + 1)).contains(&shown),
        "at most 5 a second over {seconds} s: {shown} shown"
    );
    assert!(dropped > 0);
    s.shutdown().await;
}

#[tokio::test]
async fn sixteen_taps_at_most_none_slows_requests_and_shutdown_ends_them() {
    let (s, _inventory, _catalog, _dead) = orders_for_tapping().await;
    let out = s.addresses.outbound;
    let api = s.addresses.api;

    const REQUESTS: u32 = 200;
    let timed = || async {
        let started = std::time::Instant::now();
        for i in 0..REQUESTS {
            assert_eq!(
                get_via(out, &format!("http://inventory/t/{i}"))
                    .await
                    .status,
                200
            );
        }
        started.elapsed()
    };
    let untapped = timed().await;

    // Sixteen taps that nobody reads: their queues fill, and lines are dropped, not waited for.
    let mut taps = Vec::new();
    for _ in 0..16 {
        let (status, _, tap) = open_tap(api, "rate=1000").await;
        assert_eq!(status, 200);
        taps.push(tap);
    }
    let (status, headers, _) = open_tap(api, "").await;
    assert_eq!(status, 503, "the seventeenth tap is refused");
    assert_eq!(headers["x-mesh-error"], "overloaded");
    let tapped = timed().await;
    assert!(
        tapped < untapped * 3 + Duration::from_millis(500),
        "untapped {untapped:?}, tapped {tapped:?}"
    );
    let line = taps[0]
        .next_line(Duration::from_secs(5))
        .await
        .expect("a line");
    assert_eq!(line["destination"], "inventory");

    // A tap whose client went away frees its place.
    taps.pop();
    assert!(
        eventually(Duration::from_secs(5), || async {
            open_tap(api, "").await.0 == 200
        })
        .await
    );
    let (bad, _, _) = open_tap(api, "rate=fast").await;
    assert_eq!(bad, 400);

    // Shutdown ends every stream cleanly, without waiting for shutdown_grace.
    let started = std::time::Instant::now();
    let mut first = taps.remove(0);
    s.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(first.ends_cleanly(Duration::from_secs(2)).await);
}

/// A meshlet process (JSON logs at `info` on stderr) with `inventory` at `upstream`: the
/// child, its outbound address, and its stderr lines as they come.
fn meshlet_logging(
    upstream: std::net::SocketAddr,
    dir: &tempfile::TempDir,
) -> (
    std::process::Child,
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let out = free_port();
    let path = dir.path().join("meshlet.yaml");
    std::fs::write(
        &path,
        format!(
            "service: {{name: orders}}\nworkers: 1\nlisten: {{outbound: 127.0.0.1:{out}, api: 127.0.0.1:{}, telemetry: 127.0.0.1:{}}}\nregistry: {{static: {{inventory: [\"{upstream}\"]}}}}\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshlet"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("meshlet starts");
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (
        child,
        std::net::SocketAddr::from(([127, 0, 0, 1], out)),
        received,
    )
}

/// The access line of request `id` among `lines`, within 5 s (awaited: the test's runtime
/// serves the upstream and must go on running).
async fn access_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    id: &str,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, lines.recv()).await {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if json["target"] == "meshlet::access" && json["request_id"] == id {
            return json;
        }
    }
    panic!("no access line for {id}");
}

#[tokio::test]
async fn the_access_line_is_written_when_the_body_ends_with_its_bytes_path_and_upstream() {
    use http_body_util::BodyExt;
    let inventory = Upstream::start("inventory").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, out, mut lines) = meshlet_logging(inventory.addr, &dir);
    assert!(
        eventually(Duration::from_secs(10), || async {
            send(
                out,
                Request::get("http://inventory/ready")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .is_ok_and(|a| a.status == 200)
        })
        .await,
        "meshlet answers"
    );

    // A body streamed upstream in three chunks (64 KiB, 64 KiB, the rest).
    const LEN: u64 = 150_000;
    let a = get_via(out, &format!("http://inventory/bytes/{LEN}?x=1")).await;
    assert_eq!(a.body.len() as u64, LEN);
    let line = access_line(&mut lines, a.header("x-request-id")).await;
    assert_eq!(line["direction"], "outbound", "{line}");
    assert_eq!(line["destination"], "inventory", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], format!("/bytes/{LEN}"), "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["upstream"], inventory.addr.to_string(), "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(line["bytes_in"], 0, "{line}");
    assert_eq!(line["bytes_out"], LEN, "{line}");
    assert_eq!(line["complete"], true, "{line}");
    assert!(line["duration_us"].as_u64().is_some(), "{line}");
    assert_eq!(line["trace_id"].as_str().map(str::len), Some(32), "{line}");

    // A request body of three chunks without a length, echoed back: counted both ways.
    let chunks = ["a".repeat(1000), "b".repeat(2000), "c".repeat(3000)]
        .map(|c| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(c))));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let stream = tokio::net::TcpStream::connect(out).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://inventory/echo")
        .header("host", "inventory")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed.len(), 6000);
    let line = access_line(&mut lines, &id).await;
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["bytes_in"], 6000, "counted as it streamed: {line}");
    assert_eq!(line["bytes_out"], 6000, "{line}");
    assert_eq!(line["complete"], true, "{line}");

    // A client that goes away mid-body: the line says what was sent, and that it was cut.
    let stream = tokio::net::TcpStream::connect(out).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("http://inventory/bytes/50000000")
        .header("host", "inventory")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    drop(sender);
    conn.abort();
    let line = access_line(&mut lines, &id).await;
    assert_eq!(line["complete"], false, "{line}");
    let sent = line["bytes_out"].as_u64().unwrap();
    assert!(sent > 0 && sent < 50_000_000, "{line}");

    // meshlet's own answer: no upstream, no attempt, its JSON body counted.
    let a = get_via(out, "http://nowhere/x?y").await;
    assert_eq!(a.status, 404);
    let line = access_line(&mut lines, a.header("x-request-id")).await;
    assert_eq!(line["path"], "/x", "{line}");
    assert_eq!(line["upstream"], "", "{line}");
    assert_eq!(line["attempts"], 0, "{line}");
    assert_eq!(line["bytes_out"], a.body.len() as u64, "{line}");

    child.kill().unwrap();
    let _ = child.wait();
}
