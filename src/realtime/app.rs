//! `client_publish: app`: a client's `publish` frame POSTed to `service.app` +
//! `realtime.on_message`, with the client's user and client id, over a few kept-alive
//! HTTP/1.1 connections owned by the control plane.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Header carrying the publishing client's id.
pub const X_REALTIME_CLIENT: &str = "x-realtime-client";
/// Header carrying the publishing client's user (absent for anonymous clients).
pub const X_REALTIME_USER: &str = "x-realtime-user";

/// How long the app may take to answer one message.
const APP_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept for reuse.
const POOL: usize = 4;

/// Why the app did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Connect or protocol failure.
    #[error("app unreachable: {0}")]
    Unreachable(String),
    /// No answer in time.
    #[error("app did not answer within {0:?}")]
    Timeout(Duration),
    /// The app answered with an error status.
    #[error("app answered {0}")]
    Refused(StatusCode),
}

/// Posts client messages to the app.
pub struct AppClient {
    authority: String,
    uri: Uri,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl AppClient {
    /// A client for `service.app` (`http://host:port`) and the `on_message` path.
    pub fn new(app: &Uri, path: &str) -> Option<AppClient> {
        let authority = app.authority()?;
        let authority = match authority.port() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        let uri = Uri::try_from(path).ok()?;
        Some(AppClient {
            authority,
            uri,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// POSTs one JSON body; Ok on a 2xx answer.
    pub async fn post(
        &self,
        body: Bytes,
        client: &str,
        user: Option<&str>,
    ) -> Result<(), AppError> {
        let mut sender = match self.take_idle() {
            Some(s) => s,
            None => self.connect().await?,
        };
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(HOST, self.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(X_REALTIME_CLIENT, client);
        if let Some(user) = user {
            req = req.header(X_REALTIME_USER, user);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| AppError::Unreachable(e.to_string()))?;
        let answer = timeout(APP_TIMEOUT, async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| AppError::Unreachable(e.to_string()))?;
            let status = resp.status();
            resp.into_body()
                .collect()
                .await
                .map_err(|e| AppError::Unreachable(e.to_string()))?;
            Ok::<_, AppError>(status)
        })
        .await
        .map_err(|_| AppError::Timeout(APP_TIMEOUT))??;
        self.give_back(sender);
        if answer.is_success() {
            Ok(())
        } else {
            Err(AppError::Refused(answer))
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, AppError> {
        let stream = timeout(APP_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| AppError::Timeout(APP_TIMEOUT))?
            .map_err(|e| AppError::Unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AppError::Unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL && !sender.is_closed() {
            idle.push(sender);
        }
    }
}
