//! mecanywhere-executor: runs MECAnywhere tasks in isolated containers on a Docker engine.
//!
//! Request path, top to bottom: [`api`] (HTTP, validation) → [`executor`] (admission,
//! policy, the warm pool) and [`resources`] (budget) → [`engine`] (Docker) →
//! [`task_client`] (the call to the task). See ARCHITECTURE.md.

pub mod api;
pub mod config;
pub mod engine;
pub mod error_text;
pub mod executor;
pub mod gpu;
pub mod host;
pub mod image_ref;
pub mod keepalive;
pub mod metrics;
pub mod metrics_text;
pub mod pull_progress;
pub mod resources;
pub mod supervise;
pub mod task;
pub mod task_client;
