//! The one HTTP client from the control plane to the local app (`service.app`): event
//! delivery (`events::app`), the hub's `on_message` POSTs (`realtime::app`) and the health
//! check (`registry::health`) each hold an [`AppClient`] and build their own requests.
//!
//! What it owns: the connections (a keep-alive pool of a size the caller picks, HTTP/1.1 or
//! h2c prior knowledge), the `Host` header, and bounded times: a connect gives up after
//! [`CONNECT_TIMEOUT`], and every exchange (connect, answer and, for [`AppClient::fetch`],
//! body) within the deadline its caller passes. It reduces a failure to an [`AppError`]
//! and decides nothing: what an answer means stays with each caller. The request path
//! never uses it (inbound requests reach the app through `proxy::forward`).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::Protocol;

/// How long a connect to the app may take (it is on localhost).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why an exchange with the app got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// The app could not be reached (connect refused or failed).
    #[error("{0}")]
    Connect(String),
    /// The request could not be made, or the connection broke mid-exchange.
    #[error("{0}")]
    Failed(String),
    /// No answer within the caller's deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// An answer read whole.
#[derive(Debug)]
pub struct Answered {
    /// The app's status.
    pub status: StatusCode,
    /// Whether the body arrived whole (`Err`: it broke off after the head).
    pub body: Result<(), AppError>,
}

/// A pooled HTTP client to the app at one origin.
#[derive(Clone, Debug)]
pub struct AppClient {
    client: Client<HttpConnector, Full<Bytes>>,
    authority: Authority,
    host: HeaderValue,
}

impl AppClient {
    /// A client for the app at `app` (`http://host[:port]`, port 80 when left out; a path
    /// is not used), speaking `protocol`, keeping up to `pool` idle connections. `None`
    /// when `app` has no `host[:port]`.
    pub fn new(app: &Uri, protocol: Protocol, pool: usize) -> Option<AppClient> {
        let given = app.authority()?;
        let authority: Authority = match given.port() {
            Some(_) => given.clone(),
            None => format!("{}:80", given.host()).parse().ok()?,
        };
        // `Host` as `service.app` spells it (no default port added), as HTTP clients send it.
        let host = HeaderValue::from_str(given.as_str()).ok()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(pool)
            .http2_only(protocol == Protocol::H2)
            .build(connector);
        Some(AppClient {
            client,
            authority,
            host,
        })
    }

    /// The URI of `path` (origin-form path and query) on the app; `None` when `path` is not
    /// a valid one.
    pub fn uri(&self, path: &str) -> Option<Uri> {
        let path = PathAndQuery::try_from(path).ok()?;
        Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .ok()
    }

    /// Sends `req` and reads its answer whole, all within `timeout`; reading the body lets
    /// the connection go back to the pool. A body that breaks off after the head is
    /// reported in [`Answered::body`], not as a failed exchange.
    pub async fn fetch(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answered, AppError> {
        let exchange = async {
            let resp = self.client.request(self.with_host(req)).await;
            let resp = resp.map_err(failure)?;
            let status = resp.status();
            let body = match resp.into_body().collect().await {
                Ok(_) => Ok(()),
                Err(e) => Err(AppError::Failed(innermost(&e))),
            };
            Ok(Answered { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(AppError::Timeout(timeout)))
    }

    /// Sends `req` and waits for its status only, within `timeout`; the body is dropped
    /// unread (so the connection is closed, not pooled).
    pub async fn status(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<StatusCode, AppError> {
        let exchange = async {
            let resp = self.client.request(self.with_host(req)).await;
            resp.map(|r| r.status()).map_err(failure)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(AppError::Timeout(timeout)))
    }

    fn with_host(&self, mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
        req.headers_mut()
            .entry(HOST)
            .or_insert_with(|| self.host.clone());
        req
    }
}

/// A client error as an [`AppError`]: a connect failure, or anything else.
fn failure(e: hyper_util::client::legacy::Error) -> AppError {
    if e.is_connect() {
        AppError::Connect(innermost(&e))
    } else {
        AppError::Failed(innermost(&e))
    }
}

/// The root cause's message ("Connection refused (os error 111)", "connection closed
/// before message completed"): the wrappers around it say nothing more.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn client(addr: std::net::SocketAddr) -> AppClient {
        let app: Uri = format!("http://{addr}").parse().unwrap();
        AppClient::new(&app, Protocol::Http1, 1).unwrap()
    }

    #[test]
    fn the_origin_gets_its_port_and_paths_their_origin() {
        let app: Uri = "http://app.local/ignored".parse().unwrap();
        let c = AppClient::new(&app, Protocol::Http1, 1).unwrap();
        assert_eq!(
            c.uri("/hook?x=1").unwrap().to_string(),
            "http://app.local:80/hook?x=1"
        );
        assert!(c.uri("no slash").is_none());
        assert!(AppClient::new(&"/relative".parse().unwrap(), Protocol::Http1, 1).is_none());
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = client(addr);
        let req = Request::get(c.uri("/").unwrap())
            .body(Full::default())
            .unwrap();
        let got = c.fetch(req, Duration::from_secs(2)).await;
        let Err(AppError::Connect(why)) = got else {
            panic!("{got:?}")
        };
        assert!(why.to_lowercase().contains("refused"), "{why}");
    }

    #[tokio::test]
    async fn a_silent_app_times_out_and_an_answer_is_read_with_host_set() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // The first connection never answers; the second answers 204.
            let (_silent, _) = listener.accept().await.unwrap();
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = vec![0; 4096];
            let n = s.read(&mut head).await.unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            let _ = s.read(&mut head[n..]).await;
            String::from_utf8_lossy(&head[..n]).into_owned()
        });
        let c = client(addr);
        let req = Request::get(c.uri("/slow").unwrap())
            .body(Full::default())
            .unwrap();
        let late = c.status(req, Duration::from_millis(200)).await;
        assert_eq!(late, Err(AppError::Timeout(Duration::from_millis(200))));
        let req = Request::post(c.uri("/ok").unwrap())
            .body(Full::from("{}"))
            .unwrap();
        let answered = c.fetch(req, Duration::from_secs(2)).await.unwrap();
        assert_eq!(answered.status, StatusCode::NO_CONTENT);
        assert_eq!(answered.body, Ok(()));
        drop(c);
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /ok http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
    }
}
