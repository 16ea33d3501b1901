//! Body types of the proxy: bodies stream through untouched; only meshlet's own answers
//! (errors, later degrade answers) and replayable request bodies are held in memory.
//! Plain enums rather than boxed trait objects: no allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::upstream::{self, Http1Lease};
use crate::policy::balance::InFlight;

/// A request body on its way upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// Streamed from the client as it arrives.
    Stream(Incoming),
    /// Held whole (small enough to replay on a retry).
    Full(Option<Bytes>),
}

impl RequestBody {
    /// An empty body.
    pub fn empty() -> Self {
        RequestBody::Full(None)
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
            RequestBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// A response body on its way back to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// Streamed from the upstream; the endpoint counts as busy until it ends.
    Upstream {
        /// The upstream's body.
        body: Incoming,
        /// Released when the body is done or dropped.
        in_flight: Option<InFlight>,
        /// The HTTP/1.1 connection, back to the pool once the body has been read whole.
        lease: Option<Http1Lease>,
    },
    /// meshlet's own answer.
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

fn finish(in_flight: &mut Option<InFlight>, lease: &mut Option<Http1Lease>, reusable: bool) {
    in_flight.take();
    if let Some(lease) = lease.take() {
        if reusable {
            upstream::release(lease);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // An empty body (204, HEAD, content-length: 0) may never be polled: its connection
        // is still reusable. A body dropped half-read is not: its connection closes.
        if let ResponseBody::Upstream {
            body,
            in_flight,
            lease,
        } = self
        {
            let done = body.is_end_stream();
            finish(in_flight, lease, done);
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
            ResponseBody::Upstream {
                body,
                in_flight,
                lease,
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => finish(in_flight, lease, true),
                    Poll::Ready(Some(Err(_))) => finish(in_flight, lease, false),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                        finish(in_flight, lease, true)
                    }
                    _ => {}
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
