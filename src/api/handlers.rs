//! The handlers of the endpoints: each reads its request, asks the executor, and turns the
//! result (or the executor's typed error) into the contract's answer.
//!
//! Owns the contract's answer shapes on the wire (`{"success", "msg"}`, `/stats`). It must
//! not decide anything the executor decides, nor route (that is `routes`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::openapi::{self, Health, Outcome, PullAnswer, StatsAnswer};
use super::request::{self, RequestError};
use crate::executor::{ExecError, Executor, Stats};

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) executor: Arc<Executor>,
    /// Cancelled by `/stop`: the server shuts down and the executor cleans up.
    pub(super) stop: CancellationToken,
}

pub(super) fn outcome(status: StatusCode, success: bool, msg: &str) -> Response {
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
pub(super) async fn execute(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
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
        pulls: s
            .pulls
            .iter()
            .map(|(image, p)| PullAnswer {
                image: image.clone(),
                layers: p.layers,
                layers_done: p.layers_done,
                bytes_done: p.bytes_done,
                bytes_total: p.bytes_total,
            })
            .collect(),
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
pub(super) async fn stats(State(app): State<AppState>) -> Response {
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
pub(super) async fn metrics(State(app): State<AppState>) -> Response {
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
pub(super) async fn health() -> Response {
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
pub(super) async fn pause(State(app): State<AppState>) -> Response {
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
pub(super) async fn unpause(State(app): State<AppState>) -> Response {
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
pub(super) async fn update_config(
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
pub(super) async fn stop_executor(State(app): State<AppState>) -> Response {
    tracing::info!("stop requested");
    app.stop.cancel();
    outcome(
        StatusCode::OK,
        true,
        "executor stopping: removing task containers",
    )
}
