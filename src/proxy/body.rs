//! Body types of the proxy: bodies stream through untouched; only meshlet's own answers
//! (errors, degrade answers) and replayable request bodies are held in memory. Plain enums
//! rather than boxed trait objects: no allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::forward::TeeReader;
use super::upstream::{self, Http1Lease};
use crate::policy::balance::InFlight;
use crate::policy::stale::StaleRecorder;
use crate::policy::Permit;

/// A request body on its way upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// Streamed from the client as it arrives (sent once).
    Stream(Incoming),
    /// Held whole: small enough to be sent again on a retry.
    Replay {
        /// The bytes, taken on first poll.
        data: Option<Bytes>,
        /// Request trailers, if the client sent any.
        trailers: Option<HeaderMap>,
    },
    /// Streamed from the client while a copy is kept for a retry (see [`super::forward::Tee`]).
    Teed(TeeReader),
}

impl RequestBody {
    /// A replayable copy of `data`.
    pub fn replay(data: &Bytes, trailers: &Option<HeaderMap>) -> Self {
        RequestBody::Replay {
            data: (!data.is_empty()).then(|| data.clone()),
            trailers: trailers.clone(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Stream(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Replay { data, trailers } => Poll::Ready(
                data.take()
                    .map(|d| Ok(Frame::data(d)))
                    .or_else(|| trailers.take().map(|t| Ok(Frame::trailers(t)))),
            ),
            RequestBody::Teed(reader) => reader.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Replay { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Teed(reader) => reader.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Replay { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Teed(reader) => reader.size_hint(),
        }
    }
}

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
    pub grpc: Option<std::sync::Arc<crate::telemetry::metrics::DestinationMetrics>>,
}

impl Guards {
    fn finish(&mut self, complete: bool) {
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
    },
    /// meshlet's own answer (errors, degrade answers).
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }
    /// No body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // An empty body (204, HEAD, content-length: 0) may never be polled: its connection
        // is still reusable. A body dropped half-read is not: its connection closes.
        if let ResponseBody::Upstream { body, guards } = self {
            let complete = body.is_end_stream();
            guards.finish(complete);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Upstream { body, guards } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => guards.finish(true),
                    Poll::Ready(Some(Err(_))) => guards.finish(false),
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(record)) =
                            (frame.data_ref(), guards.record.as_mut())
                        {
                            if !record.push(data) {
                                guards.record = None;
                            }
                        }
                        if let Some(trailers) = frame.trailers_ref() {
                            if let (Some(metrics), Some(status)) = (
                                guards.grpc.take(),
                                crate::policy::retry::grpc_status(trailers),
                            ) {
                                metrics.count_grpc(status);
                            }
                        }
                        if body.is_end_stream() {
                            guards.finish(true);
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
