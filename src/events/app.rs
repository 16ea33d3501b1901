//! The HTTP client that hands events to the local app: one pooled client per
//! subscription, each POST bounded by the subscription's `timeout`, and the app's answer
//! reduced to what delivery needs to decide (docs/events.md).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::Protocol;

/// How long a connect to the app may take (it is on localhost).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What became of one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The app answered with this status.
    Status(u16),
    /// No answer within the subscription's timeout.
    Timeout,
    /// The app could not be reached.
    ConnectError,
    /// The connection broke mid-request.
    Failed,
}

/// What to do with an entry after a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: acknowledge.
    Ack,
    /// 4xx other than 408/429: the app refuses this event; retrying cannot help.
    Reject,
    /// Anything else: deliver again after a backoff.
    Retry,
}

impl Answer {
    /// The rule of docs/events.md.
    pub fn verdict(self) -> Verdict {
        match self {
            Answer::Status(s) if (200..300).contains(&s) => Verdict::Ack,
            Answer::Status(408 | 429) => Verdict::Retry,
            Answer::Status(s) if (400..500).contains(&s) => Verdict::Reject,
            _ => Verdict::Retry,
        }
    }

    /// The `last_status` recorded with a dead letter.
    pub fn label(self) -> String {
        match self {
            Answer::Status(s) => s.to_string(),
            Answer::Timeout => "timeout".to_owned(),
            Answer::ConnectError => "connect_error".to_owned(),
            Answer::Failed => "reset".to_owned(),
        }
    }
}

/// One delivery's request.
pub struct Delivery<'a> {
    /// Path on the app.
    pub path: &'a str,
    /// The JSON envelope.
    pub envelope: String,
    /// `x-event-id`.
    pub event_id: &'a str,
    /// `x-event-type`.
    pub event_type: &'a str,
    /// `x-event-attempt` (Redis's delivery counter).
    pub attempt: u64,
    /// `traceparent`, a child of the publisher's.
    pub traceparent: String,
}

/// A pooled HTTP client to `service.app`.
#[derive(Clone)]
pub struct AppClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: Uri,
    host: HeaderValue,
}

impl AppClient {
    /// A client for the app at `app` (`http://host:port`), speaking `protocol`.
    pub fn new(app: &Uri, protocol: Protocol, max_idle: usize) -> AppClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_idle)
            .http2_only(protocol == Protocol::H2)
            .build(connector);
        let host = app
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("localhost"));
        AppClient {
            client,
            base: app.clone(),
            host,
        }
    }

    /// POSTs one delivery; the whole exchange (connect, headers, body) within `timeout`.
    pub async fn post(&self, delivery: Delivery<'_>, timeout: Duration) -> Answer {
        let Some(uri) = self.uri(delivery.path) else {
            return Answer::ConnectError;
        };
        let mut req = Request::post(uri);
        let headers = [
            ("x-event-id", delivery.event_id),
            ("x-event-type", delivery.event_type),
            ("traceparent", delivery.traceparent.as_str()),
        ];
        for (name, value) in headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                req = req.header(name, v);
            }
        }
        let req = req
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("x-event-attempt", delivery.attempt)
            .body(Full::new(Bytes::from(delivery.envelope)));
        let Ok(req) = req else {
            return Answer::Failed;
        };
        let exchange = async {
            match self.client.request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // Read the body whole so the connection goes back to the pool.
                    match resp.into_body().collect().await {
                        Ok(_) => Answer::Status(status),
                        Err(_) => Answer::Status(status),
                    }
                }
                Err(e) if e.is_connect() => Answer::ConnectError,
                Err(_) => Answer::Failed,
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Answer::Timeout)
    }

    fn uri(&self, path: &str) -> Option<Uri> {
        let scheme = self.base.scheme_str().unwrap_or("http");
        let authority = self.base.authority()?;
        let base_path = self.base.path().trim_end_matches('/');
        format!("{scheme}://{authority}{base_path}{path}")
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_decides() {
        assert_eq!(Answer::Status(200).verdict(), Verdict::Ack);
        assert_eq!(Answer::Status(204).verdict(), Verdict::Ack);
        assert_eq!(Answer::Status(400).verdict(), Verdict::Reject);
        assert_eq!(Answer::Status(404).verdict(), Verdict::Reject);
        assert_eq!(Answer::Status(408).verdict(), Verdict::Retry);
        assert_eq!(Answer::Status(429).verdict(), Verdict::Retry);
        assert_eq!(Answer::Status(503).verdict(), Verdict::Retry);
        assert_eq!(Answer::Status(302).verdict(), Verdict::Retry);
        assert_eq!(Answer::Timeout.verdict(), Verdict::Retry);
        assert_eq!(Answer::ConnectError.verdict(), Verdict::Retry);
    }
}
