//! Malformed and flooding h2 (prior knowledge, frames written by hand) on every listener:
//! bad prefaces and frames get GOAWAY with the right error code or a close; SETTINGS,
//! PING and RST_STREAM floods and huge or endless header lists end in GOAWAY or are
//! answered with bounded work; a well-behaved client on the listener keeps its latency.

use std::time::Duration;

use crate::kit::*;

const WAIT: Duration = Duration::from_secs(5);

/// Writes `bytes` to a fresh connection to `listener` (from a task, so a server that
/// stops reading cannot block the test) and watches `stream` (0: none) until decisive.
async fn attack(t: &Target, listener: Listener, bytes: Vec<u8>, stream: u32) -> H2Outcome {
    let mut raw = Raw::connect(t.addr(listener)).await;
    let writer = raw.write_beside(bytes);
    let out = h2_watch(&mut raw.stream, stream, WAIT).await;
    writer.abort();
    out
}

fn headers_frame(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, flags, stream, block)
}

/// A GET of the listener's good path on `stream`, ended.
fn good_get(listener: Listener, stream: u32) -> Vec<u8> {
    headers_frame(
        stream,
        END_HEADERS | END_STREAM,
        &h2_get_block(listener, listener.good_path(), &[]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_prefaces_and_frames_get_goaway_or_a_close() {
    let t = Target::start("").await;
    for listener in ALL {
        // A preface with the wrong magic is no h2: read as HTTP/1.1, refused or closed.
        let mut raw = Raw::connect(t.addr(listener)).await;
        assert!(raw.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").await);
        if let Some(reply) = raw.reply(WAIT).await {
            assert!(
                (400..600).contains(&reply.status),
                "{listener:?}: {reply:?}"
            );
        }
        assert!(
            raw.closed(WAIT).await,
            "{listener:?}: a bad preface left open"
        );

        let cases: Vec<(&str, Vec<u8>, &[u32])> = vec![
            // A WINDOW_UPDATE of 0 on the connection (RFC 9113 §6.9).
            (
                "a zero WINDOW_UPDATE",
                {
                    let mut b = h2_start();
                    b.extend(frame(8, 0, 0, &[0; 4]));
                    b
                },
                &[PROTOCOL_ERROR],
            ),
            // DATA belongs to a stream, never to the connection (stream 0).
            (
                "DATA on stream 0",
                {
                    let mut b = h2_start();
                    b.extend(frame(DATA, 0, 0, b"data"));
                    b
                },
                &[PROTOCOL_ERROR],
            ),
            // SETTINGS whose length is not a multiple of 6.
            (
                "a SETTINGS of 5 bytes",
                {
                    let mut b = H2_PREFACE.to_vec();
                    b.extend(frame(SETTINGS, 0, 0, &[0; 5]));
                    b
                },
                &[FRAME_SIZE_ERROR, PROTOCOL_ERROR],
            ),
            // A frame over the 16 KiB SETTINGS_MAX_FRAME_SIZE.
            (
                "a 20 KiB frame",
                {
                    let mut b = h2_start();
                    b.extend(frame(DATA, 0, 1, &vec![0; 20 * 1024]));
                    b
                },
                &[FRAME_SIZE_ERROR],
            ),
            // Client streams are odd.
            (
                "HEADERS on an even stream",
                {
                    let mut b = h2_start();
                    b.extend(good_get(listener, 2));
                    b
                },
                &[PROTOCOL_ERROR],
            ),
            // A header block that is not HPACK.
            (
                "a garbage header block",
                {
                    let mut b = h2_start();
                    b.extend(headers_frame(1, END_HEADERS | END_STREAM, &[0xff; 32]));
                    b
                },
                &[COMPRESSION_ERROR, PROTOCOL_ERROR],
            ),
        ];
        for (name, bytes, codes) in cases {
            let out = t.beside(listener, attack(&t, listener, bytes, 0)).await;
            assert!(
                out.goaway.is_some_and(|c| codes.contains(&c))
                    || (out.goaway.is_none() && out.closed),
                "{listener:?} {name}: {out:?}"
            );
        }
    }
    assert_no_panics();
}

/// A flood of `count` copies of `one` after the preface; reads frames until `count` of
/// kind `answered_by` came back (each acknowledged), GOAWAY, or a close.
async fn flood(t: &Target, listener: Listener, one: Vec<u8>, count: usize, answered_by: u8) {
    let mut raw = Raw::connect(t.addr(listener)).await;
    let mut bytes = h2_start();
    for _ in 0..count {
        bytes.extend_from_slice(&one);
    }
    // A well-behaved request on the same connection after the flood.
    bytes.extend(good_get(listener, 1));
    let writer = raw.write_beside(bytes);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut acks = 0;
    let mut status = None;
    let mut goaway = None;
    while let Some(f) = read_frame(&mut raw.stream, deadline).await {
        if f.kind == answered_by && f.flags & ACK != 0 {
            acks += 1;
        }
        if f.kind == GOAWAY {
            goaway = Some(u32::from_be_bytes([
                f.payload[4],
                f.payload[5],
                f.payload[6],
                f.payload[7],
            ]));
            break;
        }
        if f.kind == HEADERS && f.stream == 1 {
            status = status_of(&f.payload);
        }
        if acks >= count && status.is_some() {
            break;
        }
    }
    writer.abort();
    // Either every frame was acknowledged and the request behind the flood answered
    // (bounded work per frame), or the flood was cut with GOAWAY ENHANCE_YOUR_CALM.
    assert!(
        (acks >= count && status == Some(200)) || goaway == Some(ENHANCE_YOUR_CALM),
        "{listener:?}: {acks} of {count} acknowledged, answered: {status:?}, GOAWAY {goaway:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_do_not_slow_the_neighbours() {
    let t = Target::start("").await;
    for listener in ALL {
        // SETTINGS_MAX_CONCURRENT_STREAMS (3) = 100, 10,000 times.
        let settings = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
        t.beside(listener, flood(&t, listener, settings, 10_000, SETTINGS))
            .await;
        let ping = frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        t.beside(listener, flood(&t, listener, ping, 10_000, PING))
            .await;
    }
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_gets_goaway_enhance_your_calm() {
    let t = Target::start("").await;
    for listener in ALL {
        // 1,000 streams opened and cancelled at once (CVE-2023-44487).
        let flood = || {
            let mut bytes = h2_start();
            for i in 0..1000u32 {
                let id = 2 * i + 1;
                bytes.extend(headers_frame(
                    id,
                    END_HEADERS,
                    &h2_get_block(listener, listener.good_path(), &[]),
                ));
                bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            }
            bytes.extend(good_get(listener, 2001));
            bytes
        };
        let out = t
            .beside(listener, attack(&t, listener, flood(), 2001))
            .await;
        // h2 allows 20 streams reset before they were served, then GOAWAY.
        assert_eq!(out.goaway, Some(ENHANCE_YOUR_CALM), "{listener:?}: {out:?}");
        // Alone (no neighbour asking): at most those 20 ever reached an upstream.
        let hits = t.upstream.hits() + t.app.hits();
        let out = attack(&t, listener, flood(), 2001).await;
        assert_eq!(out.goaway, Some(ENHANCE_YOUR_CALM), "{listener:?}: {out:?}");
        let sent_on = t.upstream.hits() + t.app.hits() - hits;
        assert!(
            sent_on <= 20,
            "{listener:?}: {sent_on} cancelled requests reached an upstream"
        );
    }
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_endless_header_lists_are_refused() {
    let t = Target::start("").await;
    for listener in ALL {
        // One 80 KiB header (over max_header_bytes, 64 KiB), in HEADERS + CONTINUATIONs.
        let block = h2_get_block(
            listener,
            listener.good_path(),
            &[("x-big", &"b".repeat(80 * 1024))],
        );
        let mut bytes = h2_start();
        let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let flags = if last { END_HEADERS } else { 0 };
            if i == 0 {
                bytes.extend(headers_frame(1, flags | END_STREAM, chunk));
            } else {
                bytes.extend(frame(CONTINUATION, flags, 1, chunk));
            }
        }
        bytes.extend(good_get(listener, 3));
        t.beside(listener, async {
            let mut raw = Raw::connect(t.addr(listener)).await;
            let writer = raw.write_beside(bytes);
            // h2's answer to a header list over SETTINGS_MAX_HEADER_LIST_SIZE: a 431 on
            // the stream; the connection goes on serving.
            let out = h2_watch(&mut raw.stream, 1, WAIT).await;
            assert_eq!(
                out.status,
                Some(431),
                "{listener:?}: an 80 KiB header list: {out:?}"
            );
            let next = h2_watch(&mut raw.stream, 3, WAIT).await;
            assert_eq!(
                next.status,
                Some(200),
                "{listener:?}: the next stream: {next:?}"
            );
            writer.abort();
        })
        .await;

        // A header block that never ends: CONTINUATION after CONTINUATION (CVE-2024-27316).
        let mut bytes = h2_start();
        bytes.extend(headers_frame(
            1,
            END_STREAM,
            &h2_get_block(listener, "/", &[]),
        ));
        let mut one = Vec::new();
        hpack_literal("x-more", "more", &mut one);
        for _ in 0..10_000 {
            bytes.extend(frame(CONTINUATION, 0, 1, &one));
        }
        let out = t.beside(listener, attack(&t, listener, bytes, 1)).await;
        assert_eq!(
            out.goaway,
            Some(ENHANCE_YOUR_CALM),
            "{listener:?}: endless CONTINUATIONs: {out:?}"
        );
    }
    assert_no_panics();
}
