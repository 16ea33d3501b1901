//! meshlet's own answers: a body held whole in memory ([`AnswerBody`]), JSON responses, and
//! the one error answer of docs/errors.md (`{"error","message","service","request_id"}` with
//! an `x-mesh-error` header) that the proxy, the local API, events and the hub all give.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

/// Header naming the error code on every response meshlet makes itself.
pub const X_MESH_ERROR: &str = "x-mesh-error";

/// A body meshlet wrote itself: held whole and sent in one frame, or, for the local API's
/// endless answers (`GET /v1/tap`), streamed by the feature that writes it.
#[derive(Default)]
pub struct AnswerBody(Content);

/// A stream meshlet writes itself, frame by frame, until it ends.
pub type AnswerStream = Pin<Box<dyn Body<Data = Bytes, Error = Infallible> + Send>>;

enum Content {
    /// Held whole (`None` once sent, or when there is no body).
    Whole(Option<Bytes>),
    /// Written as it goes.
    Streamed(AnswerStream),
}

impl Default for Content {
    fn default() -> Self {
        Content::Whole(None)
    }
}

impl std::fmt::Debug for AnswerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Content::Whole(bytes) => f.debug_tuple("AnswerBody").field(bytes).finish(),
            Content::Streamed(_) => f.write_str("AnswerBody(streamed)"),
        }
    }
}

impl AnswerBody {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        AnswerBody(Content::Whole(Some(bytes.into())))
    }

    /// No body.
    pub fn empty() -> Self {
        AnswerBody(Content::Whole(None))
    }

    /// A body written by `stream` as it goes (the local API's streams; never the proxy's).
    pub fn streamed(stream: impl Body<Data = Bytes, Error = Infallible> + Send + 'static) -> Self {
        AnswerBody(Content::Streamed(Box::pin(stream)))
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            Content::Whole(bytes) => Poll::Ready(bytes.take().map(|d| Ok(Frame::data(d)))),
            Content::Streamed(stream) => stream.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Content::Whole(bytes) => bytes.is_none(),
            Content::Streamed(stream) => stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Content::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |d| d.len() as u64))
            }
            Content::Streamed(stream) => stream.size_hint(),
        }
    }
}

/// A JSON response (one line, newline-terminated).
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<AnswerBody> {
    let mut body = value.to_string().into_bytes();
    body.push(b'\n');
    respond(status, "application/json", Bytes::from(body))
}

/// A response with a body and content type.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<AnswerBody> {
    let mut resp = Response::new(AnswerBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// 404 for any path (or method) a router does not serve.
pub fn not_found<B>(req: &Request<B>) -> Response<AnswerBody> {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not_found", "message": format!("no {} {}", req.method(), req.uri().path())}),
    )
}

/// Whether `req` is a GET (or HEAD) of exactly `path`.
pub fn is_get<B>(req: &Request<B>, path: &str) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD) && req.uri().path() == path
}

/// The docs/errors.md error answer every part of meshlet gives: a JSON body
/// `{"error","message","service","request_id"}` and an `x-mesh-error` header.
pub fn error_response(
    status: StatusCode,
    code: &'static str,
    message: &str,
    service: &str,
    request_id: &str,
) -> Response<AnswerBody> {
    let body = serde_json::json!({
        "error": code,
        "message": message,
        "service": service,
        "request_id": request_id,
    });
    let mut resp = json(status, &body);
    resp.headers_mut()
        .insert(X_MESH_ERROR, HeaderValue::from_static(code));
    resp
}
