//! Protocols end to end with real peers: WebSocket through outbound and inbound, h2c upgrades,
//! RFC 8441 extended CONNECT and CONNECT tunnels (`upgrades`), gRPC over h2c: trailers,
//! statuses, deadlines, retries (`grpc`), streamed responses and idle streams (`streaming`).

#[path = "../support/mod.rs"]
mod support;

mod grpc;
mod streaming;
mod upgrades;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// An mpsc receiver as a stream (no extra crate needed).
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Writes back every byte read from `io` until it ends.
async fn echo_bytes(mut io: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
