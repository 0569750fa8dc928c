//! The fleet server's HTTP side: the web dashboard (assets compiled into the binary, no CDN), its
//! JSON API, live updates as server-sent events, and `/metrics` for Prometheus. A token, when
//! set, guards every route (`Authorization: Bearer …`, or `?token=` for a browser); other sites'
//! pages are kept out either way (`origin.rs`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use serde::Serialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use super::hub::Hub;
use super::registry::Device;

/// Unix ms, read at the I/O edge.
pub type UnixMs = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What the routes share.
#[derive(Clone)]
pub struct Api {
    /// The fleet.
    pub hub: Arc<Hub>,
    /// Required on every request, when set.
    pub token: Option<Arc<str>>,
    /// The clock.
    pub now_ms: UnixMs,
    /// Runs rollouts' actions (`None`: the server has no operator key and runs no rollout).
    pub executor: Option<super::rollouts::Executor>,
}

async fn rollouts(State(api): State<Api>) -> Response {
    json(&api.hub.rollouts())
}

async fn rollout(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.hub.rollouts().into_iter().find(|r| r.plan.id == id) {
        Some(r) => json(&r),
        None => error(StatusCode::NOT_FOUND, &format!("no rollout '{id}'")),
    }
}

async fn create_rollout(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    if api.executor.is_none() {
        return error(StatusCode::CONFLICT, &super::rollouts::CreateError::NoSigner.to_string());
    }
    let req: super::rollouts::CreateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("not a rollout request: {e}")),
    };
    let hub = api.hub.clone();
    let now = (api.now_ms)();
    match tokio::task::spawn_blocking(move || hub.create_rollout(req, now)).await {
        Ok(Ok(r)) => (StatusCode::CREATED, json(&r)).into_response(),
        Ok(Err(e @ super::hub::RolloutError::Storage(_))) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Ok(Err(e @ super::hub::RolloutError::NotDriver(_))) => error(StatusCode::CONFLICT, &e.to_string()),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn control_rollout(State(api): State<Api>, Path((id, verb)): Path<(String, String)>) -> Response {
    use super::hub::RolloutError;
    match api.hub.control(&id, &verb, (api.now_ms)()) {
        Ok(work) => {
            let reply = json(&work.rollout);
            if let (Some(e), false) = (&api.executor, work.actions.is_empty()) {
                e.spawn(work);
            }
            reply
        }
        Err(e @ RolloutError::Unknown(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ (RolloutError::Verb(_) | RolloutError::State { .. } | RolloutError::NotDriver(_))) => {
            error(StatusCode::CONFLICT, &e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The fleet table, as `/api/fleet` and the event stream send it.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct FleetView {
    /// When it was made, Unix ms.
    pub generated_ms: u64,
    /// The devices, by id.
    pub devices: Vec<Device>,
    /// Their latest drift windows merged per model version, fleet-wide and per group.
    #[serde(default)]
    pub drift: Vec<super::drift::MergedDrift>,
    /// The rollouts, oldest first (of the group, when filtered by one).
    #[serde(default)]
    pub rollouts: Vec<crate::rollout::Rollout>,
}

/// The routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", include_str!("dashboard/index.html")) }))
        .route("/app.js", get(|| async { asset("text/javascript", include_str!("dashboard/app.js")) }))
        .route("/style.css", get(|| async { asset("text/css", include_str!("dashboard/style.css")) }))
        .route("/metrics", get(metrics))
        .route("/api/fleet", get(fleet))
        .route("/api/devices/{id}", get(device))
        .route("/api/devices/{id}/series", get(series))
        .route("/api/events", get(events))
        .route("/api/stream", get(stream))
        .route("/api/rollouts", get(rollouts).post(create_rollout))
        .route("/api/rollouts/{id}", get(rollout))
        .route("/api/rollouts/{id}/{verb}", axum::routing::post(control_rollout))
        // A rollout's request carries its bundle.
        .layer(axum::extract::DefaultBodyLimit::max(512 * 1024 * 1024))
        .layer(axum::middleware::from_fn_with_state(api.clone(), guard))
        .with_state(api)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn guard(
    State(api): State<Api>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(refusal) = super::origin::check(request.method(), &headers, api.token.is_some()) {
        return error(StatusCode::FORBIDDEN, refusal.message());
    }
    if let Some(token) = &api.token {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let given = bearer.or(q.get("token").map(String::as_str));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "a token is required: Authorization: Bearer TOKEN, or ?token=TOKEN",
            );
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(State(api): State<Api>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], api.hub.metrics()).into_response()
}

/// Which devices a view shows: `?group=G` and `?label=KEY=VALUE`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only members of this group.
    pub group: Option<String>,
    /// Only devices with this label (key, value).
    pub label: Option<(String, String)>,
}

impl Filter {
    fn of(q: &HashMap<String, String>) -> Result<Filter, &'static str> {
        let label = match q.get("label") {
            None => None,
            Some(l) => match l.split_once('=') {
                Some((k, v)) => Some((k.to_string(), v.to_string())),
                None => return Err("'label' must be KEY=VALUE"),
            },
        };
        Ok(Filter { group: q.get("group").cloned(), label })
    }

    fn admits(&self, d: &Device) -> bool {
        self.group.as_ref().is_none_or(|g| d.groups.contains(g))
            && self.label.as_ref().is_none_or(|(k, v)| d.labels.get(k) == Some(v))
    }
}

/// The fleet table, filtered.
pub fn fleet_view(api: &Api, filter: &Filter) -> FleetView {
    let group = filter.group.as_deref();
    let devices = api.hub.registry(|r| {
        r.devices()
            .filter(|d| filter.admits(d))
            // The sketches are for the merge, not for every view of the table.
            .map(|d| Device { window: None, ..d.clone() })
            .collect()
    });
    let drift = api.hub.drift().into_iter().filter(|m| group.is_none() || m.group.as_deref() == group).collect();
    let rollouts = api.hub.rollouts().into_iter().filter(|r| group.is_none_or(|g| r.plan.group == g)).collect();
    FleetView { generated_ms: (api.now_ms)(), devices, drift, rollouts }
}

async fn fleet(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Response {
    match Filter::of(&q) {
        Ok(filter) => json(&fleet_view(&api, &filter)),
        Err(why) => error(StatusCode::BAD_REQUEST, why),
    }
}

async fn device(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Some(device) = api.hub.registry(|r| r.device(&id).cloned()) else {
        return error(StatusCode::NOT_FOUND, &format!("no device '{id}' is known to this fleet server"));
    };
    let hub = api.hub.clone();
    let events = tokio::task::spawn_blocking(move || hub.storage(|s| s.events(Some(&id), 50))).await;
    match events {
        Ok(Ok(events)) => json(&serde_json::json!({ "device": device, "events": events })),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn series(State(api): State<Api>, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let number = |k: &str, default: u64| q.get(k).map_or(Ok(default), |v| v.parse::<u64>().map_err(|_| k.to_string()));
    let now = (api.now_ms)();
    let (since, until, points) =
        match (number("since_ms", now.saturating_sub(3_600_000)), number("until_ms", now), number("max_points", 300)) {
            (Ok(s), Ok(u), Ok(p)) => (s, u, p.clamp(1, 5000) as usize),
            (Err(k), _, _) | (_, Err(k), _) | (_, _, Err(k)) => {
                return error(StatusCode::BAD_REQUEST, &format!("'{k}' must be a whole number"));
            }
        };
    if api.hub.registry(|r| r.device(&id).is_none()) {
        return error(StatusCode::NOT_FOUND, &format!("no device '{id}' is known to this fleet server"));
    }
    let hub = api.hub.clone();
    let found = tokio::task::spawn_blocking(move || {
        hub.storage(|s| {
            Ok::<_, super::storage::StorageError>((s.series(&id, since, until, points)?, s.drift(&id, since, points)?))
        })
    })
    .await;
    match found {
        Ok(Ok((points, drift))) => json(&serde_json::json!({ "points": points, "drift": drift })),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn events(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Response {
    let device = q.get("device").cloned();
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(100).min(10_000);
    let hub = api.hub.clone();
    match tokio::task::spawn_blocking(move || hub.storage(|s| s.events(device.as_deref(), limit))).await {
        Ok(Ok(events)) => json(&events),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The fleet table again after every written batch, at most twice a second.
async fn stream(
    State(api): State<Api>,
    Query(q): Query<HashMap<String, String>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // A bad label filter shows everything rather than nothing: the page's own requests are
    // well-formed, and an event stream has no error status to give.
    let filter = Filter::of(&q).unwrap_or_default();
    let first = fleet_view(&api, &filter);
    let wakes = BroadcastStream::new(api.hub.subscribe()).throttle(Duration::from_millis(500));
    let later = wakes.map(move |_| fleet_view(&api, &filter));
    let views = tokio_stream::once(first).chain(later);
    let events =
        views.map(|view| Ok(SseEvent::default().event("fleet").data(serde_json::to_string(&view).unwrap_or_default())));
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
