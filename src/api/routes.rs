//! The router of the API and its middleware: request ids, the body's size and read time,
//! the cap on tasks in flight, and the bearer token.
//!
//! Owns which path goes to which handler and what every request passes through first. It
//! must not answer an endpoint itself (that is `handlers`).

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::document::openapi_json;
use super::handlers::{
    execute, health, metrics, outcome, pause, stats, stop_executor, unpause, update_config,
    AppState,
};
use crate::executor::Executor;

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
