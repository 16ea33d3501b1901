//! Request bodies on their way upstream. A body streams as it arrives; one that may be
//! retried is read through a [`Tee`], which keeps the bytes read so far (up to the replay
//! limit) so a retry can send them again and go on reading the client. [`Payload`] is the
//! body across the attempts of one call.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::policy::clock;

/// A request body on its way upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// Streamed from the client as it arrives (sent once).
    Stream {
        /// The client's body.
        body: Incoming,
        /// Noted on every chunk when the body has no declared length (it may stream on).
        activity: Option<Arc<Activity>>,
        /// Bytes this attempt sent, counted only with an `activity` to note them in.
        sent: u64,
    },
    /// Held whole: small enough to be sent again on a retry.
    Replay {
        /// The bytes, taken on first poll.
        data: Option<Bytes>,
        /// Request trailers, if the client sent any.
        trailers: Option<HeaderMap>,
    },
    /// Streamed from the client while a copy is kept for a retry (see [`Tee`]).
    Teed {
        /// This attempt's view of the shared body.
        reader: TeeReader,
        /// As for `Stream`.
        activity: Option<Arc<Activity>>,
        /// As for `Stream`: this attempt's bytes, replayed ones included.
        sent: u64,
    },
}

/// A request body with no declared length, as it streams: when bytes last moved (read by
/// the response's idle timer) and how many were read from the client (the access line's
/// `bytes_in`; a body with a length is counted by its `content-length`).
#[derive(Debug, Default)]
pub struct Activity {
    last_ms: AtomicU64,
    read: AtomicU64,
}

impl Activity {
    /// One for a body that may go on streaming after the response headers: no declared
    /// length and not already ended (a request with a length completes on its own).
    pub fn for_body(body: &Incoming) -> Option<Arc<Activity>> {
        (!body.is_end_stream() && body.size_hint().exact().is_none()).then(|| {
            Arc::new(Activity {
                last_ms: AtomicU64::new(clock::now_ms()),
                read: AtomicU64::new(0),
            })
        })
    }

    /// A chunk moved; the attempt sending it has sent `sent` bytes so far. Each attempt
    /// sends the client's bytes from the start (a retry replays them first), so the most
    /// any attempt sent is what was read from the client.
    fn touch(&self, sent: u64) {
        self.last_ms.store(clock::now_ms(), Ordering::Relaxed);
        self.read.fetch_max(sent, Ordering::Relaxed);
    }

    /// Unix ms of the last chunk (or of the body's start).
    pub fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }

    /// Bytes read from the client so far.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let (polled, activity, sent) = match self.get_mut() {
            RequestBody::Stream {
                body,
                activity,
                sent,
            } => (Pin::new(body).poll_frame(cx), activity, sent),
            RequestBody::Replay { data, trailers } => {
                return Poll::Ready(
                    data.take()
                        .map(|d| Ok(Frame::data(d)))
                        .or_else(|| trailers.take().map(|t| Ok(Frame::trailers(t)))),
                )
            }
            RequestBody::Teed {
                reader,
                activity,
                sent,
            } => (reader.poll_frame(cx), activity, sent),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(activity)) = (&polled, activity) {
            *sent += frame.data_ref().map_or(0, |d| d.len() as u64);
            activity.touch(*sent);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream { body, .. } => body.is_end_stream(),
            RequestBody::Replay { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Teed { reader, .. } => reader.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream { body, .. } => body.size_hint(),
            RequestBody::Replay { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Teed { reader, .. } => reader.size_hint(),
        }
    }
}

/// The request body across attempts. A body that may be retried is read through a
/// [`Tee`]: each attempt streams it as it arrives (nothing waits for the whole body, so a
/// streaming gRPC call or a slow upload is never held back) while the bytes read so far are
/// kept, up to the replay limit. A retry replays what was read, then goes on reading the
/// client: it works even when the upstream answered before reading the whole request.
pub struct Payload {
    kind: PayloadKind,
    /// Shared with the response's idle timer while the body may still stream.
    activity: Option<Arc<Activity>>,
}

enum PayloadKind {
    /// No body at all (a GET): every attempt sends the same nothing, no copy needed.
    Empty,
    /// Sent at most once (`None` after it was sent).
    Once(Option<Incoming>),
    /// Replayable while the copy of what was read stays within the limit.
    Teed(Arc<Tee>),
}

impl Payload {
    /// `body`, kept for a retry when `replay_limit` is non-zero.
    pub fn new(body: Incoming, replay_limit: usize) -> Payload {
        let activity = Activity::for_body(&body);
        let kind = if body.is_end_stream() {
            PayloadKind::Empty
        } else if replay_limit == 0 {
            PayloadKind::Once(Some(body))
        } else {
            PayloadKind::Teed(Tee::new(body, replay_limit))
        };
        Payload { kind, activity }
    }

    /// The body's activity, shared with the response's idle timer while it may stream.
    pub fn activity(&self) -> Option<Arc<Activity>> {
        self.activity.clone()
    }

    /// Whether a body can still be sent.
    pub fn available(&self) -> bool {
        match &self.kind {
            PayloadKind::Empty => true,
            PayloadKind::Once(body) => body.is_some(),
            PayloadKind::Teed(tee) => tee.replayable(),
        }
    }

    /// Whether it can be sent again after being sent.
    pub fn is_replayable(&self) -> bool {
        match &self.kind {
            PayloadKind::Empty => true,
            PayloadKind::Once(_) => false,
            PayloadKind::Teed(tee) => tee.replayable(),
        }
    }

    /// The body for the next attempt, or `None` when it cannot be sent again.
    pub fn take(&mut self) -> Option<RequestBody> {
        let activity = self.activity.clone();
        match &mut self.kind {
            PayloadKind::Empty => Some(RequestBody::Replay {
                data: None,
                trailers: None,
            }),
            PayloadKind::Once(body) => body.take().map(|body| RequestBody::Stream {
                body,
                activity,
                sent: 0,
            }),
            PayloadKind::Teed(tee) => Tee::attempt(tee).map(|reader| RequestBody::Teed {
                reader,
                activity,
                sent: 0,
            }),
        }
    }
}

/// A client's request body shared by the attempts, with the bytes read so far.
#[derive(Debug)]
pub struct Tee {
    state: std::sync::Mutex<TeeState>,
    limit: usize,
    exact_len: Option<u64>,
}

#[derive(Debug)]
struct TeeState {
    source: Incoming,
    chunks: Vec<Bytes>,
    size: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    overflow: bool,
    /// The attempt allowed to read; an abandoned attempt's body stops at once.
    generation: u64,
}

/// One attempt's view of a [`Tee`].
#[derive(Debug)]
pub struct TeeReader {
    tee: Arc<Tee>,
    generation: u64,
    next_chunk: usize,
    trailers_sent: bool,
}

impl Tee {
    fn new(source: Incoming, limit: usize) -> Arc<Tee> {
        let hint = source.size_hint();
        Arc::new(Tee {
            exact_len: hint.exact(),
            state: std::sync::Mutex::new(TeeState {
                source,
                chunks: Vec::new(),
                size: 0,
                trailers: None,
                ended: false,
                overflow: false,
                generation: 0,
            }),
            limit,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TeeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replayable(&self) -> bool {
        !self.lock().overflow
    }

    /// A reader for the next attempt, or `None` when what was read no longer fits.
    fn attempt(tee: &Arc<Tee>) -> Option<TeeReader> {
        let generation = {
            let mut s = tee.lock();
            if s.overflow {
                return None;
            }
            s.generation += 1;
            s.generation
        };
        Some(TeeReader {
            tee: tee.clone(),
            generation,
            next_chunk: 0,
            trailers_sent: false,
        })
    }
}

impl TeeReader {
    /// The next frame: replayed from the copy, else read from the client and kept.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let tee = self.tee.clone();
        let mut s = tee.lock();
        if s.generation != self.generation {
            return Poll::Ready(None);
        }
        if !s.overflow && self.next_chunk < s.chunks.len() {
            self.next_chunk += 1;
            return Poll::Ready(Some(Ok(Frame::data(s.chunks[self.next_chunk - 1].clone()))));
        }
        if s.ended {
            if self.trailers_sent {
                return Poll::Ready(None);
            }
            self.trailers_sent = true;
            return Poll::Ready(s.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let polled = Pin::new(&mut s.source).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    s.size += data.len();
                    if s.overflow || s.size > self.tee.limit {
                        s.overflow = true;
                        s.chunks = Vec::new();
                    } else {
                        s.chunks.push(data);
                        self.next_chunk = s.chunks.len();
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    s.trailers = Some(trailers.clone());
                    s.ended = true;
                    self.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                s.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    /// Whether nothing is left for this attempt.
    pub fn is_end_stream(&self) -> bool {
        let s = self.tee.lock();
        let replayed = s.overflow || self.next_chunk >= s.chunks.len();
        replayed
            && (s.ended || s.source.is_end_stream())
            && (self.trailers_sent || s.trailers.is_none())
    }

    /// The client's declared length, when it gave one (kept so `content-length` survives).
    pub fn size_hint(&self) -> SizeHint {
        match self.tee.exact_len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
