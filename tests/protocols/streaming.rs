//! Streamed bodies through meshlet: server-sent events arrive as written and outlive the
//! call timeout; a stream silent both ways for `limits.idle_timeout` is cut, one whose
//! request side still moves is not.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::support::*;
use crate::tokio_stream_from;

#[tokio::test]
async fn streamed_responses_arrive_as_written_and_outlive_the_call_timeout() {
    let feed = serve(Http::H1, |_req: Request<Incoming>| async {
        let events = futures_util::stream::unfold(0u32, |i| async move {
            if i == 5 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let chunk = Bytes::from(format!("data: event {i}\n\n"));
            Some((Ok::<_, Infallible>(Frame::data(chunk)), i + 1))
        });
        let mut r = Response::new(StreamBody::new(events));
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        r
    })
    .await;
    let addr = feed.addr;
    let s = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nregistry: {{static: {{feed: [\"{addr}\"]}}}}\nservices:\n  feed: {{timeout: 300ms}}\n"
    ))
    .await;
    let stream = TcpStream::connect(s.addresses.outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let resp = sender
        .send_request(
            Request::get("http://feed/events")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push((started.elapsed(), data));
        }
    }
    let text: String = arrivals
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).to_string())
        .collect();
    assert_eq!(text.matches("data: event").count(), 5, "{text}");
    assert!(
        arrivals[0].0 < Duration::from_millis(150),
        "first event came before the stream ended: {:?}",
        arrivals[0].0
    );
    assert!(
        arrivals.last().unwrap().0 >= Duration::from_millis(550),
        "the 300ms call timeout does not cut the stream"
    );
    assert!(
        arrivals.len() >= 4,
        "events arrived one by one, not buffered whole"
    );
}

/// An HTTP/1.1 app with two streams: `/stall` writes one event then goes silent;
/// `/drain` answers headers at once and writes `got N` only after the whole request body.
async fn stalling_app() -> Server {
    serve(Http::H1, |req: Request<Incoming>| async move {
        type Chunks = std::pin::Pin<
            Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>,
        >;
        let chunks: Chunks = if req.uri().path() == "/stall" {
            let first =
                futures_util::stream::iter([Ok(Frame::data(Bytes::from("data: first\n\n")))]);
            Box::pin(first.chain(futures_util::stream::pending()))
        } else {
            let mut body = req.into_body();
            Box::pin(futures_util::stream::once(async move {
                let mut n = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    n += usize::from(frame.is_data());
                }
                Ok(Frame::data(Bytes::from(format!("got {n}"))))
            }))
        };
        Response::new(StreamBody::new(chunks))
    })
    .await
}

#[tokio::test]
async fn a_stream_silent_both_ways_for_idle_timeout_is_cut_and_one_still_moving_is_not() {
    let app = stalling_app().await;
    let s = sidecar(&format!(
        "service: {{name: web}}\nworkers: 1\nlimits: {{idle_timeout: 400ms}}\nregistry: {{static: {{feed: [\"{}\"]}}}}\nservices:\n  feed: {{timeout: 200ms, retry: {{attempts: 1}}}}\n",
        app.addr
    ))
    .await;

    // Silent after its first event: cut after the idle timeout, not by the call timeout.
    let stream = TcpStream::connect(s.addresses.outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let req = Request::get("http://feed/stall")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    let end = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("an idle stream is cut, not left open");
    let cut_after = started.elapsed();
    assert!(
        matches!(end, Some(Err(_)) | None),
        "the stream ends without more data: {end:?}"
    );
    assert!(
        cut_after >= Duration::from_millis(400),
        "not before idle_timeout: {cut_after:?}"
    );

    // A silent response whose request body keeps moving is not idle: 6 chunks 150 ms
    // apart (900 ms, over twice the idle timeout), then the app answers.
    let stream = TcpStream::connect(s.addresses.outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    tokio::spawn(async move {
        for i in 0..6 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if tx
                .send(Ok(Frame::data(Bytes::from(format!("chunk {i}")))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let req = Request::post("http://feed/drain")
        .body(StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "headers come before the request ends");
    let whole = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("answered")
        .expect("not cut: the request side was moving");
    assert_eq!(&whole.to_bytes()[..], b"got 6");
}
