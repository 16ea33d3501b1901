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

/// A body meshlet wrote itself: held whole, sent in one frame.
#[derive(Debug, Default)]
pub struct AnswerBody(Option<Bytes>);

impl AnswerBody {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        AnswerBody(Some(bytes.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        AnswerBody(None)
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |d| d.len() as u64))
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
