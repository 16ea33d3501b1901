//! `client_publish: app`: a client's `publish` frame POSTed to `service.app` +
//! `realtime.on_message`, with the client's user and client id, over the control plane's one
//! [`AppClient`] (HTTP/1.1, a few kept-alive connections).

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, StatusCode, Uri};
use http_body_util::Full;

use crate::config::Protocol;
use crate::control::app::{AppClient, AppError as Exchange};

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

impl From<Exchange> for AppError {
    fn from(e: Exchange) -> AppError {
        match e {
            Exchange::Timeout(after) => AppError::Timeout(after),
            Exchange::Connect(e) | Exchange::Failed(e) => AppError::Unreachable(e),
        }
    }
}

/// Posts client messages to the app's `on_message` path.
pub struct OnMessage {
    app: AppClient,
    uri: Uri,
}

impl OnMessage {
    /// A poster for `service.app` (`http://host:port`) and the `on_message` path.
    pub fn new(app: &Uri, path: &str) -> Option<OnMessage> {
        let app = AppClient::new(app, Protocol::Http1, POOL)?;
        let uri = app.uri(path)?;
        Some(OnMessage { app, uri })
    }

    /// POSTs one JSON body; Ok on a 2xx answer.
    pub async fn post(
        &self,
        body: Bytes,
        client: &str,
        user: Option<&str>,
    ) -> Result<(), AppError> {
        let mut req = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(X_REALTIME_CLIENT, client);
        if let Some(user) = user {
            req = req.header(X_REALTIME_USER, user);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| AppError::Unreachable(e.to_string()))?;
        let answered = self.app.fetch(req, APP_TIMEOUT).await?;
        answered.body?;
        if answered.status.is_success() {
            Ok(())
        } else {
            Err(AppError::Refused(answered.status))
        }
    }
}
