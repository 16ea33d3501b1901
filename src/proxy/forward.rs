//! One attempt on one endpoint: the request is kept as a [`Template`] (so a retry can build
//! it again for another endpoint) and its body as a [`Payload`] (replayable when it was small
//! enough to buffer); a connection is obtained *before* the body is touched, so a connect
//! failure can be retried for any method.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, EXPECT, HOST, UPGRADE, VIA};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::destination::Destination;
use super::error::ProxyError;
use super::headers::{strip_hop_by_hop, strip_response};
use super::request_body::{Activity, Payload, RequestBody};
use super::response_body::{Guards, IdleWatch, ResponseBody};
use super::upstream::{self, Http1Lease, UpstreamError};
use crate::config::Protocol;
use crate::policy::balance::{Endpoint, InFlight};
use crate::policy::retry::Failure;

/// Response header: time from sending upstream to its response headers, in ms.
pub static X_MESH_UPSTREAM_MS: HeaderName = HeaderName::from_static("x-mesh-upstream-ms");

/// A request rewritten for its destination, buildable once per attempt.
pub struct Template {
    method: Method,
    headers: HeaderMap,
    path_and_query: PathAndQuery,
    extensions: http::Extensions,
    /// `:protocol` of an h2 extended CONNECT, sent again on every attempt.
    connect_protocol: Option<hyper::ext::Protocol>,
}

impl Template {
    /// Rewrites the request head: the stripped or egress-prefixed path, `Host` kept as the
    /// app sent it (from the URI when absent), hop-by-hop headers and `Expect` gone.
    pub fn new(parts: Parts, dest: &Destination, strip: usize) -> Result<Template, ProxyError> {
        let upgrade = super::upgrade::requested(&parts.headers, parts.version);
        let Parts {
            method,
            uri,
            mut headers,
            mut extensions,
            ..
        } = parts;
        let connect_protocol = extensions.remove::<hyper::ext::Protocol>();
        if let Some(egress) = &dest.egress {
            // A partner API serves its own name, not the mesh name the app used.
            headers.insert(HOST, egress.host.clone());
        } else if !headers.contains_key(HOST) {
            if let Some(v) = uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(HOST, v);
            }
        }
        let original = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let base = dest.egress.as_ref().map_or("", |e| e.base_path.as_str());
        let path_and_query = match rewrite_path(original.as_str(), strip, base) {
            None => original,
            Some(p) => PathAndQuery::try_from(p).map_err(|_| {
                ProxyError::UpstreamUnavailable("request target could not be rewritten".to_owned())
            })?,
        };
        strip_hop_by_hop(&mut headers);
        if let Some(token) = upgrade {
            super::upgrade::restore(&mut headers, token);
        }
        // meshlet's server side already answered `100-continue`; upstream gets the body as is.
        headers.remove(EXPECT);
        headers.append(VIA, HeaderValue::from_static("1.1 meshlet"));
        Ok(Template {
            method,
            headers,
            path_and_query,
            extensions,
            connect_protocol,
        })
    }

    /// Builds the request for `endpoint`. With `keep` the head is cloned for a later
    /// attempt; without it the head moves (the common single-attempt case copies nothing).
    fn build(
        &mut self,
        endpoint: &Endpoint,
        body: RequestBody,
        keep: bool,
    ) -> Request<RequestBody> {
        let mut headers = if keep {
            self.headers.clone()
        } else {
            std::mem::take(&mut self.headers)
        };
        let (version, uri) = match endpoint.protocol {
            Protocol::Http1 => (Version::HTTP_11, Uri::from(self.path_and_query.clone())),
            Protocol::H2 => {
                let authority = headers
                    .remove(HOST)
                    .and_then(|h| h.to_str().ok().map(str::to_owned))
                    .unwrap_or_else(|| endpoint.authority.to_string());
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(authority)
                    .path_and_query(self.path_and_query.clone())
                    .build()
                    .unwrap_or_else(|_| Uri::from(self.path_and_query.clone()));
                (Version::HTTP_2, uri)
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        if !keep {
            *req.extensions_mut() = std::mem::take(&mut self.extensions);
        }
        if let Some(protocol) = &self.connect_protocol {
            req.extensions_mut().insert(protocol.clone());
        }
        req
    }
}

/// A response from the upstream with what must live as long as its body.
pub struct Upstreamed {
    /// The response (body still streaming).
    pub response: Response<Incoming>,
    lease: Option<Http1Lease>,
    in_flight: InFlight,
    activity: Option<Arc<Activity>>,
}

impl Upstreamed {
    /// Turns it into the response for the client (its head already cleaned by
    /// [`attempt`]): `x-mesh-upstream-ms` added, guards held by the body.
    pub fn into_response(self, mut guards: Guards, sent_at: Instant) -> Response<ResponseBody> {
        let (mut parts, body) = self.response.into_parts();
        let switching = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
        parts.version = Version::default();
        let elapsed = u64::try_from(sent_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        parts
            .headers
            .insert(X_MESH_UPSTREAM_MS.clone(), super::headers::number(elapsed));
        guards.in_flight = Some(self.in_flight);
        guards.activity = self.activity;
        // An upgraded connection belongs to the splice now, never to the pool.
        guards.lease = if switching { None } else { self.lease };
        let idle = IdleWatch::default();
        Response::from_parts(parts, ResponseBody::Upstream { body, guards, idle })
    }
}

/// Why an attempt failed.
#[derive(Debug)]
pub enum AttemptError {
    /// Connect, handshake or send failure.
    Upstream(UpstreamError),
    /// The per-try timeout ran out.
    Timeout(Duration),
    /// The body was already sent by an earlier attempt.
    BodyGone,
    /// The endpoint cannot carry this request (an extended CONNECT to an HTTP/1.1 endpoint).
    Unsupported(String),
}

impl AttemptError {
    /// The retry classification.
    pub fn failure(&self) -> Failure {
        match self {
            AttemptError::Upstream(e) if e.is_connect_failure() => Failure::Connect,
            AttemptError::Upstream(_) | AttemptError::BodyGone | AttemptError::Unsupported(_) => {
                Failure::Reset
            }
            AttemptError::Timeout(_) => Failure::Timeout,
        }
    }

    /// The error answered when no attempt is left.
    pub fn into_proxy_error(self) -> ProxyError {
        match self {
            AttemptError::Upstream(e) => ProxyError::UpstreamUnavailable(e.to_string()),
            AttemptError::Timeout(d) => ProxyError::Timeout(d),
            AttemptError::BodyGone => {
                ProxyError::UpstreamUnavailable("request body already sent".to_owned())
            }
            AttemptError::Unsupported(why) => ProxyError::UpstreamUnavailable(why),
        }
    }
}

/// One attempt on `endpoint`, within `per_try` when set. `keep` keeps the template whole
/// for another attempt.
pub async fn attempt(
    dest: &Destination,
    endpoint: &Arc<Endpoint>,
    template: &mut Template,
    payload: &mut Payload,
    keep: bool,
    per_try: Option<Duration>,
) -> Result<Upstreamed, AttemptError> {
    if template.connect_protocol.is_some() && endpoint.protocol == Protocol::Http1 {
        return Err(AttemptError::Unsupported(format!(
            "{} speaks HTTP/1.1; an h2 extended CONNECT needs an h2 endpoint",
            endpoint.authority
        )));
    }
    let in_flight = InFlight::start(endpoint);
    let connect_timeout = dest.policy.connect_timeout.get();
    let work = async {
        let conn = upstream::connect(endpoint, connect_timeout)
            .await
            .map_err(|e| {
                dest.metrics.connect_errors.inc();
                AttemptError::Upstream(e)
            })?;
        let body = payload.take().ok_or(AttemptError::BodyGone)?;
        let req = template.build(endpoint, body, keep);
        upstream::send(endpoint, conn, req, connect_timeout)
            .await
            .map_err(AttemptError::Upstream)
    };
    let (mut response, lease) = match per_try {
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .map_err(|_| AttemptError::Timeout(limit))??,
        None => work.await?,
    };
    clean_response(&mut response, dest.egress.is_none());
    Ok(Upstreamed {
        response,
        lease,
        in_flight,
        activity: payload.activity(),
    })
}

/// An upstream's response head as meshlet passes it on, before the rest of meshlet reads
/// it (the stale cache keeps what is left): hop-by-hop headers and the upstream's
/// `x-mesh-*` headers removed, `x-mesh-error` kept from a mesh service
/// (`keep_mesh_error`: its meshlet marks the errors it answered itself), `Upgrade` kept on
/// a `101`.
fn clean_response(response: &mut Response<Incoming>, keep_mesh_error: bool) {
    let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    let upgrade = switching.then(|| headers.get(UPGRADE).cloned()).flatten();
    strip_response(headers, keep_mesh_error);
    if let Some(token) = upgrade {
        super::upgrade::restore(headers, token);
    }
}

/// A single attempt with no policy: the inbound side toward the local app. Every
/// `x-mesh-*` header of the app's answer is dropped, `x-mesh-error` too: what a caller's
/// meshlet gets with `x-mesh-*` from this side, this meshlet said.
pub async fn once(
    dest: &Destination,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let endpoint = dest.endpoints.first().ok_or(ProxyError::NoEndpoints)?;
    let (parts, body) = req.into_parts();
    let mut template = Template::new(parts, dest, 0)?;
    let mut payload = Payload::new(body, 0);
    let sent_at = Instant::now();
    let mut up = attempt(dest, endpoint, &mut template, &mut payload, false, None)
        .await
        .map_err(AttemptError::into_proxy_error)?;
    up.response
        .headers_mut()
        .remove(&super::headers::X_MESH_ERROR);
    Ok(up.into_response(Guards::default(), sent_at))
}

/// `/inventory/items?x=1` with strip 11 → `/items?x=1`; with an egress base `/v2` →
/// prefixed. `None` when nothing changes.
fn rewrite_path(path_and_query: &str, strip: usize, base: &str) -> Option<String> {
    if strip == 0 && base.is_empty() {
        return None;
    }
    let rest = path_and_query.get(strip..).unwrap_or("");
    let mut out = String::with_capacity(base.len() + rest.len() + 1);
    out.push_str(base);
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::rewrite_path;

    #[test]
    fn prefixes_are_stripped_and_bases_prepended() {
        assert_eq!(rewrite_path("/a/b?q=1", 0, ""), None);
        assert_eq!(
            rewrite_path("/inventory/items?x=1", 11, "").unwrap(),
            "/items?x=1"
        );
        assert_eq!(rewrite_path("/inventory/", 11, "").unwrap(), "/");
        assert_eq!(rewrite_path("/inventory?x", 10, "").unwrap(), "/?x");
        assert_eq!(rewrite_path("/forecast", 0, "/v2").unwrap(), "/v2/forecast");
    }
}
