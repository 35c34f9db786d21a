//! The API description: an OpenAPI 3.1 document generated (utoipa) from the answer types the
//! handlers really serialize and from the request shapes the parsers accept, served at
//! `GET /openapi.json` and shipped as `openapi.json` in the repository.
//!
//! Owns the documentation types of the requests (the parsers in `request.rs` and
//! `fields.rs` read JSON themselves, so these mirror them, every accepted spelling
//! included) and the answer types. The document that gathers them and the handlers is
//! `document.rs`. It handles no request.

use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

/// The answer of `POST /` and of the control endpoints: the Go executor's shape, kept
/// byte for byte (clients hash it).
#[derive(Debug, Serialize, ToSchema)]
pub struct Outcome<'a> {
    /// Whether the task (or the operation) succeeded.
    pub success: bool,
    /// On success, the task's answer byte for byte (as a JSON string); otherwise why not.
    pub msg: &'a str,
}

/// `GET /stats` while running.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsAnswer {
    /// Host cores.
    pub total_cpu: u32,
    /// Host memory, MB.
    pub total_mem: u64,
    /// Host CPU busy, percent.
    pub used_cpu: f64,
    /// Host memory used, percent.
    pub used_mem: f64,
    /// Task CPU budget, cores (an integer when whole).
    #[schema(value_type = f64)]
    pub task_cpu: serde_json::Value,
    /// Task memory budget, MB.
    pub task_mem: u64,
    /// Percent of the CPU budget reserved by containers serving task keys (running or warm,
    /// prewarmed keys included); spares are counted apart.
    pub task_used_cpu: f64,
    /// Percent of the memory budget reserved by containers serving task keys.
    pub task_used_mem: f64,
    /// Model of the GPUs tasks may use ("" without GPUs).
    pub gpu_model: String,
    /// GPUs usable by tasks.
    pub task_gpu: u32,
    /// GPUs reserved now.
    pub task_used_gpu: u32,
    /// Task containers starting, warm, being removed, or whose removal is retried (spares
    /// and sandbox holders are not task containers).
    pub containers: usize,
    /// The `runtime` values requests may use on this host.
    pub runtimes: Vec<&'static str>,
    /// Spare containers ready for new keys of recently used images: the executor's own
    /// stock, evicted first whenever a task needs room.
    pub spare_containers: usize,
    /// Percent of the CPU budget held by spares (ready or starting).
    pub spare_used_cpu: f64,
    /// Percent of the memory budget held by spares (ready or starting).
    pub spare_used_mem: f64,
    /// Sandbox holders started ahead and waiting for a task (outside the budget).
    pub free_sandboxes: usize,
    /// The image pulls in progress (empty when none).
    pub pulls: Vec<PullAnswer>,
}

/// One image pull in progress, as far as the engine has reported it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PullAnswer {
    /// The image being pulled.
    pub image: String,
    /// Its layers known so far, and how many of them are in place.
    pub layers: usize,
    pub layers_done: usize,
    /// Bytes downloaded, of the size of the layers known so far.
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// `GET /stats`: the figures while running, `{"success": false, "msg": ...}` while paused.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum StatsReply<'a> {
    Running(StatsAnswer),
    Paused(Outcome<'a>),
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// `POST /`: runs a task. The resource fields are accepted under every spelling real
/// MECAnywhere clients send (two spellings with different values are a 400).
#[derive(ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct ExecuteRequest {
    /// The image to run, e.g. `sampleserver:latest`.
    id: String,
    /// Passed to the task unchanged as the body of `POST /` (absent or null: empty).
    input: Option<String>,
    /// `container` (default) or `microVM`.
    runtime: Option<String>,
    /// Run as an SGX task.
    use_sgx: Option<bool>,
    /// Same as `use_sgx` (the desktop app).
    useSgx: Option<bool>,
    /// Same as `resource.use_gpu` (the desktop app).
    useGpu: Option<bool>,
    use_gpu: Option<bool>,
    /// Same as `resource.gpu_count` (the desktop app).
    gpuCount: Option<i64>,
    gpu_count: Option<i64>,
    /// Limits; absent, null, or cpu and mem both 0: 1 core and 128 MB.
    resource: Option<Resource>,
}

/// The limits of a task. A missing limit takes its default (1 core, 128 MB).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Resource {
    #[serde(flatten)]
    limits: TaskConfigResource,
    /// A task's whole `config.json` (the pymeca host): its `resource`.
    resource: Option<TaskConfigResource>,
}

/// The limits and flags of a task, under every accepted spelling; the `resource` of a task's
/// `config.json` has the same shape.
#[derive(ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct TaskConfigResource {
    /// Cores (0.5 = half a core).
    cpu: Option<f64>,
    /// Same as `cpu` (the desktop app).
    task_cpu: Option<f64>,
    /// Memory, MB.
    mem: Option<i64>,
    /// Same as `mem` (older clients, the SGX example task).
    memory: Option<i64>,
    /// Same as `mem` (the desktop app).
    task_mem: Option<i64>,
    /// The task needs GPUs.
    use_gpu: Option<bool>,
    useGpu: Option<bool>,
    /// How many whole GPUs (at least 1 when `use_gpu`).
    gpu_count: Option<i64>,
    gpuCount: Option<i64>,
    use_sgx: Option<bool>,
    useSgx: Option<bool>,
}

/// `POST /update-config` (only while paused); any subset of the fields.
#[derive(ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct UpdateConfig {
    /// Idle timeout of a warm container, minutes (1 to 525600).
    timeout: Option<i64>,
    /// Task CPU budget, cores (above 0, at most 4096).
    cpu: Option<f64>,
    /// Task memory budget, MB (1 to 16777216).
    mem: Option<i64>,
    /// Schedule NVIDIA GPUs (a boolean, or 0 / 1).
    has_gpu: Option<HasGpu>,
    /// Docker runtime used for `runtime: microVM` ("" to unset).
    microVM_runtime: Option<String>,
    /// Keep-alive policy: "fixed", "adaptive" or "priced" (a new one starts learning afresh).
    keep_alive: Option<String>,
    /// `priced`: what a warm start is worth, MB·s of idle memory-time (above 0, at most
    /// 1e15); alone, it selects `priced`.
    keep_alive_price: Option<f64>,
}

#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum HasGpu {
    Flag(bool),
    Number(i64),
}

/// What the front answers instead of `POST /`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Refusals<'a> {
    /// Missing or wrong bearer token (with `auth_token` set).
    #[response(status = 401)]
    Unauthorized(Outcome<'a>),
    /// Busy: `max_requests_in_flight` task runs are being served.
    #[response(status = 503)]
    Busy(Outcome<'a>),
}

/// What the front answers instead of the other endpoints but `/health` and `/openapi.json`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Unauthorized<'a> {
    /// Missing or wrong bearer token (with `auth_token` set).
    #[response(status = 401)]
    Unauthorized(Outcome<'a>),
}
