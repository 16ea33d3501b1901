//! One outbound call through the policy stack of its destination, in the order of docs/architecture.md
//! and docs/policy.md ("The stack, in order"):
//!
//! 0. **fault ▶ rate limit**: an injected abort is answered at once and an injected delay
//!    is waited outside the `timeout` (Envoy's fault filter sits before its router); then
//!    the destination's token bucket (`rate_limited`). Neither is seen by the breaker.
//! 1. **degrade ▶ breaker**: an open breaker answers at once (degrade answer or
//!    `circuit_open`), before any work; `read_only` still lets reads through.
//! 2. **concurrency**: `max_in_flight` caps the calls in flight (`overloaded`).
//! 3. **total timeout**: one budget for everything up to response headers, retries included.
//! 4. **retry**: replayable requests are retried on the configured failures, with jittered
//!    backoff, within the retry budget, preferring another endpoint each time.
//! 5. **per-try timeout ▶ balance ▶ forward**: one attempt ([`super::forward::attempt`]).
//!
//! After the call the service breaker records the outcome, and a failed call falls back
//! to a `stale` or `static` answer when the destination has one.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AGE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::destination::Destination;
use super::error::ProxyError;
use super::forward::{self, Template, Upstreamed};
use super::request_body::Payload;
use super::response_body::{Guards, ResponseBody};
use crate::config::{Degrade, StaticAnswer};
use crate::policy::balance::{self, Endpoint};
use crate::policy::breaker::{Admission, State, Transition};
use crate::policy::retry::{self, Failure};
use crate::policy::stale::{self, StaleRecorder};
use crate::policy::Permit;
use crate::policy::{clock, fault, rate_limit};
use crate::wire::grpc;

/// Response header naming how a degraded answer was made.
pub const X_MESH_DEGRADED: &str = "x-mesh-degraded";

/// What became of a call: the response (or error) and how many attempts it took.
pub struct Outcome {
    /// The answer.
    pub result: Result<Response<ResponseBody>, ProxyError>,
    /// Attempts made (0 when answered before any).
    pub attempts: u32,
    /// An injected delay held the call: its answer carries `x-mesh-fault: delay`.
    pub fault_delayed: bool,
    /// The endpoint of the last attempt (the access line's `upstream`).
    pub upstream: Option<Arc<Endpoint>>,
}

/// Runs `req` through `dest`'s policy stack; `strip` bytes of the path are removed first.
pub async fn call(
    dest: &Destination,
    req: Request<Incoming>,
    strip: usize,
    replay_limit: usize,
) -> Outcome {
    let policy = &dest.policy;
    let state = &dest.state;
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let grpc = grpc::is_grpc(req.headers());
    // Only `stale` destinations pay for the header checks. A request with credentials gets
    // no key: its answer is never kept, and no one else's copy is served to it.
    let stale_key = match policy.degrade {
        Degrade::Stale(_) if req.method() == Method::GET && !stale::is_personal(req.headers()) => {
            req.uri().path_and_query().map(|p| p.as_str().to_owned())
        }
        _ => None,
    };

    // 0. fault ▶ rate limit. Unset, each costs one branch.
    let mut fault_delayed = false;
    if let Some(fault) = &policy.fault {
        let injected = fault::roll(fault, fault::percent_draw);
        if let Some(delay) = injected.delay {
            dest.metrics.faults_delayed.inc();
            // Boxed: a rare wait that would otherwise enlarge every call's future.
            Box::pin(tokio::time::sleep(delay)).await;
            fault_delayed = true;
        }
        if let Some(status) = injected.abort {
            dest.metrics.faults_aborted.inc();
            return Outcome {
                result: Err(ProxyError::FaultInjected(status)),
                attempts: 0,
                fault_delayed,
                upstream: None,
            };
        }
    }
    if let Some(limiter) = &dest.rate_limit {
        if let Err(wait) = limiter.take(clock::now_ns()) {
            dest.metrics.rate_limited.inc();
            return Outcome {
                result: Err(ProxyError::RateLimited(rate_limit::retry_after_secs(wait))),
                attempts: 0,
                fault_delayed,
                upstream: None,
            };
        }
    }

    // 1. degrade ▶ breaker
    let (admission, transition) = state.breaker.allow(&policy.breaker);
    record_breaker(dest, transition.map(|t| t.0));
    if let Admission::Rejected { retry_after_ms } = admission {
        let reads_go_through = matches!(policy.degrade, Degrade::ReadOnly) && safe;
        if !reads_go_through {
            let result = open_answer(dest, req.method(), stale_key.as_deref(), retry_after_ms);
            return Outcome {
                result,
                attempts: 0,
                fault_delayed,
                upstream: None,
            };
        }
    }

    // 2. concurrency
    let Some(permit) = state.acquire(policy.max_in_flight) else {
        return Outcome {
            result: Err(ProxyError::Overloaded),
            attempts: 0,
            fault_delayed,
            upstream: None,
        };
    };
    state.budget.deposit();

    // 3. total timeout ▶ 4. retries
    let mut attempts = 0;
    let mut upstream = None;
    let sent_at = Instant::now();
    // A gRPC client's own deadline caps meshlet's budget.
    let budget = match grpc::timeout(req.headers()) {
        Some(deadline) => deadline.min(policy.timeout.get()),
        None => policy.timeout.get(),
    };
    let result = {
        // The retries and their deadline are pinned where they are made: handing the
        // retries to `tokio::time::timeout` moved the whole future (measured: +1%
        // instructions per request when that call was not inlined).
        let retrying = retries(dest, req, strip, replay_limit, &mut attempts, &mut upstream);
        let deadline = tokio::time::sleep(budget);
        tokio::pin!(retrying, deadline);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(answered) = retrying.as_mut().poll(cx) {
                return Poll::Ready(answered);
            }
            deadline
                .as_mut()
                .poll(cx)
                .map(|()| Err(ProxyError::Timeout(budget)))
        })
        .await
    };

    if !record_verdict(dest, &result) {
        if let Some(answer) = fallback(dest, stale_key.as_deref()) {
            return Outcome {
                result: Ok(answer),
                attempts,
                fault_delayed,
                upstream,
            };
        }
    }
    let result = result.map(|up| answer(dest, up, permit, stale_key, grpc, sent_at));
    Outcome {
        result,
        attempts,
        fault_delayed,
        upstream,
    }
}

/// Tells the service breaker how the call went; whether it succeeded. No endpoint to try
/// says nothing about the service's health: the breaker is left alone.
fn record_verdict(dest: &Destination, result: &Result<Upstreamed, ProxyError>) -> bool {
    let verdict = match result {
        Ok(up) => Some(
            !up.response.status().is_server_error()
                && !retry::grpc_failure(up.response.headers()).is_some_and(Failure::trips_breaker),
        ),
        Err(ProxyError::NoEndpoints) => None,
        Err(_) => Some(false),
    };
    if let Some(ok) = verdict {
        let transition = dest.state.breaker.record(ok, &dest.policy.breaker);
        record_breaker(dest, transition.map(|t| t.0));
    }
    verdict == Some(true)
}

/// The upstream's answer, holding until its body ends the concurrency slot, a stale-cache
/// recording (a 200 to a GET without credentials under `degrade: stale`, when the answer
/// is meant for anyone: [`stale::is_shareable`]) and, for gRPC, the metrics its trailers'
/// `grpc-status` is counted in.
fn answer(
    dest: &Destination,
    up: Upstreamed,
    permit: Permit,
    stale_key: Option<String>,
    grpc: bool,
    sent_at: Instant,
) -> Response<ResponseBody> {
    let policy = &dest.policy;
    let record = match (stale_key, &policy.degrade) {
        (Some(key), Degrade::Stale(_))
            if up.response.status() == StatusCode::OK
                && stale::is_shareable(up.response.headers()) =>
        {
            let mut headers = up.response.headers().clone();
            crate::proxy::headers::strip_hop_by_hop(&mut headers);
            Some(Box::new(StaleRecorder::new(
                dest.state.clone(),
                key,
                headers,
                policy.stale_entries as usize,
                policy.stale_bytes.as_usize(),
            )))
        }
        _ => None,
    };
    // A gRPC status arrives in the trailers, or in the headers of a trailers-only answer.
    let grpc_metrics = match grpc.then(|| grpc::status(up.response.headers())) {
        Some(Some(status)) => {
            dest.metrics.count_grpc(status);
            None
        }
        Some(None) => Some(dest.metrics.clone()),
        None => None,
    };
    let guards = Guards {
        permit: Some(permit),
        record,
        grpc: grpc_metrics,
        ..Guards::default()
    };
    up.into_response(guards, sent_at)
}

/// The retry loop: attempts until success, a non-retryable failure, the attempt limit or
/// an empty budget. Returns the last upstream response as is, or the last error; `upstream`
/// is left holding the endpoint of the last attempt.
async fn retries(
    dest: &Destination,
    req: Request<Incoming>,
    strip: usize,
    replay_limit: usize,
    attempts: &mut u32,
    upstream: &mut Option<Arc<Endpoint>>,
) -> Result<Upstreamed, ProxyError> {
    let policy = &dest.policy.retry;
    let (parts, body) = req.into_parts();
    let replayable = retry::is_replayable(&parts.method, &parts.headers, policy);
    let mut template = Template::new(parts, dest, strip)?;
    let replay_limit = if replayable && policy.attempts > 1 {
        replay_limit
    } else {
        0
    };
    let mut payload = Payload::new(body, replay_limit);
    let per_try = Some(policy.per_try_timeout.get()).filter(|d| !d.is_zero());
    let mut avoid = None;
    loop {
        // Kept where the caller reads it: the picked endpoint moves there, nothing is copied.
        let endpoint: &Arc<Endpoint> = upstream.insert(
            balance::pick(&dest.endpoints, avoid)
                .ok_or(ProxyError::NoEndpoints)?
                .clone(),
        );
        *attempts += 1;
        // Moves an ejected endpoint whose time is up to half open, so its outcome counts.
        let _ = endpoint.breaker.allow(&dest.policy.breaker);
        let more_possible = *attempts < policy.attempts && payload.is_replayable();
        let result = forward::attempt(
            dest,
            endpoint,
            &mut template,
            &mut payload,
            more_possible,
            per_try,
        )
        .await;
        let failure = match &result {
            Ok(up) => failure_of(&up.response, policy),
            Err(e) => Some(e.failure()),
        };
        let healthy = !failure.is_some_and(Failure::trips_breaker);
        if let Some(Transition(State::Open)) =
            endpoint.breaker.record(healthy, &dest.policy.breaker)
        {
            dest.metrics.endpoint_ejected();
        }
        let Some(failure) = failure else {
            return result.map_err(forward::AttemptError::into_proxy_error);
        };
        let retryable = *attempts < policy.attempts
            && payload.available()
            && retry::should_retry(policy, failure, replayable && payload.is_replayable());
        if !retryable {
            return result.map_err(forward::AttemptError::into_proxy_error);
        }
        if !dest
            .state
            .budget
            .try_withdraw(policy.budget_percent, policy.budget_per_second)
        {
            dest.metrics.budget_exhausted.inc();
            return result.map_err(forward::AttemptError::into_proxy_error);
        }
        let pause = retry::backoff(
            policy,
            *attempts,
            result.as_ref().ok().map(|u| u.response.headers()),
        );
        // The copy of a streamed body may still be completing (the upstream can answer
        // before it read the whole request): decide after the pause whether it is whole.
        tokio::time::sleep(pause).await;
        if !payload.available() {
            return result.map_err(forward::AttemptError::into_proxy_error);
        }
        drop(result);
        dest.metrics.count_retry(failure.reason());
        avoid = Some(endpoint.key);
    }
}

/// Answers that count as a failed attempt: 5xx, 429, any status `retry.on` names, and a
/// trailers-only gRPC error status.
fn failure_of<B>(response: &Response<B>, policy: &crate::config::RetryPolicy) -> Option<Failure> {
    let status = response.status();
    let named = policy
        .on
        .contains(&crate::config::RetryOn::Status(status.as_u16()));
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || named {
        return Some(Failure::Status(status));
    }
    retry::grpc_failure(response.headers())
}

/// The answer while the breaker is open: stale, static, read-only refusal, or `circuit_open`.
fn open_answer(
    dest: &Destination,
    method: &Method,
    stale_key: Option<&str>,
    retry_after_ms: u64,
) -> Result<Response<ResponseBody>, ProxyError> {
    if let Some(answer) = fallback(dest, stale_key) {
        return Ok(answer);
    }
    if matches!(dest.policy.degrade, Degrade::ReadOnly) {
        dest.metrics.count_degraded("read_only");
        return Err(ProxyError::ReadOnly(method.clone()));
    }
    Err(ProxyError::CircuitOpen(
        retry_after_ms.div_ceil(1000).max(1),
    ))
}

/// A `stale` or `static` answer, when the destination has one for this request.
fn fallback(dest: &Destination, stale_key: Option<&str>) -> Option<Response<ResponseBody>> {
    match &dest.policy.degrade {
        Degrade::Stale(max_age) => {
            let (entry, age) = dest.state.stale.get(stale_key?, max_age.get())?;
            dest.metrics.count_degraded("stale");
            let mut resp = Response::new(ResponseBody::full(entry.body.clone()));
            *resp.headers_mut() = entry.headers.clone();
            resp.headers_mut()
                .insert(X_MESH_DEGRADED, HeaderValue::from_static("stale"));
            resp.headers_mut()
                .insert(AGE, HeaderValue::from(age.as_secs()));
            Some(resp)
        }
        Degrade::Static(answer) => {
            dest.metrics.count_degraded("static");
            Some(static_answer(answer))
        }
        Degrade::FailFast | Degrade::ReadOnly => None,
    }
}

fn static_answer(answer: &StaticAnswer) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::from(answer.body.clone())));
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    for (name, value) in &answer.headers {
        // Validated when the config was loaded.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
    resp.headers_mut()
        .insert(X_MESH_DEGRADED, HeaderValue::from_static("static"));
    resp
}

/// Counts a service breaker's state change, if there was one.
fn record_breaker(dest: &Destination, to: Option<State>) {
    if let Some(to) = to {
        dest.metrics.breaker_changed(to.as_str(), to.gauge());
    }
}
