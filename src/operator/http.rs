//! A GET to a meshlet listener or the app on this machine, over one fresh HTTP/1.1
//! connection (a tiny hyper client connection: no pool, nothing kept). The connect, the
//! request and the answer's head all within the caller's wait; a body read whole within
//! another, and at most [`MAX_BODY`] bytes; a streamed body (`/v1/tap`) frame by frame.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Each check and each ask waits at most this long (docs/operations.md).
pub const WAIT: Duration = Duration::from_secs(2);

/// The largest body read whole: `/v1/stats` of hundreds of destinations fits many times.
pub const MAX_BODY: usize = 8 << 20;

/// Why a GET got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Nothing listens there.
    #[error("refused the connection")]
    Refused,
    /// No connection, answer or body within the wait.
    #[error("did not answer within {}s", .0.as_secs_f32())]
    Timeout(Duration),
    /// The connect failed for another reason (unreachable network, ...).
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The connection broke, or what came back was not HTTP.
    #[error("the exchange failed: {0}")]
    Failed(String),
    /// An answer, but not a 2xx.
    #[error("answered {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        /// The status.
        status: StatusCode,
        /// The start of its body, for the reason.
        body: String,
    },
    /// A body larger than [`MAX_BODY`].
    #[error("answered more than {MAX_BODY} bytes")]
    TooLarge,
}

/// Sends `GET path` to `addr` and returns the answer once its head is in, within `wait`.
/// `Host` is `localhost:<port>`: the local API answers only loopback hosts.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    wait: Duration,
) -> Result<Response<Incoming>, HttpError> {
    let host = format!("localhost:{}", addr.port());
    get_with_host(addr, path, &host, wait).await
}

/// [`get`] with the given `Host` (the app's health path gets the app's own).
pub async fn get_with_host(
    addr: SocketAddr,
    path: &str,
    host: &str,
    wait: Duration,
) -> Result<Response<Incoming>, HttpError> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                HttpError::Refused
            } else {
                HttpError::Connect(e)
            }
        })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::Failed(e.to_string()))?;
        // The connection's driver; it ends when the answer (and its body) is done or dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let req = Request::get(path)
            .header(HOST, host)
            .header(USER_AGENT, concat!("meshlet/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| HttpError::Failed(format!("bad request {path}: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| HttpError::Failed(e.to_string()))
    };
    tokio::time::timeout(wait, exchange)
        .await
        .unwrap_or(Err(HttpError::Timeout(wait)))
}

/// Reads the body of `resp` whole, within `wait`; a non-2xx status is an error that quotes
/// the body's start.
pub async fn body(resp: Response<Incoming>, wait: Duration) -> Result<Bytes, HttpError> {
    let status = resp.status();
    let read = async {
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_BODY);
        match limited.collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(HttpError::TooLarge),
            Err(e) => Err(HttpError::Failed(e.to_string())),
        }
    };
    let bytes = tokio::time::timeout(wait, read)
        .await
        .unwrap_or(Err(HttpError::Timeout(wait)))?;
    if status.is_success() {
        Ok(bytes)
    } else {
        let text = String::from_utf8_lossy(&bytes);
        let text: String = text.trim().chars().take(200).collect();
        Err(HttpError::Status { status, body: text })
    }
}

/// `GET path` and its body whole: one [`WAIT`] for the head, another for the body.
pub async fn get_body(addr: SocketAddr, path: &str) -> Result<Bytes, HttpError> {
    body(get(addr, path, WAIT).await?, WAIT).await
}

/// `GET path`, its status and its body whatever the status (`/healthz/ready` says why it
/// is not ready in a 503's body), within two [`WAIT`]s.
pub async fn get_answer(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes), HttpError> {
    let resp = get(addr, path, WAIT).await?;
    let status = resp.status();
    match body(resp, WAIT).await {
        Ok(bytes) => Ok((status, bytes)),
        Err(HttpError::Status { status, body }) => Ok((status, Bytes::from(body))),
        Err(e) => Err(e),
    }
}

/// Splits a byte stream into lines: feed chunks, take complete lines (without `\n`).
#[derive(Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// The longest line kept while waiting for its end: a tap line is a few hundred bytes.
    const MAX_LINE: usize = 1 << 20;

    /// Adds `chunk` and returns the lines it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = &self.pending[start..start + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                lines.push(String::from_utf8_lossy(line).into_owned());
            }
            start += end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() > Self::MAX_LINE {
            // No newline in a megabyte: not NDJSON; drop it rather than grow without bound.
            self.pending.clear();
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn lines_are_split_across_chunks() {
        let mut lines = Lines::default();
        assert!(lines.feed(b"{\"a\":").is_empty());
        assert_eq!(
            lines.feed(b"1}\n{\"b\":2}\r\n\n{\"c\""),
            vec!["{\"a\":1}", "{\"b\":2}"]
        );
        assert_eq!(lines.feed(b":3}\n"), vec!["{\"c\":3}"]);
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_and_a_silent_one_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let got = get(addr, "/", WAIT).await;
        assert!(matches!(got, Err(HttpError::Refused)), "{got:?}");

        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let wait = Duration::from_millis(200);
        let got = get(addr, "/", wait).await;
        assert!(
            matches!(got, Err(HttpError::Timeout(w)) if w == wait),
            "{got:?}"
        );
        drop(silent);
    }

    #[tokio::test]
    async fn the_body_is_read_and_a_failure_status_quotes_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut heads = Vec::new();
            for answer in [
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 14\r\n\r\n{\"ready\":false",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = vec![0; 4096];
                let n = s.read(&mut head).await.unwrap();
                heads.push(String::from_utf8_lossy(&head[..n]).into_owned());
                s.write_all(answer.as_bytes()).await.unwrap();
            }
            heads
        });
        assert_eq!(
            &get_body(addr, "/v1/stats").await.unwrap()[..],
            b"{\"a\":1}"
        );
        let got = get_body(addr, "/healthz/ready").await;
        let Err(HttpError::Status { status, body }) = got else {
            panic!("{got:?}")
        };
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "{\"ready\":false");
        let heads = server.await.unwrap();
        assert!(
            heads[0].starts_with("GET /v1/stats HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0]
                .to_ascii_lowercase()
                .contains(&format!("host: localhost:{}\r\n", addr.port())),
            "{}",
            heads[0]
        );
    }
}
