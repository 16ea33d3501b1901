//! Response bodies on their way back to the client. An upstream's body streams through
//! untouched, holding its [`Guards`] (in-flight counts, the pooled connection, a stale-cache
//! copy) until it ends; meshlet's own answers are held whole. Plain enums rather than boxed
//! trait objects: no allocation per request.
//!
//! The access line waits in the guards too ([`Guards::answered`]): it counts the bytes as
//! they pass and is written when the body ends, fails or is dropped, saying whether the
//! body went out whole.
//!
//! A streamed response is cut after `limits.idle_timeout` without a byte in either
//! direction (docs/config.md: the call's timeout ends at the response headers). The timer is
//! armed only when the upstream makes the body wait, so a response that arrives whole costs
//! nothing; bytes of a still-streaming request body (a bidi gRPC call) count as activity.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::request_body::Activity;
use super::upstream::{self, Http1Lease};
use crate::policy::balance::InFlight;
use crate::policy::clock;
use crate::policy::stale::StaleRecorder;
use crate::policy::Permit;
use crate::telemetry::access::Answered;
use crate::telemetry::metrics::DestinationMetrics;
use crate::wire::{grpc, AnswerBody};

/// What an upstream response holds until its body is done: the endpoint's and the
/// destination's in-flight counts, the pooled connection, and a stale-cache recording.
#[derive(Debug, Default)]
pub struct Guards {
    /// Endpoint in-flight count.
    pub in_flight: Option<InFlight>,
    /// Destination concurrency slot.
    pub permit: Option<Permit>,
    /// The HTTP/1.1 connection, back to the pool once the body has been read whole.
    pub lease: Option<Http1Lease>,
    /// Copy for the stale cache (boxed: only stale-mode destinations have one).
    pub record: Option<Box<StaleRecorder>>,
    /// A gRPC call's destination metrics: its `grpc-status` arrives in the trailers.
    pub grpc: Option<Arc<DestinationMetrics>>,
    /// The request body's activity, when it may still be streaming.
    pub activity: Option<Arc<Activity>>,
    /// The access line (and the taps' line), when someone watches: written at the end.
    pub answered: Option<Box<Answered>>,
}

impl Guards {
    fn finish(&mut self, complete: bool) {
        if let Some(mut answered) = self.answered.take() {
            answered.complete = complete;
            if let Some(activity) = &self.activity {
                answered.bytes_in = activity.bytes_read();
            }
            answered.write();
        }
        self.in_flight.take();
        self.permit.take();
        if let Some(lease) = self.lease.take() {
            if complete {
                upstream::release(lease);
            }
        }
        if let Some(record) = self.record.take() {
            if complete {
                record.finish();
            }
        }
    }
}

/// A response body on its way back to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// Streamed from the upstream.
    Upstream {
        /// The upstream's body.
        body: Incoming,
        /// Released when the body ends or is dropped.
        guards: Guards,
        /// `limits.idle_timeout`, once the handler set it.
        idle: IdleWatch,
    },
    /// meshlet's own answer (errors, degrade answers): the shared [`AnswerBody`].
    Answer(AnswerBody),
}

impl ResponseBody {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Answer(AnswerBody::full(bytes))
    }
    /// No body.
    pub fn empty() -> Self {
        ResponseBody::Answer(AnswerBody::empty())
    }

    /// Hands over the access line: written when a streamed body is done, at once for
    /// meshlet's own answer (held whole: its length is what will be sent).
    pub fn written_when_done(&mut self, mut answered: Box<Answered>) {
        match self {
            ResponseBody::Upstream { guards, .. } => guards.answered = Some(answered),
            ResponseBody::Answer(answer) => {
                answered.bytes_out = answer.size_hint().exact().unwrap_or(0);
                answered.write();
            }
        }
    }

    /// Cuts a streamed body after `limit` without a byte either way.
    pub fn set_idle_timeout(&mut self, limit: Duration) {
        if let ResponseBody::Upstream { idle, .. } = self {
            idle.limit = Some(limit);
        }
    }
}

impl From<AnswerBody> for ResponseBody {
    fn from(answer: AnswerBody) -> Self {
        ResponseBody::Answer(answer)
    }
}

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream's connection failed mid-body.
    #[error(transparent)]
    Upstream(#[from] hyper::Error),
    /// Nothing moved for `limits.idle_timeout`.
    #[error("no bytes either way for {0:?} (limits.idle_timeout)")]
    Idle(Duration),
}

/// The idle timer of a streamed response. Lazily armed: only a body that makes the client
/// wait allocates a timer, and a frame only sets a flag (the deadline moves on the next wait).
#[derive(Debug, Default)]
pub struct IdleWatch {
    limit: Option<Duration>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    moved: bool,
}

impl IdleWatch {
    /// Called when the upstream body is pending: whether the limit has passed, with the
    /// waker registered for when it will.
    fn expired(&mut self, activity: Option<&Activity>, cx: &mut Context<'_>) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        let timer = match &mut self.timer {
            Some(timer) => {
                if std::mem::take(&mut self.moved) {
                    timer.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(limit))),
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            // The response was quiet for `limit`; the request may not have been.
            let quiet_ms =
                activity.map_or(u64::MAX, |a| clock::now_ms().saturating_sub(a.last_ms()));
            let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
            if quiet_ms >= limit_ms {
                return true;
            }
            let left = Duration::from_millis(limit_ms - quiet_ms);
            timer.as_mut().reset(tokio::time::Instant::now() + left);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // An empty body (204, HEAD, content-length: 0) may never be polled: its connection
        // is still reusable. A body dropped half-read is not: its connection closes.
        if let ResponseBody::Upstream { body, guards, .. } = self {
            let complete = body.is_end_stream();
            guards.finish(complete);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Upstream { body, guards, idle } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => guards.finish(true),
                    Poll::Ready(Some(Err(_))) => guards.finish(false),
                    Poll::Ready(Some(Ok(frame))) => {
                        idle.moved = true;
                        if let Some(data) = frame.data_ref() {
                            if let Some(answered) = guards.answered.as_mut() {
                                answered.bytes_out += data.len() as u64;
                            }
                            if let Some(record) = guards.record.as_mut() {
                                if !record.push(data) {
                                    guards.record = None;
                                }
                            }
                        }
                        if let Some(trailers) = frame.trailers_ref() {
                            if let (Some(metrics), Some(status)) =
                                (guards.grpc.take(), grpc::status(trailers))
                            {
                                metrics.count_grpc(status);
                            }
                        }
                        if body.is_end_stream() {
                            guards.finish(true);
                        }
                    }
                    Poll::Pending => {
                        if idle.expired(guards.activity.as_deref(), cx) {
                            let limit = idle.limit.unwrap_or_default();
                            tracing::debug!(?limit, "streamed response idle; closing it");
                            guards.finish(false);
                            return Poll::Ready(Some(Err(BodyError::Idle(limit))));
                        }
                    }
                }
                polled.map(|frame| frame.map(|r| r.map_err(BodyError::from)))
            }
            ResponseBody::Answer(answer) => Pin::new(answer)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Answer(answer) => answer.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Answer(answer) => answer.size_hint(),
        }
    }
}
