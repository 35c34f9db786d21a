//! The HTTP API (the contract's endpoints), on axum.
//!
//! Owns the wire: routes, body limits, and the mapping of every error to the contract's
//! `{"success": bool, "msg": string}` answer. It holds no state of its own and makes no
//! decision the executor should make; read a handler top to bottom to see a request's path.

pub mod fields;
pub mod openapi;
pub mod request;
pub mod server;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::executor::{ExecError, Executor, Stats};
use openapi::{Health, Outcome, StatsAnswer};
use request::RequestError;

#[derive(Clone)]
struct AppState {
    executor: Arc<Executor>,
    /// Cancelled by `/stop`: the server shuts down and the executor cleans up.
    stop: CancellationToken,
}

/// The router of all endpoints. With an `auth_token` configured, every endpoint but
/// `/health` and `/openapi.json` requires `Authorization: Bearer <token>`.
pub fn router(executor: Arc<Executor>, stop: CancellationToken) -> Router {
    let config = executor.config();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(
        config.max_requests_in_flight as usize,
    ));
    let max_in_flight = config.max_requests_in_flight;
    // Only task runs count against max_requests_in_flight: an operator can always pause or
    // stop a busy executor.
    let execute_route = post(execute).layer(middleware::from_fn(move |request, next| {
        limit_in_flight(Arc::clone(&in_flight), max_in_flight, request, next)
    }));
    let mut protected = Router::new()
        .route("/", execute_route)
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/pause", post(pause))
        .route("/unpause", post(unpause))
        .route("/update-config", post(update_config))
        .route("/stop", post(stop_executor));
    let (read_limit, max_body) = (config.body_read_timeout, config.max_request_bytes);
    protected = protected.layer(middleware::from_fn(move |request, next| {
        body_in_time(read_limit, max_body, request, next)
    }));
    if let Some(token) = config.auth_token.clone() {
        let token: Arc<[u8]> = token.into_bytes().into();
        protected = protected.layer(middleware::from_fn(move |request, next| {
            require_token(Arc::clone(&token), request, next)
        }));
    }
    protected
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_json))
        .layer(DefaultBodyLimit::max(config.max_request_bytes))
        .layer(middleware::from_fn(request_id))
        .with_state(AppState { executor, stop })
}

/// The header that carries a request's id, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// Gives every request an id, the client's `X-Request-Id` when it sent a sane one (at most
/// 128 visible ASCII characters), else a new one. Every log line about the request carries
/// it (a `request` span), and so does the answer's `X-Request-Id` header.
async fn request_id(request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    let id = match given {
        Some(id) => id.to_string(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Reads the whole request body, at most `max` bytes, within `limit`: a client that trickles
/// its body holds neither a connection nor a slot for long (HTTP 408, connection closed).
async fn body_in_time(
    limit: std::time::Duration,
    max: usize,
    request: Request,
    next: Next,
) -> Response {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let collect = http_body_util::Limited::new(body, max).collect();
    match tokio::time::timeout(limit, collect).await {
        Ok(Ok(body)) => {
            let body = axum::body::Body::from(body.to_bytes());
            next.run(Request::from_parts(parts, body)).await
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => outcome(
            StatusCode::PAYLOAD_TOO_LARGE,
            false,
            &format!("request body larger than max_request_bytes ({max} bytes)"),
        ),
        Ok(Err(e)) => outcome(
            StatusCode::BAD_REQUEST,
            false,
            &format!("could not read the request body: {e}"),
        ),
        Err(_) => {
            let mut response = outcome(
                StatusCode::REQUEST_TIMEOUT,
                false,
                &format!(
                    "request body not received within {} (body_read_timeout)",
                    humantime::format_duration(limit)
                ),
            );
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// Serves the request if fewer than `max` are being served, else answers 503 at once.
async fn limit_in_flight(
    slots: Arc<tokio::sync::Semaphore>,
    max: u32,
    request: Request,
    next: Next,
) -> Response {
    match slots.try_acquire_owned() {
        Ok(_slot) => next.run(request).await,
        Err(_) => {
            let mut response = outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                false,
                &format!(
                    "executor busy: {max} requests are being served (max_requests_in_flight); retry later"
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            response
        }
    }
}

/// Lets the request through only with the right bearer token (compared in constant time).
async fn require_token(token: Arc<[u8]>, request: Request, next: Next) -> Response {
    use subtle::ConstantTimeEq;
    // The scheme is case-insensitive (RFC 7235); the token is compared exactly.
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..]);
    match given {
        Some(given) if bool::from(given.ct_eq(&token)) => next.run(request).await,
        _ => {
            let mut response = outcome(
                StatusCode::UNAUTHORIZED,
                false,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

fn outcome(status: StatusCode, success: bool, msg: &str) -> Response {
    let body = serde_json::to_vec(&Outcome { success, msg }).expect("plain struct serializes");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn failure(msg: &str) -> Response {
    outcome(StatusCode::OK, false, msg)
}

fn body_rejected(rejection: BytesRejection) -> Response {
    outcome(rejection.status(), false, &rejection.body_text())
}

/// Runs a task.
#[utoipa::path(
    post,
    path = "/",
    request_body(content = openapi::ExecuteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The task's answer (`success: true`), or why it failed: a failure of the task is still HTTP 200", body = Outcome),
        (status = 400, description = "Malformed request, missing `id`, or two spellings of one field that disagree", body = Outcome),
        openapi::Refusals,
        (status = 408, description = "Request body not received within `body_read_timeout`", body = Outcome),
        (status = 413, description = "Request body over `max_request_bytes`", body = Outcome),
    ),
    security((), ("bearer" = []))
)]
async fn execute(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_rejected(rejection),
    };
    let request = match request::parse_execute(&body) {
        Ok(r) => r,
        Err(e) => {
            let (status, label) = match e {
                RequestError::Malformed(_) | RequestError::Conflict(_) => {
                    (StatusCode::BAD_REQUEST, "bad_request")
                }
                _ => (StatusCode::OK, "invalid_request"),
            };
            app.executor
                .metrics()
                .requests
                .get_or_create(&crate::metrics::OutcomeLabel { outcome: label })
                .inc();
            return outcome(status, false, &e.to_string());
        }
    };
    tracing::debug!(key = %request.key, "execute");
    match app.executor.execute(request).await {
        // The executor checked that the answer is UTF-8: this borrows, it does not convert.
        Ok(answer) => outcome(StatusCode::OK, true, &String::from_utf8_lossy(&answer)),
        Err(e) => {
            if !matches!(e, ExecError::Paused) {
                tracing::debug!(error = %e, "execute failed");
            }
            failure(&e.to_string())
        }
    }
}

/// Writes a number as an integer when it is one (Go clients decode `task_cpu` into ints).
fn number(x: f64) -> serde_json::Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        serde_json::Value::from(x as i64)
    } else {
        serde_json::Value::from(x)
    }
}

fn stats_answer(s: &Stats) -> StatsAnswer {
    StatsAnswer {
        total_cpu: s.host.cores,
        total_mem: s.host.mem_mb,
        used_cpu: s.host_cpu_percent,
        used_mem: s.host_mem_percent,
        task_cpu: number(s.task_cpu),
        task_mem: s.task_mem_mb,
        task_used_cpu: s.task_used_cpu_percent,
        task_used_mem: s.task_used_mem_percent,
        gpu_model: s.gpu_model.clone(),
        task_gpu: s.task_gpu,
        task_used_gpu: s.task_used_gpu,
        containers: s.containers,
        runtimes: s.runtimes.clone(),
        spare_containers: s.spare_containers,
        spare_used_cpu: s.spare_used_cpu_percent,
        spare_used_mem: s.spare_used_mem_percent,
        free_sandboxes: s.free_sandboxes,
    }
}

/// Host, budget and container figures.
#[utoipa::path(
    get,
    path = "/stats",
    responses(
        (status = 200, description = "The figures, or `{\"success\": false, \"msg\": \"failed to retrieve resource stats\"}` while paused", body = openapi::StatsReply),
        openapi::Unauthorized,
    ),
    security((), ("bearer" = []))
)]
async fn stats(State(app): State<AppState>) -> Response {
    match app.executor.stats() {
        Some(s) => axum::Json(stats_answer(&s)).into_response(),
        None => failure("failed to retrieve resource stats"),
    }
}

/// Prometheus / OpenMetrics text.
#[utoipa::path(
    get,
    path = "/metrics",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        openapi::Unauthorized,
    ),
    security((), ("bearer" = []))
)]
async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.executor.metrics_text(),
    )
        .into_response()
}

/// Whether the executor answers (never needs a token).
#[utoipa::path(get, path = "/health", responses((status = 200, description = "Up", body = Health)))]
async fn health() -> Response {
    axum::Json(Health { status: "ok" }).into_response()
}

/// Refuses new tasks, cancels starts in progress and removes every task container.
#[utoipa::path(
    post,
    path = "/pause",
    responses(
        (status = 200, description = "Paused, task containers removed", body = Outcome),
        openapi::Unauthorized,
    ),
    security((), ("bearer" = []))
)]
async fn pause(State(app): State<AppState>) -> Response {
    app.executor.pause().await;
    outcome(StatusCode::OK, true, "executor paused")
}

/// Accepts tasks again.
#[utoipa::path(
    post,
    path = "/unpause",
    responses(
        (status = 200, description = "Unpaused", body = Outcome),
        openapi::Unauthorized,
    ),
    security((), ("bearer" = []))
)]
async fn unpause(State(app): State<AppState>) -> Response {
    app.executor.unpause();
    outcome(StatusCode::OK, true, "executor unpaused")
}

/// Changes the budget, idle timeout, GPUs or micro-VM runtime; only while paused.
#[utoipa::path(
    post,
    path = "/update-config",
    request_body(content = openapi::UpdateConfig, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated (`success: true`), or `executor is running` (`success: false`)", body = Outcome),
        (status = 400, description = "A value out of range, an unknown key, or not JSON", body = Outcome),
        (status = 409, description = "The new budget cannot hold what containers not yet removed still hold", body = Outcome),
        openapi::Unauthorized,
        (status = 408, description = "Request body not received within `body_read_timeout`", body = Outcome),
        (status = 413, description = "Request body over `max_request_bytes`", body = Outcome),
    ),
    security((), ("bearer" = []))
)]
async fn update_config(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_rejected(rejection),
    };
    // The contract's answer while running, whatever the body says.
    if !app.executor.is_paused() {
        return failure(&ExecError::Running.to_string());
    }
    let update = match request::parse_update(&body) {
        Ok(u) => u,
        Err(e) => return outcome(StatusCode::BAD_REQUEST, false, &e.to_string()),
    };
    match app.executor.update_config(update).await {
        Ok(()) => outcome(StatusCode::OK, true, "config updated"),
        // Refused, not failed: a non-2xx, so the desktop app does not take it for done.
        Err(e @ ExecError::StillHeld(_)) => outcome(StatusCode::CONFLICT, false, &e.to_string()),
        Err(e) => failure(&e.to_string()),
    }
}

/// Removes every task container and stops the executor.
#[utoipa::path(
    post,
    path = "/stop",
    responses(
        (status = 200, description = "Stopping", body = Outcome),
        openapi::Unauthorized,
    ),
    security((), ("bearer" = []))
)]
async fn stop_executor(State(app): State<AppState>) -> Response {
    tracing::info!("stop requested");
    app.stop.cancel();
    outcome(
        StatusCode::OK,
        true,
        "executor stopping: removing task containers",
    )
}

/// This API's OpenAPI document (never needs a token).
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(openapi::document);
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.clone(),
    )
        .into_response()
}
