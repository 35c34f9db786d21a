//! The OpenAPI 3.1 document of this API, generated (utoipa) from the handlers' annotations
//! and the shapes in `openapi`, served at `GET /openapi.json` and shipped as `openapi.json`
//! in the repository.
//!
//! Owns the document and the endpoint that serves it. It must not describe a shape itself
//! (that is `openapi`).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

// The derive below needs each handler's generated `__path_*` item beside it.
use super::handlers::*;
use super::openapi::{
    ExecuteRequest, Health, Outcome, PullAnswer, Resource, StatsAnswer, TaskConfigResource,
    UpdateConfig,
};

/// This API's OpenAPI document (never needs a token).
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub(super) async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(document);
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.clone(),
    )
        .into_response()
}

/// Declares the bearer token (`auth_token`).
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mecanywhere-executor",
        description = "Runs MECAnywhere tasks in isolated containers. With `auth_token` set, every endpoint but /health and /openapi.json needs `Authorization: Bearer <token>`."
    ),
    paths(
        execute,
        stats,
        metrics,
        health,
        pause,
        unpause,
        update_config,
        stop_executor,
        openapi_json,
    ),
    components(schemas(
        Outcome,
        StatsAnswer,
        PullAnswer,
        Health,
        ExecuteRequest,
        Resource,
        TaskConfigResource,
        UpdateConfig
    )),
    modifiers(&BearerToken)
)]
pub struct ApiDoc;

/// The document, as served and shipped (pretty-printed JSON).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serializes")
}
