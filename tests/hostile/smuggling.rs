//! Request framing: pipelined requests across a park (docs/operations.md, "Idle
//! connections": leftover bytes are replayed to the next hyper connection), and the
//! CL/TE conflicts of request smuggling (RFC 9112 §6.3), on every listener. The upstream
//! must see exactly the requests the client was answered for, with the bodies it sent.

use std::time::Duration;

use crate::kit::*;
use crate::support::{eventually, metric};

const WAIT: Duration = Duration::from_secs(5);

fn echo(listener: Listener, body: &str) -> String {
    format!(
        "{}content-length: {}\r\n\r\n{body}",
        listener.head("POST", "/echo"),
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_across_a_park_are_answered_in_order() {
    let t = Target::start("").await;
    let telemetry = t.addr(Listener::Telemetry);
    for (listener, upstream) in [
        (Listener::Outbound, &t.upstream),
        (Listener::Inbound, &t.app),
    ] {
        let parked = format!(
            "meshlet_parked_connections{{listener=\"{}\"}}",
            format!("{listener:?}").to_lowercase()
        );
        let until_parked = || async {
            assert!(
                eventually(WAIT, || async { metric(telemetry, &parked).await >= 1.0 }).await,
                "{listener:?}: the idle connection was not parked"
            );
        };
        let hits = upstream.hits();
        let mut raw = Raw::connect(t.addr(listener)).await;
        assert!(raw.send(echo(listener, "first").as_bytes()).await);
        let reply = raw.reply(WAIT).await.expect("the 1st answer");
        assert_eq!((reply.status, &reply.body[..]), (200, &b"first"[..]));
        until_parked().await;

        // Two whole requests and half of a third, in one write, to the parked connection.
        let third = echo(listener, "third");
        let (head_half, rest) = third.split_at(third.find("host").expect("a host line") + 3);
        let batch = format!(
            "{}{}{head_half}",
            echo(listener, "second"),
            echo(listener, "pipelined-2")
        );
        assert!(raw.send(batch.as_bytes()).await);
        for body in ["second", "pipelined-2"] {
            let reply = raw.reply(WAIT).await.expect("a pipelined answer");
            assert_eq!(reply.status, 200, "{listener:?}");
            assert_eq!(String::from_utf8_lossy(&reply.body), body, "{listener:?}");
        }
        // The half head waits past a park tick (250 ms), then the rest comes.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(raw.send(rest.as_bytes()).await);
        let reply = raw.reply(WAIT).await.expect("the split request's answer");
        assert_eq!(
            String::from_utf8_lossy(&reply.body),
            "third",
            "{listener:?}"
        );

        // Parked again, then a head split mid-line after the wake.
        until_parked().await;
        let fourth = echo(listener, "fourth");
        let (a, b) = fourth.split_at(7);
        assert!(raw.send(a.as_bytes()).await);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(raw.send(b.as_bytes()).await);
        let reply = raw.reply(WAIT).await.expect("the 4th answer");
        assert_eq!(
            String::from_utf8_lossy(&reply.body),
            "fourth",
            "{listener:?}"
        );
        assert_eq!(
            upstream.hits() - hits,
            5,
            "{listener:?}: the upstream's count"
        );
    }
    assert_no_panics();
}

/// What a listener must do with a request whose framing is ambiguous.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// 400, nothing sent on.
    Refused,
    /// 400, or answered once with this echo (the framing RFC 9112 gives it) and then
    /// closed: never a second request out of the same bytes.
    RefusedOrOnce(&'static str),
}

/// The smuggling tries: (name, head lines after `host`, body bytes, expected).
fn tries() -> Vec<(&'static str, &'static str, &'static str, Expect)> {
    vec![
        (
            "content-length and chunked",
            "content-length: 4\r\ntransfer-encoding: chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
            Expect::RefusedOrOnce("hello"),
        ),
        (
            "two different content-lengths",
            "content-length: 5\r\ncontent-length: 6\r\n",
            "hello!",
            Expect::Refused,
        ),
        (
            "a content-length list",
            "content-length: 5, 6\r\n",
            "hello!",
            Expect::Refused,
        ),
        (
            "chunked, identity",
            "transfer-encoding: chunked, identity\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
            Expect::Refused,
        ),
        (
            "an obs-folded content-length",
            "content-length: 5\r\n 6\r\n",
            "hello!",
            Expect::Refused,
        ),
        (
            "an obs-folded header",
            "x-folded: a\r\n b\r\ncontent-length: 5\r\n",
            "hello",
            Expect::Refused,
        ),
        (
            "a space before the colon",
            "transfer-encoding : chunked\r\ncontent-length: 5\r\n",
            "hello",
            Expect::Refused,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_lengths_are_refused_or_framed_once() {
    let t = Target::start("").await;
    for listener in ALL {
        let upstream = match listener {
            Listener::Outbound => Some(&t.upstream),
            Listener::Inbound => Some(&t.app),
            _ => None,
        };
        let path = match listener {
            Listener::Api => "/v1/broadcast",
            Listener::Telemetry => "/healthz/live",
            _ => "/echo",
        };
        for (name, lines, body, expect) in tries() {
            let hits = upstream.map(|u| u.hits());
            let mut raw = Raw::connect(t.addr(listener)).await;
            // A second request rides behind: if the framing were read two ways, it would
            // reach the upstream without its client knowing.
            let smuggled = listener.head("GET", "/smuggled");
            let bytes = format!(
                "{}{lines}\r\n{body}{smuggled}\r\n",
                listener.head("POST", path)
            );
            assert!(raw.send(bytes.as_bytes()).await);
            let reply = raw.reply(WAIT).await;
            let answered = match (&reply, expect) {
                (None, _) => 0,
                (Some(r), _) if r.status == 400 => 0,
                (Some(r), Expect::RefusedOrOnce(echoed)) if upstream.is_some() => {
                    assert_eq!(r.status, 200, "{listener:?} {name}: {r:?}");
                    assert_eq!(
                        String::from_utf8_lossy(&r.body),
                        echoed,
                        "{listener:?} {name}"
                    );
                    1
                }
                (Some(r), _) => {
                    // The control plane has no body to frame at /healthz/live and refuses
                    // the broadcast's bytes: anything but a success or a 5xx.
                    assert!(
                        upstream.is_none() && r.status >= 400 && r.status < 500,
                        "{listener:?} {name}: {r:?}"
                    );
                    0
                }
            };
            // Never a second answer (the smuggled GET) on the same connection.
            let extra = raw.reply(WAIT).await;
            assert!(
                extra.is_none(),
                "{listener:?} {name}: a second request was read out of one: {extra:?}"
            );
            if let (Some(u), Some(before)) = (upstream, hits) {
                assert_eq!(
                    u.hits() - before,
                    answered,
                    "{listener:?} {name}: the upstream's count"
                );
            }
        }
    }
    assert_no_panics();
}
