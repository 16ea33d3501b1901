//! The hub's WebSocket (docs/realtime.md, "Close codes", "Limits and health") against
//! frames written by hand: malformed frames close the socket (1002, 1007, or no close
//! frame), a message over 64 KiB, whole or in fragments, closes it with 1009, and a
//! fragment stream that never ends is cut by the same limit. A joined neighbour keeps its
//! answers meanwhile.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::kit::*;
use crate::support::realtime::{join_as, say, try_next};

const WAIT: Duration = Duration::from_secs(5);

/// A joined hub client pings three times while `attack` runs: each pong within
/// [`NEIGHBOUR_BOUND`].
async fn hub_beside<T>(t: &Target, attack: impl std::future::Future<Output = T>) -> T {
    let (mut ws, _) = join_as(t.addr(Listener::Inbound), "neighbour").await;
    let pinging = async {
        for _ in 0..3 {
            let started = Instant::now();
            say(&mut ws, json!({"type": "ping"})).await;
            let pong = try_next(&mut ws, WAIT).await.expect("a pong");
            assert_eq!(pong["type"], "pong", "{pong}");
            assert!(
                started.elapsed() < NEIGHBOUR_BOUND,
                "a hub neighbour's pong took {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (out, ()) = tokio::join!(attack, pinging);
    out
}

/// A fresh hub client sends `bytes` after its welcome; how its socket ended.
async fn send_and_close_code(t: &Target, bytes: Vec<u8>) -> Option<u16> {
    let mut raw = ws_raw(t.addr(Listener::Inbound), "attacker").await;
    let welcome = raw.ws_json(WAIT).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let writer = raw.write_beside(bytes);
    let code = raw.ws_close_code(WAIT).await;
    assert!(
        raw.closed(WAIT).await,
        "the socket stayed open after {code:?}"
    );
    writer.abort();
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_the_socket() {
    let t = Target::start("").await;
    let ping = br#"{"type":"ping"}"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an unmasked frame", ws_frame(true, 1, ping, false)),
        ("a reserved bit", {
            let mut f = ws_frame(true, 1, ping, true);
            f[0] |= 0x40;
            f
        }),
        ("an unknown opcode", ws_frame(true, 3, ping, true)),
        ("a 126-byte ping", ws_frame(true, 9, &[0; 126], true)),
        ("a fragmented ping", ws_frame(false, 9, b"p", true)),
        (
            "a continuation with no start",
            ws_frame(true, 0, ping, true),
        ),
        (
            "a text frame that is not UTF-8",
            ws_frame(true, 1, &[0xff, 0xfe, 0xfd], true),
        ),
    ];
    hub_beside(&t, async {
        for (name, bytes) in cases {
            let code = send_and_close_code(&t, bytes).await;
            assert!(
                matches!(code, None | Some(1002) | Some(1007)),
                "{name}: closed with {code:?}"
            );
        }
        // Well-formed frames the hub does not take: an error frame, and the socket stays.
        let mut raw = ws_raw(t.addr(Listener::Inbound), "attacker").await;
        assert_eq!(raw.ws_json(WAIT).await["type"], "welcome");
        for (bytes, code) in [
            (ws_frame(true, 1, b"{not json", true), "bad_json"),
            (ws_frame(true, 2, b"\x00\x01", true), "binary_unsupported"),
            (
                ws_frame(true, 1, br#"{"type":"nope"}"#, true),
                "unknown_type",
            ),
        ] {
            assert!(raw.send(&bytes).await);
            let error = raw.ws_json(WAIT).await;
            assert_eq!(error["type"], "error", "{error}");
            assert_eq!(error["code"], code, "{error}");
        }
        assert!(raw.send(&ws_frame(true, 1, ping, true)).await);
        assert_eq!(raw.ws_json(WAIT).await["type"], "pong");
    })
    .await;
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_64_kib_close_with_1009_whole_fragmented_or_endless() {
    let t = Target::start("").await;
    hub_beside(&t, async {
        // One 70 KiB text frame.
        let whole = ws_frame(true, 1, &vec![b'a'; 70 * 1024], true);
        assert_eq!(send_and_close_code(&t, whole).await, Some(1009), "whole");
        // A frame that announces 2^62 bytes and sends none of them.
        let mut announced = vec![0x81, 0x80 | 127];
        announced.extend_from_slice(&(1u64 << 62).to_be_bytes());
        announced.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            send_and_close_code(&t, announced).await,
            Some(1009),
            "announced"
        );
        // 70 fragments of 1 KiB.
        let mut fragments = ws_frame(false, 1, &[b'a'; 1024], true);
        for _ in 0..69 {
            fragments.extend(ws_frame(false, 0, &[b'a'; 1024], true));
        }
        assert_eq!(
            send_and_close_code(&t, fragments).await,
            Some(1009),
            "fragmented"
        );
        // A message that never ends: one-byte fragments, never FIN (70,000, past 64 KiB).
        let mut endless = ws_frame(false, 1, b"a", true);
        let one = ws_frame(false, 0, b"a", true);
        for _ in 0..70_000 {
            endless.extend_from_slice(&one);
        }
        assert_eq!(
            send_and_close_code(&t, endless).await,
            Some(1009),
            "endless"
        );
    })
    .await;
    assert_no_panics();
}
