//! Handing events to the local app: each delivery POSTed over the control plane's one
//! [`AppClient`] (one pool of `concurrency` connections per subscription), bounded by the
//! subscription's `timeout`, and the app's answer reduced to what delivery needs to decide:
//! the ack/retry/dead-letter rule of docs/events.md.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Uri};
use http_body_util::Full;

use crate::config::Protocol;
use crate::control::app::{AppClient, AppError};

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

/// Posts deliveries to `service.app`.
#[derive(Clone)]
pub struct Poster {
    app: AppClient,
    /// The path of `service.app`, put before each subscription's path.
    base_path: String,
}

impl Poster {
    /// A poster to the app at `app` (`http://host:port`), speaking `protocol`, keeping up to
    /// `max_idle` connections. `None` when `app` has no `host:port`.
    pub fn new(app: &Uri, protocol: Protocol, max_idle: usize) -> Option<Poster> {
        Some(Poster {
            app: AppClient::new(app, protocol, max_idle)?,
            base_path: app.path().trim_end_matches('/').to_owned(),
        })
    }

    /// POSTs one delivery; the whole exchange (connect, headers, body) within `timeout`.
    pub async fn post(&self, delivery: Delivery<'_>, timeout: Duration) -> Answer {
        let Some(uri) = self
            .app
            .uri(&format!("{}{}", self.base_path, delivery.path))
        else {
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
            .header(CONTENT_TYPE, "application/json")
            .header("x-event-attempt", delivery.attempt)
            .body(Full::new(Bytes::from(delivery.envelope)));
        let Ok(req) = req else {
            return Answer::Failed;
        };
        // A 2xx whose body then breaks off is still the app's answer.
        match self.app.fetch(req, timeout).await {
            Ok(answered) => Answer::Status(answered.status.as_u16()),
            Err(AppError::Connect(_)) => Answer::ConnectError,
            Err(AppError::Failed(_)) => Answer::Failed,
            Err(AppError::Timeout(_)) => Answer::Timeout,
        }
    }
}

/// The pause before delivery `attempt + 1`, on either broker: `backoff × 2^(attempt-1)`,
/// capped by `max_backoff`, jittered into its upper half (docs/events.md).
pub(crate) fn redelivery_backoff(sub: &crate::config::Subscription, attempt: u64) -> Duration {
    let base = sub.backoff.get();
    let cap = sub.max_backoff.get().max(base);
    let doublings = attempt.saturating_sub(1).min(30) as u32;
    let ceiling = base.saturating_mul(1 << doublings).min(cap);
    ceiling / 2 + ceiling.mul_f64(fastrand::f64() * 0.5)
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
