//! HTTP/1.1 abuse on every listener: oversized heads, URIs and bodies, slowloris heads and
//! bodies. Each gets 431/414/413 (docs/errors.md) or a close, and a well-behaved client
//! on the same listener keeps its latency meanwhile.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::Request;
use http_body_util::Full;

use crate::kit::*;
use crate::support::send;

/// A head of `headers` small headers (hyper takes at most 100).
fn many_headers(listener: Listener, headers: usize) -> Vec<u8> {
    let mut head = listener.head("GET", listener.good_path());
    for i in 0..headers {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A head with one header of `bytes` bytes.
fn big_header(listener: Listener, bytes: usize) -> Vec<u8> {
    let mut head = listener.head("GET", listener.good_path());
    head.push_str("x-big: ");
    head.push_str(&"a".repeat(bytes));
    head.push_str("\r\n\r\n");
    head.into_bytes()
}

/// The 431 of docs/errors.md: no JSON body, `connection: close`.
fn assert_431(listener: Listener, reply: &Reply) {
    assert_eq!(reply.status, 431, "{listener:?}: {reply:?}");
    assert!(reply.body.is_empty(), "{listener:?}: {reply:?}");
    assert_eq!(reply.header("connection"), Some("close"), "{listener:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_or_a_close_on_every_listener() {
    let t = Target::start("").await;
    for listener in ALL {
        let addr = t.addr(listener);
        t.beside(listener, async {
            // 150 small headers: the whole head is read at once, so the 431 always arrives.
            let mut raw = Raw::connect(addr).await;
            assert!(raw.send(&many_headers(listener, 150)).await);
            let reply = raw.reply(Duration::from_secs(5)).await;
            assert_431(listener, reply.as_ref().expect("a 431 before the close"));
            assert!(raw.closed(Duration::from_secs(2)).await, "{listener:?}");
            // Just over max_header_bytes (64 KiB), and far over it, 10 of each at once:
            // 431, or a reset when the close beat the client's last bytes; never served.
            for bytes in [65 * 1024, 100 * 1024] {
                let big = big_header(listener, bytes);
                join_all((0..10).map(|_| async {
                    let mut raw = Raw::connect(addr).await;
                    let _writer = raw.write_beside(big.clone());
                    if let Some(reply) = raw.reply(Duration::from_secs(5)).await {
                        assert_431(listener, &reply);
                    }
                }))
                .await;
            }
        })
        .await;
    }
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uris_get_414_or_431() {
    let t = Target::start("").await;
    // Over max_uri_bytes (8 KiB), under max_header_bytes: outbound refuses it with the
    // JSON 414; the other listeners have no URI limit of their own (the inbound app gets
    // it, the control plane has no such route).
    let long = format!("/{}", "u".repeat(9 * 1024));
    for (listener, status) in [
        (Listener::Outbound, 414),
        (Listener::Inbound, 200),
        (Listener::Api, 404),
        (Listener::Telemetry, 404),
    ] {
        let mut raw = Raw::connect(t.addr(listener)).await;
        let head = format!("{}\r\n", listener.head("GET", &long));
        assert!(raw.send(head.as_bytes()).await);
        let reply = raw.reply(Duration::from_secs(5)).await.expect("an answer");
        assert_eq!(reply.status, status, "{listener:?}: {reply:?}");
        if status == 414 {
            assert_eq!(reply.json()["error"], "uri_too_long");
            assert_eq!(reply.header("x-mesh-error"), Some("uri_too_long"));
        }
    }
    // Over max_header_bytes: 431 (or a reset) on every listener.
    let huge = format!("/{}", "u".repeat(80 * 1024));
    for listener in ALL {
        t.beside(listener, async {
            let mut raw = Raw::connect(t.addr(listener)).await;
            let head = format!("{}\r\n", listener.head("GET", &huge));
            let _writer = raw.write_beside(head.into_bytes());
            if let Some(reply) = raw.reply(Duration::from_secs(5)).await {
                assert_431(listener, &reply);
            }
        })
        .await;
    }
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_after_header_read_timeout() {
    let t = Target::start("").await;
    for listener in ALL {
        let addr = t.addr(listener);
        t.beside(listener, async {
            // 30 clients, one byte of a never-ending head every 100 ms each.
            let cut = join_all((0..30).map(|_| async {
                let mut raw = Raw::connect(addr).await;
                let head = listener.head("GET", listener.good_path());
                if !raw.send(head.as_bytes()).await {
                    return true;
                }
                let started = tokio::time::Instant::now();
                // At most 5 s of trickling: far past the 1 s header_read_timeout.
                for _ in 0..50 {
                    if !raw.send(b"x").await {
                        break;
                    }
                    if raw.closed(Duration::from_millis(100)).await {
                        break;
                    }
                }
                // 408 or a plain close are both a close here.
                started.elapsed() < HEAD_TIMEOUT + Duration::from_millis(1500)
            }))
            .await;
            let late = cut.iter().filter(|c| !**c).count();
            assert_eq!(
                late, 0,
                "{listener:?}: {late} of 30 slowloris heads outlived header_read_timeout"
            );
        })
        .await;
    }
    assert_no_panics();
}

/// A POST of `body` whose body arrives 10 bytes every 100 ms; the answer.
async fn trickle_post(
    addr: std::net::SocketAddr,
    listener: Listener,
    path: &str,
    body: &[u8],
) -> Option<Reply> {
    let mut raw = Raw::connect(addr).await;
    let head = format!(
        "{}content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        listener.head("POST", path),
        body.len()
    );
    raw.send(head.as_bytes()).await;
    for chunk in body.chunks(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !raw.send(chunk).await {
            break;
        }
    }
    raw.reply(Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_bodies_do_not_slow_the_neighbours_and_arrive_whole() {
    let t = Target::start("").await;
    let body = br#"{"to":{"room":"lobby"},"event":"slow","data":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}"#;
    for (listener, path, status) in [
        (Listener::Outbound, "/echo", 200),
        (Listener::Inbound, "/echo", 200),
        (Listener::Api, "/v1/broadcast", 202),
    ] {
        let addr = t.addr(listener);
        let replies = t
            .beside(
                listener,
                join_all((0..20).map(|_| trickle_post(addr, listener, path, body))),
            )
            .await;
        for reply in replies {
            let reply = reply.unwrap_or_else(|| panic!("{listener:?}: a slow body was cut"));
            assert_eq!(reply.status, status, "{listener:?}: {reply:?}");
            if status == 200 {
                assert_eq!(reply.body, body, "{listener:?}: the echo");
            }
        }
    }
    // Telemetry reads no body: it answers, and the neighbours do not notice.
    let addr = t.addr(Listener::Telemetry);
    t.beside(Listener::Telemetry, async {
        for reply in join_all(
            (0..20).map(|_| trickle_post(addr, Listener::Telemetry, "/healthz/live", body)),
        )
        .await
        .into_iter()
        .flatten()
        {
            assert!(reply.status < 500, "{reply:?}");
        }
    })
    .await;
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_streamed_or_refused_413() {
    let t = Target::start("").await;
    // The data plane streams a body of any size once (docs/errors.md): 8 MiB echoed whole.
    let big = Bytes::from(
        (0..8 * 1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    for listener in DATA_PLANE {
        let (target, host) = listener.target("/echo");
        let req = Request::post(target)
            .header("host", host)
            .body(Full::new(big.clone()))
            .unwrap();
        let addr = t.addr(listener);
        let answer = t
            .beside(listener, async {
                tokio::time::timeout(Duration::from_secs(20), send(addr, req))
                    .await
                    .expect("8 MiB echoed within 20 s")
                    .expect("answered")
            })
            .await;
        assert_eq!(answer.status, 200, "{listener:?}");
        assert_eq!(answer.body.len(), big.len(), "{listener:?}");
        assert!(answer.body == big, "{listener:?}: the echo differs");
    }
    // The local API reads at most 1 MiB of a body: 413 body_too_large (or a reset when the
    // close beat the rest of the body).
    let api = t.addr(Listener::Api);
    t.beside(Listener::Api, async {
        let mut raw = Raw::connect(api).await;
        let body = vec![b' '; 2 * 1024 * 1024];
        let mut bytes = format!(
            "{}content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            Listener::Api.head("POST", "/v1/broadcast"),
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        let writer = raw.write_beside(bytes);
        if let Some(reply) = raw.reply(Duration::from_secs(5)).await {
            assert_eq!(reply.status, 413, "{reply:?}");
            assert_eq!(reply.json()["error"], "body_too_large");
        }
        writer.abort();
    })
    .await;
    assert_no_panics();
}
