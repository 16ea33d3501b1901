//! The last hop of both directions: pick an endpoint, rewrite the request for it, send it
//! on a pooled connection within the time budget, and hand the response back streaming.

use std::borrow::Cow;
use std::time::Duration;

use http::header::{HeaderValue, EXPECT, HOST};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::{RequestBody, ResponseBody};
use super::destination::Destination;
use super::error::ProxyError;
use super::headers::strip_hop_by_hop;
use super::upstream;
use crate::config::Protocol;
use crate::policy::balance::{self, Endpoint, InFlight};

/// Response header: time from sending upstream to its response headers, in ms.
pub const X_MESH_UPSTREAM_MS: &str = "x-mesh-upstream-ms";

/// Sends `req` to one endpoint of `dest`, waiting at most `budget` for response headers.
/// `strip` bytes of the path (a matched route prefix) are removed first.
pub async fn forward(
    dest: &Destination,
    req: Request<Incoming>,
    strip: usize,
    budget: Option<Duration>,
) -> Result<Response<ResponseBody>, ProxyError> {
    if dest.egress.as_ref().is_some_and(|e| e.tls) {
        return Err(ProxyError::UpstreamUnavailable(
            "https egress is not available in this build".to_owned(),
        ));
    }
    let endpoint = balance::pick(&dest.endpoints, None)
        .ok_or(ProxyError::NoEndpoints)?
        .clone();
    let upstream_req = prepare(req, dest, &endpoint, strip)?;
    let in_flight = InFlight::start(&endpoint);
    let sent_at = Instant::now();
    let send = upstream::send(&endpoint, upstream_req, dest.policy.connect_timeout.get());
    let result = match budget {
        Some(limit) => tokio::time::timeout(limit, send)
            .await
            .map_err(|_| ProxyError::Timeout(limit))?,
        None => send.await,
    };
    let (resp, lease) = result.map_err(|e| {
        if e.is_connect_failure() {
            dest.metrics.connect_errors.inc();
        }
        ProxyError::UpstreamUnavailable(e.to_string())
    })?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::default();
    let mut ms = itoa::Buffer::new();
    let elapsed = u64::try_from(sent_at.elapsed().as_millis()).unwrap_or(u64::MAX);
    if let Ok(v) = HeaderValue::from_str(ms.format(elapsed)) {
        parts.headers.insert(X_MESH_UPSTREAM_MS, v);
    }
    let body = ResponseBody::Upstream {
        body,
        in_flight: Some(in_flight),
        lease,
    };
    Ok(Response::from_parts(parts, body))
}

/// Rewrites the request for `endpoint`: origin-form target (or absolute for h2), the
/// stripped or egress-prefixed path, `Host` kept as the app sent it, hop-by-hop headers gone.
fn prepare(
    req: Request<Incoming>,
    dest: &Destination,
    endpoint: &Endpoint,
    strip: usize,
) -> Result<Request<RequestBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    if !parts.headers.contains_key(HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(HOST, v);
            }
        }
    }
    let original = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let base = dest.egress.as_ref().map_or("", |e| e.base_path.as_str());
    let path_and_query = match rewrite_path(original.as_str(), strip, base) {
        Cow::Borrowed(_) => original,
        Cow::Owned(p) => PathAndQuery::try_from(p).map_err(|_| {
            ProxyError::UpstreamUnavailable("request target could not be rewritten".to_owned())
        })?,
    };
    match endpoint.protocol {
        Protocol::Http1 => {
            parts.version = Version::HTTP_11;
            parts.uri = Uri::from(path_and_query);
        }
        Protocol::H2 => {
            parts.version = Version::HTTP_2;
            let authority = parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(endpoint.authority.as_str())
                .to_owned();
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| ProxyError::UpstreamUnavailable("invalid authority".to_owned()))?;
            // h2 carries the authority in :authority; a Host header beside it is redundant.
            parts.headers.remove(HOST);
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    // meshlet's server side already answered `100-continue`; upstream gets the body as is.
    parts.headers.remove(EXPECT);
    Ok(Request::from_parts(parts, RequestBody::Stream(body)))
}

/// `/inventory/items?x=1` with strip 11 → `/items?x=1`; with an egress base `/v2` → prefixed.
fn rewrite_path<'a>(path_and_query: &'a str, strip: usize, base: &str) -> Cow<'a, str> {
    if strip == 0 && base.is_empty() {
        return Cow::Borrowed(path_and_query);
    }
    let rest = path_and_query.get(strip..).unwrap_or("");
    let mut out = String::with_capacity(base.len() + rest.len() + 1);
    out.push_str(base);
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::rewrite_path;

    #[test]
    fn prefixes_are_stripped_and_bases_prepended() {
        assert_eq!(rewrite_path("/a/b?q=1", 0, ""), "/a/b?q=1");
        assert_eq!(rewrite_path("/inventory/items?x=1", 11, ""), "/items?x=1");
        assert_eq!(rewrite_path("/inventory/", 11, ""), "/");
        assert_eq!(rewrite_path("/inventory?x", 10, ""), "/?x");
        assert_eq!(rewrite_path("/forecast", 0, "/v2"), "/v2/forecast");
    }
}
