//! HTTP/1.1 upgrades (WebSocket and other protocols), h2 extended CONNECT (RFC 8441) and
//! CONNECT tunnels: the handshake goes through the normal call path (routing, policy,
//! identity), then after the `101` (or the `2xx` to an extended CONNECT) the two connections
//! are spliced byte for byte until either side closes or nothing moves for
//! `limits.idle_timeout`.
//!
//! An extended CONNECT is carried only to h2 endpoints: translating it into an HTTP/1.1
//! `Upgrade` would need meshlet to speak the upgraded protocol's handshake (WebSocket keys).
//!
//! `Upgrade: h2c` is never forwarded: it is a known request-smuggling vector through proxies.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use http::Version;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::server::ConnectionHold;
use crate::policy::clock;

/// The protocol a request asks to upgrade to, when it is an upgrade meshlet carries:
/// HTTP/1.1, `Connection: upgrade`, an `Upgrade` token other than `h2c`.
pub fn requested(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let wants = headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    let token = headers.get(UPGRADE)?;
    let h2c = token
        .to_str()
        .unwrap_or("")
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("h2c"));
    (wants && !h2c).then(|| token.clone())
}

/// The protocol of an h2 extended CONNECT (`:protocol`, RFC 8441), when the request is one.
pub fn extended_connect<B>(req: &http::Request<B>) -> Option<&hyper::ext::Protocol> {
    (req.method() == http::Method::CONNECT)
        .then(|| req.extensions().get::<hyper::ext::Protocol>())
        .flatten()
}

/// The client's half of an upgrade: its connection once switched, and the connection's
/// place under `limits.max_connections`, kept until the spliced socket closes.
pub struct ClientHalf {
    upgrade: OnUpgrade,
    hold: Option<ConnectionHold>,
}

/// The client's half of the connection to splice once the upstream agrees, when the
/// request asks for an upgrade meshlet carries (HTTP/1.1 `Upgrade` or extended CONNECT).
pub fn client_half<B>(req: &mut http::Request<B>) -> Option<ClientHalf> {
    let wants =
        requested(req.headers(), req.version()).is_some() || extended_connect(req).is_some();
    wants.then(|| ClientHalf {
        hold: req.extensions_mut().remove::<ConnectionHold>(),
        upgrade: hyper::upgrade::on(req),
    })
}

/// Puts the upgrade headers back after hop-by-hop stripping removed them.
pub fn restore(headers: &mut HeaderMap, token: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, token);
}

/// After a `101` (or a `2xx` to an extended CONNECT), splices the client's connection (when
/// it asked for the upgrade) with the upstream's in a task of its own.
pub fn splice_if_switched(
    client: Option<ClientHalf>,
    resp: &mut http::Response<super::response_body::ResponseBody>,
    idle: Duration,
    gauge: &prometheus::IntGauge,
) {
    if let Some(client) = client {
        let switched = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
            // hyper hands over the stream of a CONNECT's 2xx (and only then) this way.
            || (resp.status().is_success() && resp.extensions().get::<OnUpgrade>().is_some());
        if switched {
            let upstream = hyper::upgrade::on(resp);
            tokio::spawn(splice(client, upstream, idle, gauge.clone()));
        }
    }
}

/// Splices two upgraded connections until one side closes or both are idle for `idle`.
pub async fn splice(
    client: ClientHalf,
    upstream: OnUpgrade,
    idle: Duration,
    gauge: prometheus::IntGauge,
) {
    let ClientHalf {
        upgrade: client,
        hold: _hold,
    } = client;
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    splice_io(TokioIo::new(client), TokioIo::new(upstream), idle, gauge).await;
}

/// Splices any two byte streams with the idle rule (CONNECT tunnels use it directly).
pub async fn splice_io<A, B>(a: A, b: B, idle: Duration, gauge: prometheus::IntGauge)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    gauge.inc();
    let last = Arc::new(AtomicU64::new(clock::now_ms()));
    let mut a = Watched {
        io: a,
        last: last.clone(),
    };
    let mut b = Watched {
        io: b,
        last: last.clone(),
    };
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut a, &mut b) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "upgraded connection closed with an error");
            }
        }
        () = idle_for(&last, idle) => {
            tracing::debug!(?idle, "upgraded connection idle; closing both halves");
        }
    }
    gauge.dec();
}

async fn idle_for(last: &AtomicU64, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
    loop {
        let quiet = clock::now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if quiet >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
    }
}

/// An I/O stream that notes the time of its last read.
struct Watched<T> {
    io: T,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.last.store(clock::now_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_upgrades_are_carried_and_h2c_is_not() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(requested(&h, Version::HTTP_11).unwrap(), "websocket");
        assert!(requested(&h, Version::HTTP_10).is_none());
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(requested(&h, Version::HTTP_11).is_none());
        h.remove(CONNECTION);
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(
            requested(&h, Version::HTTP_11).is_none(),
            "Connection must ask for it"
        );
    }
}
