//! The routes of the two control-plane listeners: telemetry (`/metrics`, `/healthz/*`) and
//! the local API (`/v1/config`, `/v1/registry`, and the `/v1/events` and hub paths handed
//! to those features, or a `not_configured` answer when they are off).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::shared::Shared;
use crate::control::admin::{ResponseFuture, Router};
use crate::events::Events;
use crate::realtime::{self, Realtime};
use crate::wire::answer::{self, is_get, AnswerBody};

/// The telemetry listener's router.
pub(super) fn telemetry(shared: &Arc<Shared>) -> Router {
    let shared = shared.clone();
    Arc::new(move |req: Request<Incoming>| {
        let resp = telemetry_answer(&shared, &req);
        Box::pin(async move { resp })
    })
}

fn telemetry_answer(shared: &Shared, req: &Request<Incoming>) -> Response<AnswerBody> {
    if is_get(req, "/metrics") {
        answer::respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.encode().into(),
        )
    } else if is_get(req, "/healthz/live") {
        answer::json(StatusCode::OK, &serde_json::json!({"status": "live"}))
    } else if is_get(req, "/healthz/ready") {
        readiness(shared)
    } else {
        answer::not_found(req)
    }
}

fn readiness(shared: &Shared) -> Response<AnswerBody> {
    let ready = shared.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    answer::json(
        status,
        &serde_json::json!({
            "ready": ready,
            "listening": shared.listening.load(Ordering::Acquire),
            "registry_loaded": shared.registry_ready.load(Ordering::Acquire),
            "app_healthy": shared.app_healthy.load(Ordering::Acquire),
        }),
    )
}

/// The local API's router.
pub(super) fn api(
    shared: &Arc<Shared>,
    events: Option<Arc<Events>>,
    realtime: Option<Arc<Realtime>>,
) -> Router {
    let shared = shared.clone();
    Arc::new(move |req: Request<Incoming>| -> ResponseFuture {
        let path = req.uri().path();
        if path.starts_with("/v1/events") {
            return match events.clone() {
                Some(events) => Box::pin(async move { events.handle(req).await }),
                None => unconfigured(&req, "events"),
            };
        }
        if realtime::API_PATHS.iter().any(|p| path.starts_with(p)) {
            return match realtime.clone() {
                Some(hub) => Box::pin(async move { hub.handle_api(req).await }),
                None => unconfigured(&req, "realtime"),
            };
        }
        let resp = api_answer(&shared, &req);
        Box::pin(async move { resp })
    })
}

fn unconfigured(req: &Request<Incoming>, section: &str) -> ResponseFuture {
    let resp = answer::json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({
            "error": "not_configured",
            "message": format!("{} {}: the `{section}` section is not configured", req.method(), req.uri().path()),
        }),
    );
    Box::pin(async move { resp })
}

fn api_answer(shared: &Shared, req: &Request<Incoming>) -> Response<AnswerBody> {
    if is_get(req, "/v1/config") {
        let loaded = shared.config.load();
        let loaded_at = loaded
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        answer::json(
            StatusCode::OK,
            &serde_json::json!({
                "source": loaded.source,
                "hash": loaded.hash,
                "loaded_at_ms": loaded_at,
                "config": loaded.config,
            }),
        )
    } else if is_get(req, "/v1/registry") {
        let snapshot = shared.registry_view(&shared.config.load().config);
        answer::json(
            StatusCode::OK,
            &serde_json::json!({
                "instance_id": shared.instance_id,
                "redis_read_at_ms": snapshot.redis_read_at,
                "services": snapshot.services,
            }),
        )
    } else {
        answer::not_found(req)
    }
}
