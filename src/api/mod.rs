//! The HTTP API (the contract's endpoints), on axum.
//!
//! Owns the wire: routes, body limits, and the mapping of every error to the contract's
//! `{"success": bool, "msg": string}` answer. It holds no state of its own and makes no
//! decision the executor should make; read a handler top to bottom to see a request's path.
//!
//! `routes` builds the router and its middleware (request ids, body limits, the in-flight
//! cap, the bearer token); `handlers` answers each endpoint; `request` and `fields` parse
//! what clients send; `openapi` holds the documented shapes and `document` the OpenAPI
//! document that gathers them; `server` accepts connections and serves the router on each,
//! within the connection limits.

pub mod document;
pub mod fields;
mod handlers;
pub mod openapi;
pub mod request;
mod routes;
pub mod server;

pub use routes::{router, REQUEST_ID};
