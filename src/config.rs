//! Executor configuration: the YAML file, its defaults, and its validation.
//!
//! Owns the mapping from the contract's YAML keys (plus this executor's own keys) to a
//! validated [`Config`]. Every problem is reported with the key it concerns; unknown keys
//! are errors. This module does no I/O beyond reading the file it is given, and knows
//! nothing about Docker or HTTP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod engine;
mod image_gc;

pub use engine::{EngineChoice, SwarmSettings};
pub use image_gc::ImageGc;

use crate::resources::{cores_to_milli, Demand};
use crate::task::{Runtime, TaskKey};

/// File read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "mecanywhere_executor.yaml";

/// A configuration problem, naming the key or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// SGX settings (`sgx:` in the YAML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgxConfig {
    #[serde(default)]
    pub enable: bool,
    #[serde(default)]
    pub sgx_device: Option<String>,
    #[serde(default)]
    pub aesmd_path: Option<String>,
}

/// The YAML file as written; every field optional so defaults apply.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(rename = "type")]
    engine_type: Option<String>,
    engine: Option<String>,
    swarm: Option<SwarmSettings>,
    timeout: Option<i64>,
    idle_timeout: Option<String>,
    start_timeout: Option<String>,
    request_timeout: Option<String>,
    queue_timeout: Option<String>,
    cpu: Option<f64>,
    mem: Option<i64>,
    has_gpu: Option<bool>,
    #[serde(rename = "microVM_runtime")]
    microvm_runtime: Option<String>,
    sgx: Option<SgxConfig>,
    task_network: Option<String>,
    network: Option<String>,
    socket_dir: Option<String>,
    publish_task_ports: Option<bool>,
    name: Option<String>,
    pull_timeout: Option<String>,
    pull_stall_timeout: Option<String>,
    max_concurrent_pulls: Option<u32>,
    max_request_bytes: Option<u64>,
    max_answer_bytes: Option<u64>,
    pids_limit: Option<i64>,
    nofile_limit: Option<i64>,
    log_max_size: Option<String>,
    log_max_files: Option<u32>,
    read_only_rootfs: Option<bool>,
    internal_network: Option<bool>,
    task_tty: Option<bool>,
    auth_token: Option<String>,
    prewarm: Option<Vec<RawPrewarm>>,
    listen: Option<String>,
    max_connections: Option<u32>,
    max_connections_per_peer: Option<u32>,
    max_requests_in_flight: Option<u32>,
    header_read_timeout: Option<String>,
    idle_connection_timeout: Option<String>,
    log_format: Option<LogFormat>,
    background_eviction: Option<bool>,
    refills_wait_for_requests: Option<bool>,
    body_read_timeout: Option<String>,
    sandbox_pool: Option<u32>,
    sandbox_memory_mb: Option<u64>,
    spare_containers: Option<u32>,
    spare_memory_mb: Option<u64>,
    keep_alive: Option<String>,
    keep_alive_price: Option<f64>,
    image_gc: Option<serde_norway::Value>,
}

/// One `prewarm:` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrewarm {
    image: String,
    #[serde(default = "one")]
    cpu: f64,
    #[serde(default = "default_mem")]
    mem: i64,
    #[serde(default)]
    runtime: Option<String>,
    #[serde(default)]
    use_sgx: bool,
    #[serde(default = "one_u32")]
    count: u32,
}

fn one() -> f64 {
    1.0
}

fn one_u32() -> u32 {
    1
}

fn default_mem() -> i64 {
    128
}

/// A task key kept started and ready ahead of demand.
#[derive(Debug, Clone, PartialEq)]
pub struct Prewarm {
    pub key: TaskKey,
}

/// Validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How long a warm container may sit idle before it is removed.
    pub idle_timeout: Duration,
    /// How long a task may take to print `meca-init-done` after it is started.
    pub start_timeout: Duration,
    /// Deadline of one request to a task.
    pub request_timeout: Duration,
    /// How long a request may wait for the budget to have room.
    pub queue_timeout: Duration,
    /// Task CPU budget as configured, in cores (capped by the host's cores at run time).
    pub cpu: f64,
    /// Task memory budget as configured, in MB (capped at 80% of host memory at run time).
    pub mem_mb: u64,
    pub has_gpu: bool,
    /// Docker runtime name used for requests with `runtime: "microVM"`.
    pub microvm_runtime: Option<String>,
    pub sgx: SgxConfig,
    /// What a task's network reaches (`task_network`).
    pub task_network: TaskNetwork,
    /// Docker network of the sandboxes under `task_network: internet`; `None` = Docker's
    /// default bridge.
    pub network: Option<String>,
    /// Where the sandboxes' relay sockets live; `None` = [`default_socket_dir`].
    pub socket_dir: Option<std::path::PathBuf>,
    /// Retired keys found in the file, with what replaces them (logged at start).
    pub retired: Vec<String>,
    /// Instance name; every container this executor creates carries it as a label, and only
    /// containers with this label are ever removed by it.
    pub name: String,
    /// How long pulling one image may take, waiting for a pull slot included.
    pub pull_timeout: Duration,
    /// A pull whose progress stands still this long is cancelled (Nomad's docker driver: 2
    /// minutes).
    pub pull_stall_timeout: Duration,
    /// How many images may be pulled at once.
    pub max_concurrent_pulls: u32,
    /// Largest request body accepted (HTTP 413 beyond).
    pub max_request_bytes: usize,
    /// Largest task answer read into memory.
    pub max_answer_bytes: usize,
    /// Hardening of every task container.
    pub hardening: Hardening,
    /// Tasks get a terminal as stdout/stderr, so buffered `print`s of the ready line arrive.
    pub task_tty: bool,
    /// When set, every endpoint but `/health` requires `Authorization: Bearer <token>`.
    pub auth_token: Option<String>,
    /// Task keys kept ready ahead of demand.
    pub prewarm: Vec<Prewarm>,
    /// Address the API is served on (`--listen` overrides it).
    pub listen: std::net::SocketAddr,
    /// Client connections open at once; more wait to be accepted.
    pub max_connections: u32,
    /// Client connections open at once from one peer address; more are answered 503.
    pub max_connections_per_peer: u32,
    /// Requests being served at once; more are answered 503.
    pub max_requests_in_flight: u32,
    /// How long a client may take to send a request's headers once it began.
    pub header_read_timeout: Duration,
    /// How long a keep-alive client connection may sit without a request.
    pub idle_connection_timeout: Duration,
    /// How long a client may take to send a request's body once its headers arrived.
    pub body_read_timeout: Duration,
    /// Log lines as text for people, or one JSON object per line for log collectors.
    pub log_format: LogFormat,
    /// An evicted container's room is reused once its processes are killed; its removal
    /// finishes in the background (off the start's critical path).
    pub background_eviction: bool,
    /// Refills of the pools (sandbox holders, spares) wait until no request's start is in
    /// flight, one at a time (`refills_wait_for_requests`); `false`: they start at once.
    pub refills_wait_for_requests: bool,
    /// Sandbox holders kept started ahead (network namespaces task containers join, so a
    /// start skips the network setup); 0 = every task gets a network of its own.
    pub sandbox_pool: u32,
    /// Memory limit of one sandbox holder (outside the task budget).
    pub sandbox_memory_mb: u64,
    /// Spare containers kept of recently used images, resized when a new task key of the
    /// image claims one; 0 = none.
    pub spare_containers: u32,
    /// Memory all spare containers together may hold (inside the task budget).
    pub spare_memory_mb: u64,
    /// How long idle containers are kept: `idle_timeout` each, or learned per task key.
    pub keep_alive: KeepAlivePolicy,
    /// When task images are removed to keep the disk from filling (`image_gc`).
    pub image_gc: ImageGc,
    /// The engine tasks run on (`engine`).
    pub engine: EngineChoice,
}

/// What a task's network reaches (`task_network`). In every mode a task reaches nothing of
/// the host, of other tasks or of the executor; the executor reaches the task through its
/// sandbox's relay socket, never over the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskNetwork {
    /// No network interface but loopback: no connection in or out.
    #[default]
    Isolated,
    /// The public internet only: private (RFC 1918), shared (100.64/10), link-local,
    /// loopback, multicast and reserved ranges, the sandbox's own network and the host's
    /// addresses are unreachable.
    Internet,
}

impl std::fmt::Display for TaskNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskNetwork::Isolated => "isolated",
            TaskNetwork::Internet => "internet",
        })
    }
}

/// The first directory systemd names in `variable` (`RUNTIME_DIRECTORY`, `STATE_DIRECTORY`:
/// it may list several, separated by ':'), when set.
fn systemd_directory(variable: &str) -> Option<std::path::PathBuf> {
    let dirs = std::env::var_os(variable)?;
    let first = dirs.to_string_lossy().split(':').next()?.to_string();
    (!first.is_empty()).then(|| std::path::PathBuf::from(first))
}

/// Where sandbox sockets live when `socket_dir` is not set: systemd's `RuntimeDirectory`
/// (`$RUNTIME_DIRECTORY`), else `/run/mecanywhere-executor` for root, else
/// `$XDG_RUNTIME_DIR/mecanywhere-executor`, else a directory in the temp dir.
pub fn default_socket_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(dir) = systemd_directory("RUNTIME_DIRECTORY") {
        return dir;
    }
    let run = PathBuf::from("/run/mecanywhere-executor");
    if std::fs::create_dir_all(&run).is_ok() {
        return run;
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("mecanywhere-executor");
    }
    std::env::temp_dir().join("mecanywhere-executor")
}

/// Where image_gc's record is when `image_gc.state_file` is not set: `images.json` in
/// systemd's `StateDirectory` (`$STATE_DIRECTORY`), else in `/var/lib/mecanywhere-executor`
/// when that can be made, else in `$XDG_STATE_HOME` (or `~/.local/state`)
/// `/mecanywhere-executor`.
pub fn default_state_file() -> std::path::PathBuf {
    use std::path::PathBuf;
    const FILE: &str = "images.json";
    if let Some(dir) = systemd_directory("STATE_DIRECTORY") {
        return dir.join(FILE);
    }
    let system = PathBuf::from("/var/lib/mecanywhere-executor");
    if std::fs::create_dir_all(&system).is_ok() {
        return system.join(FILE);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("mecanywhere-executor").join(FILE)
}

/// How long idle containers are kept (`keep_alive`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum KeepAlivePolicy {
    /// Every idle container is kept for `idle_timeout`.
    #[default]
    Fixed,
    /// Per task key, learned from the idle times between its requests (see
    /// [`crate::keepalive`]); `idle_timeout` caps every keep-alive. The YAML file selects
    /// it with the paper's parameters; other parameters are for tests and simulations.
    Adaptive(crate::keepalive::Params),
    /// Per task key, by the cost rule (see [`crate::keepalive::decide_priced`]): an idle
    /// container is kept over the window of its key's idle times worth most when a warm
    /// start is worth `price` MB·s of idle memory-time (`keep_alive_price`), on every key
    /// alike; `idle_timeout` caps every keep-alive and is the keep-alive of keys with too
    /// few idle times yet. The YAML file selects the paper's histogram parameters.
    Priced {
        params: crate::keepalive::Params,
        price: f64,
    },
}

/// The default `keep_alive_price`, MB·s: 128 MB for 15 minutes (see BENCHMARKS.md).
pub const DEFAULT_KEEP_ALIVE_PRICE: f64 = 128.0 * 900.0;

/// The policy `keep_alive` (and `keep_alive_price`, for `priced`: a number of MB·s above
/// 0, at most [`crate::keepalive::MAX_PRICE`]) name, as the YAML file and `/update-config`
/// give them; a price with another policy is refused.
pub fn keep_alive_policy(name: &str, price: Option<f64>) -> Result<KeepAlivePolicy, ConfigError> {
    let policy = match name.trim() {
        "fixed" => KeepAlivePolicy::Fixed,
        "adaptive" => KeepAlivePolicy::Adaptive(crate::keepalive::Params::default()),
        "priced" => {
            let price = price.unwrap_or(DEFAULT_KEEP_ALIVE_PRICE);
            crate::keepalive::Rule::Priced { price }
                .validate()
                .map_err(|e| invalid("keep_alive_price", e.message))?;
            return Ok(KeepAlivePolicy::Priced {
                params: crate::keepalive::Params::priced(),
                price,
            });
        }
        other => {
            return Err(invalid(
                "keep_alive",
                format!("{other:?}: use \"fixed\", \"adaptive\" or \"priced\""),
            ))
        }
    };
    match price {
        Some(_) => Err(invalid(
            "keep_alive_price",
            format!(
                "applies to keep_alive \"priced\" only, not {:?}",
                name.trim()
            ),
        )),
        None => Ok(policy),
    }
}

/// How log lines are written (`log_format`, `--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The default API address: loopback only. Exposing the executor is a decision (see README).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2591";

/// Limits applied to every task container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    pub pids_limit: i64,
    pub nofile_limit: i64,
    /// json-file log rotation: size of one file (Docker syntax, e.g. `10m`) and file count.
    pub log_max_size: String,
    pub log_max_files: u32,
    /// Read-only root filesystem with a tmpfs at `/tmp`.
    pub read_only_rootfs: bool,
}

impl Default for Hardening {
    fn default() -> Self {
        Hardening {
            pids_limit: 1024,
            nofile_limit: 4096,
            log_max_size: "10m".into(),
            log_max_files: 2,
            read_only_rootfs: false,
        }
    }
}

/// Environment variable that sets (and overrides) `auth_token`.
pub const TOKEN_ENV: &str = "MECANYWHERE_EXECUTOR_TOKEN";

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Duration::from_secs(60),
            start_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(300),
            queue_timeout: Duration::from_secs(60),
            cpu: 4.0,
            mem_mb: 4096,
            has_gpu: false,
            microvm_runtime: None,
            sgx: SgxConfig::default(),
            task_network: TaskNetwork::Isolated,
            network: None,
            socket_dir: None,
            retired: Vec::new(),
            name: "mecanywhere".to_string(),
            pull_timeout: Duration::from_secs(600),
            pull_stall_timeout: Duration::from_secs(120),
            max_concurrent_pulls: 2,
            max_request_bytes: 64 * 1024 * 1024,
            max_answer_bytes: 64 * 1024 * 1024,
            hardening: Hardening::default(),
            task_tty: true,
            auth_token: None,
            prewarm: Vec::new(),
            listen: DEFAULT_LISTEN.parse().expect("a valid address"),
            max_connections: 1024,
            max_connections_per_peer: 256,
            max_requests_in_flight: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            log_format: LogFormat::Text,
            background_eviction: true,
            refills_wait_for_requests: true,
            sandbox_pool: 8,
            sandbox_memory_mb: 6,
            spare_containers: 4,
            spare_memory_mb: 2048,
            keep_alive: KeepAlivePolicy::Fixed,
            image_gc: ImageGc::default(),
            engine: EngineChoice::Docker,
        }
    }
}

/// The longest duration any setting takes (timeouts, idle time): 365 days. Far below what
/// overflows clock arithmetic, far above any sensible setting.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The largest CPU figure (cores) and memory figure (MB, 16 TiB) the executor accepts.
pub const MAX_CPU: f64 = 4096.0;
pub const MAX_MEM_MB: i64 = 16 * 1024 * 1024;

/// Parses a duration such as `"30s"`, `"2m"` or `"1h 30m"`, from 1 ms to [`MAX_DURATION`].
fn duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("{text:?} is not a duration like \"30s\" ({e})"),
        )
    })?;
    if d < Duration::from_millis(1) || d > MAX_DURATION {
        return Err(invalid(
            key,
            format!("{text:?}: use a duration from 1ms to 365days"),
        ));
    }
    Ok(d)
}

/// Checks a task CPU budget value (`cpu` in the file or in `/update-config`).
pub fn check_cpu(cpu: f64) -> Result<f64, ConfigError> {
    if !cpu.is_finite() || cpu <= 0.0 {
        return Err(invalid(
            "cpu",
            format!("{cpu} cores: must be a number above 0"),
        ));
    }
    if cpu > MAX_CPU {
        return Err(invalid(
            "cpu",
            format!("{cpu} cores: use at most {MAX_CPU} cores"),
        ));
    }
    Ok(cpu)
}

/// Checks a task memory budget value in MB.
pub fn check_mem(mem: i64) -> Result<u64, ConfigError> {
    if !(1..=MAX_MEM_MB).contains(&mem) {
        return Err(invalid(
            "mem",
            format!("{mem} MB: use 1 to {MAX_MEM_MB} MB"),
        ));
    }
    Ok(mem as u64)
}

/// The longest idle timeout in minutes (`timeout`): [`MAX_DURATION`].
pub const MAX_TIMEOUT_MINUTES: i64 = (MAX_DURATION.as_secs() / 60) as i64;

/// Checks an idle timeout given in minutes (`timeout`).
pub fn check_timeout_minutes(minutes: i64) -> Result<Duration, ConfigError> {
    if !(1..=MAX_TIMEOUT_MINUTES).contains(&minutes) {
        return Err(invalid(
            "timeout",
            format!("{minutes} minutes: use 1 to {MAX_TIMEOUT_MINUTES} minutes (365 days)"),
        ));
    }
    Ok(Duration::from_secs(minutes as u64 * 60))
}

fn prewarm_key(entry: RawPrewarm) -> Result<TaskKey, String> {
    crate::image_ref::validate(&entry.image)
        .map_err(|why| format!("image {:?}: {why}", entry.image))?;
    if !entry.cpu.is_finite() || cores_to_milli(entry.cpu) == 0 || entry.cpu < 0.0 {
        return Err(format!("cpu {} must be above 0", entry.cpu));
    }
    if entry.cpu > MAX_CPU {
        return Err(format!("cpu {}: use at most {MAX_CPU} cores", entry.cpu));
    }
    if !(1..=MAX_MEM_MB).contains(&entry.mem) {
        return Err(format!("mem {}: use 1 to {MAX_MEM_MB} MB", entry.mem));
    }
    if entry.count != 1 {
        return Err(format!(
            "count {}: one container is kept per task key (it serves concurrent requests)",
            entry.count
        ));
    }
    let runtime = match entry.runtime.as_deref() {
        None | Some("container") => Runtime::Container,
        Some("microVM") => Runtime::MicroVm,
        Some(other) => {
            return Err(format!(
                "runtime {other:?}: use \"container\" or \"microVM\""
            ))
        }
    };
    Ok(TaskKey {
        image: entry.image,
        runtime,
        demand: Demand {
            milli_cpu: cores_to_milli(entry.cpu),
            mem_mb: entry.mem as u64,
        },
        gpu_count: 0,
        use_sgx: entry.use_sgx,
    })
}

/// The whole-number settings with a fixed range: key, smallest, largest value accepted.
/// A smallest of 0 turns the feature off. [`ranged`] checks a value against its row; the
/// message names the range, e.g. `sandbox_pool: 65: use 0 (off) to 64`.
const RANGES: &[(&str, i128, i128)] = &[
    ("max_concurrent_pulls", 1, 64),
    ("pids_limit", 16, 4_194_304),
    ("nofile_limit", 64, 1_048_576),
    ("log_max_files", 1, 100),
    ("max_connections", 1, 1_000_000),
    ("max_requests_in_flight", 1, 1_000_000),
    ("sandbox_pool", 0, 64),
    // Docker refuses memory limits under 6 MB.
    ("sandbox_memory_mb", 6, 256),
    ("spare_containers", 0, 64),
    ("spare_memory_mb", 0, MAX_MEM_MB as i128),
];

/// `n` if it is within the range [`RANGES`] gives `key`.
fn ranged<T: Copy + Into<i128> + std::fmt::Display>(
    key: &'static str,
    n: T,
) -> Result<T, ConfigError> {
    let &(_, min, max) = RANGES
        .iter()
        .find(|(k, _, _)| *k == key)
        .expect("every ranged key has a row in RANGES");
    if (min..=max).contains(&n.into()) {
        return Ok(n);
    }
    let min = if min == 0 {
        "0 (off)".to_string()
    } else {
        min.to_string()
    };
    Err(invalid(key, format!("{n}: use {min} to {max}")))
}

fn byte_limit(key: &'static str, n: u64) -> Result<usize, ConfigError> {
    if !(1024..=(1 << 40)).contains(&n) {
        return Err(invalid(key, format!("{n} bytes: use 1 KiB to 1 TiB")));
    }
    Ok(n as usize)
}

fn non_empty(key: &'static str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(invalid(key, "must not be empty")),
        other => Ok(other),
    }
}

impl Config {
    /// Parses and validates YAML text; `path` is only used in messages.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        };
        Config::from_raw(raw)
    }

    /// Reads `path` if given, else [`DEFAULT_CONFIG_FILE`] if it exists, else the defaults;
    /// then applies [`TOKEN_ENV`] from the environment.
    pub fn load(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                Some(PathBuf::from(DEFAULT_CONFIG_FILE))
            }
            None => None,
        };
        let mut config = match &path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Config::from_yaml(&text, path)?
            }
            None => Config::default(),
        };
        if let Ok(token) = std::env::var(TOKEN_ENV) {
            if !token.trim().is_empty() {
                config.auth_token = Some(token);
            }
        }
        Ok((config, path))
    }

    fn from_raw(mut raw: RawConfig) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let spares_set = raw.spare_containers.is_some();
        let image_gc_set = raw.image_gc.is_some();
        c.read_tasks(&mut raw)?;
        c.read_network(&mut raw)?;
        c.read_hardening(&mut raw)?;
        c.read_prewarm(&mut raw)?;
        c.read_front(&mut raw)?;
        c.read_pools(&mut raw)?;
        if let Some(value) = raw.image_gc.take() {
            c.image_gc = ImageGc::from_value(value, MAX_DURATION)
                .map_err(|message| invalid("image_gc", message))?;
        }
        if c.engine.is_swarm() {
            c.fit_swarm(spares_set, image_gc_set)?;
        }
        Ok(c)
    }

    /// Refuses what a Swarm cannot honour, and turns off by default what does not apply
    /// there (`spares_set`, `image_gc_set`: the file set those keys).
    fn fit_swarm(&mut self, spares_set: bool, image_gc_set: bool) -> Result<(), ConfigError> {
        if self.task_network != TaskNetwork::Isolated {
            return Err(invalid(
                "task_network",
                "engine: swarm runs tasks only isolated: a task on another node cannot be \
                 fenced from that node's network, so internet would reach the owner's LAN",
            ));
        }
        if self.sgx.enable {
            return Err(invalid(
                "sgx",
                "engine: swarm cannot map devices into a service's tasks; SGX tasks need \
                 engine: docker",
            ));
        }
        // A spare is claimed by changing its limits, which restarts a Swarm task.
        if spares_set && self.spare_containers > 0 {
            return Err(invalid(
                "spare_containers",
                "engine: swarm keeps no spare containers (a service's limits cannot change \
                 without a new task); set 0 or remove the key",
            ));
        }
        self.spare_containers = 0;
        if image_gc_set && self.image_gc.enabled {
            return Err(invalid(
                "image_gc",
                "engine: swarm leaves images to each node's daemon (each pulls for itself); \
                 set image_gc: off or remove the key, and prune on the nodes",
            ));
        }
        self.image_gc.enabled = false;
        Ok(())
    }

    /// The tasks' resources, timeouts and runtimes.
    fn read_tasks(&mut self, raw: &mut RawConfig) -> Result<(), ConfigError> {
        let swarm = raw.swarm.take();
        let named = match (raw.engine_type.take(), raw.engine.take()) {
            (Some(t), Some(e)) if t.trim() != e.trim() => {
                return Err(invalid(
                    "engine",
                    format!("{e:?} contradicts type: {t:?} (type is the older spelling of engine)"),
                ))
            }
            (Some(t), None) => Some(("type", t)),
            (_, Some(e)) => Some(("engine", e)),
            (None, None) => None,
        };
        self.engine = match named {
            Some((key, name)) => {
                EngineChoice::parse(&name, swarm).map_err(|message| invalid(key, message))?
            }
            None if swarm.is_some() => {
                return Err(invalid(
                    "swarm",
                    "a swarm: section needs engine: swarm (the engine is docker)",
                ))
            }
            None => EngineChoice::Docker,
        };
        if let Some(m) = raw.timeout.take() {
            self.idle_timeout = check_timeout_minutes(m)?;
        }
        if let Some(d) = raw.idle_timeout.take() {
            self.idle_timeout = duration("idle_timeout", &d)?;
        }
        if let Some(d) = raw.start_timeout.take() {
            self.start_timeout = duration("start_timeout", &d)?;
        }
        if let Some(d) = raw.request_timeout.take() {
            self.request_timeout = duration("request_timeout", &d)?;
        }
        if let Some(d) = raw.queue_timeout.take() {
            self.queue_timeout = duration("queue_timeout", &d)?;
        }
        if let Some(cpu) = raw.cpu.take() {
            self.cpu = check_cpu(cpu)?;
        }
        if let Some(mem) = raw.mem.take() {
            self.mem_mb = check_mem(mem)?;
        }
        self.has_gpu = raw.has_gpu.take().unwrap_or(false);
        self.microvm_runtime = non_empty("microVM_runtime", raw.microvm_runtime.take())?;
        if let Some(sgx) = raw.sgx.take() {
            if sgx.enable && (sgx.sgx_device.is_none() || sgx.aesmd_path.is_none()) {
                return Err(invalid(
                    "sgx",
                    "enable: true needs both sgx_device and aesmd_path",
                ));
            }
            self.sgx = sgx;
        }
        Ok(())
    }

    /// How tasks reach the network (`task_network`, `network`, the sockets' directory), and the retired network settings.
    fn read_network(&mut self, raw: &mut RawConfig) -> Result<(), ConfigError> {
        self.task_network = match raw.task_network.as_deref().map(str::trim) {
            None | Some("isolated") => TaskNetwork::Isolated,
            Some("internet") => TaskNetwork::Internet,
            Some(other) => {
                return Err(invalid(
                    "task_network",
                    format!("{other:?}: use \"isolated\" or \"internet\""),
                ))
            }
        };
        match raw.internal_network.take() {
            Some(true) if self.task_network == TaskNetwork::Internet => {
                return Err(invalid(
                    "internal_network",
                    "true contradicts task_network: internet; internal_network is retired, \
                     remove it",
                ))
            }
            Some(true) => self.retired.push(
                "internal_network: true is retired: tasks are isolated by default \
                 (task_network: isolated), which also keeps them from the host and each other"
                    .into(),
            ),
            Some(false) => self.retired.push(
                "internal_network is retired and ignored: see task_network (default isolated)"
                    .into(),
            ),
            None => {}
        }
        match raw.publish_task_ports.take() {
            Some(true) => {
                return Err(invalid(
                    "publish_task_ports",
                    "is retired: the executor reaches every task through a socket in its \
                     sandbox, on every host, and publishes no task port; remove it",
                ))
            }
            Some(false) => self.retired.push(
                "publish_task_ports is retired and ignored: no task port is published".into(),
            ),
            None => {}
        }
        self.network = non_empty("network", raw.network.take())?;
        if let (Some(network), TaskNetwork::Isolated) = (&self.network, self.task_network) {
            return Err(invalid(
                "network",
                format!(
                    "{network:?} applies only to task_network: internet (the network the \
                     sandboxes reach the internet through); isolated tasks have no network: \
                     remove it, or set task_network: internet"
                ),
            ));
        }
        if let Some(dir) = non_empty("socket_dir", raw.socket_dir.take())? {
            let dir = std::path::PathBuf::from(dir);
            if !dir.is_absolute() {
                return Err(invalid("socket_dir", "must be an absolute path"));
            }
            self.socket_dir = Some(dir);
        }
        Ok(())
    }

    /// Pulls, the limits of what a task may send and answer, and the hardening of its container.
    fn read_hardening(&mut self, raw: &mut RawConfig) -> Result<(), ConfigError> {
        if let Some(d) = raw.pull_timeout.take() {
            self.pull_timeout = duration("pull_timeout", &d)?;
        }
        if let Some(d) = raw.pull_stall_timeout.take() {
            self.pull_stall_timeout = duration("pull_stall_timeout", &d)?;
        }
        if let Some(n) = raw.max_concurrent_pulls.take() {
            self.max_concurrent_pulls = ranged("max_concurrent_pulls", n)?;
        }
        if let Some(n) = raw.max_request_bytes.take() {
            self.max_request_bytes = byte_limit("max_request_bytes", n)?;
        }
        if let Some(n) = raw.max_answer_bytes.take() {
            self.max_answer_bytes = byte_limit("max_answer_bytes", n)?;
        }
        if let Some(n) = raw.pids_limit.take() {
            self.hardening.pids_limit = ranged("pids_limit", n)?;
        }
        if let Some(n) = raw.nofile_limit.take() {
            self.hardening.nofile_limit = ranged("nofile_limit", n)?;
        }
        if let Some(size) = raw.log_max_size.take() {
            let ok = size.len() > 1
                && size[..size.len() - 1].bytes().all(|b| b.is_ascii_digit())
                && size.ends_with(['k', 'm', 'g']);
            if !ok {
                return Err(invalid(
                    "log_max_size",
                    format!("{size:?}: use e.g. \"10m\""),
                ));
            }
            self.hardening.log_max_size = size;
        }
        if let Some(n) = raw.log_max_files.take() {
            self.hardening.log_max_files = ranged("log_max_files", n)?;
        }
        self.hardening.read_only_rootfs = raw.read_only_rootfs.take().unwrap_or(false);
        self.task_tty = raw.task_tty.take().unwrap_or(true);
        self.auth_token = non_empty("auth_token", raw.auth_token.take())?;
        Ok(())
    }

    /// The task keys kept warm ahead of demand (`prewarm`).
    fn read_prewarm(&mut self, raw: &mut RawConfig) -> Result<(), ConfigError> {
        for (i, entry) in raw
            .prewarm
            .take()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let key = prewarm_key(entry)
                .map_err(|m| invalid("prewarm", format!("entry {}: {m}", i + 1)))?;
            if self.prewarm.iter().any(|p| p.key == key) {
                return Err(invalid(
                    "prewarm",
                    format!("entry {}: the same task key is listed twice", i + 1),
                ));
            }
            self.prewarm.push(Prewarm { key });
        }
        Ok(())
    }

    /// The HTTP front: the address, connections, requests in flight, the read timeouts, logs.
    fn read_front(&mut self, raw: &mut RawConfig) -> Result<(), ConfigError> {
        if let Some(listen) = raw.listen.take() {
            self.listen = listen.trim().parse().map_err(|_| {
                invalid(
                    "listen",
                    format!("{listen:?}: use an address and port like \"127.0.0.1:2591\""),
                )
            })?;
        }
        if let Some(n) = raw.max_connections.take() {
            self.max_connections = ranged("max_connections", n)?;
        }
        if let Some(n) = raw.max_connections_per_peer.take() {
            if !(1..=self.max_connections).contains(&n) {
                return Err(invalid(
                    "max_connections_per_peer",
                    format!("{n}: use 1 to max_connections ({})", self.max_connections),
                ));
            }
            self.max_connections_per_peer = n;
        } else {
            // The default never exceeds a smaller max_connections.
            self.max_connections_per_peer = self.max_connections_per_peer.min(self.max_connections);
        }
        if let Some(n) = raw.max_requests_in_flight.take() {
            self.max_requests_in_flight = ranged("max_requests_in_flight", n)?;
        }
        if let Some(d) = raw.header_read_timeout.take() {
            self.header_read_timeout = duration("header_read_timeout", &d)?;
        }
        if let Some(d) = raw.idle_connection_timeout.take() {
            self.idle_connection_timeout = duration("idle_connection_timeout", &d)?;
        }
        if let Some(d) = raw.body_read_timeout.take() {
            self.body_read_timeout = duration("body_read_timeout", &d)?;
        }
        self.log_format = raw.log_format.take().unwrap_or_default();
        Ok(())
    }

    /// The pools (sandboxes, spares), the keep-alive policy, and the executor's name.
    fn read_pools(&mut self, raw: &mut RawConfig) -> Result<(), ConfigError> {
        self.background_eviction = raw.background_eviction.take().unwrap_or(true);
        self.refills_wait_for_requests = raw.refills_wait_for_requests.take().unwrap_or(true);
        if let Some(n) = raw.sandbox_pool.take() {
            self.sandbox_pool = ranged("sandbox_pool", n)?;
        }
        if let Some(n) = raw.sandbox_memory_mb.take() {
            self.sandbox_memory_mb = ranged("sandbox_memory_mb", n)?;
        }
        if let Some(n) = raw.spare_containers.take() {
            self.spare_containers = ranged("spare_containers", n)?;
        }
        if let Some(n) = raw.spare_memory_mb.take() {
            self.spare_memory_mb = ranged("spare_memory_mb", n)?;
        }
        if raw.keep_alive.is_some() || raw.keep_alive_price.is_some() {
            let name = raw.keep_alive.as_deref().unwrap_or("fixed");
            self.keep_alive = keep_alive_policy(name, raw.keep_alive_price.take())?;
        }
        if let Some(name) = raw.name.take() {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
            if !ok {
                return Err(invalid(
                    "name",
                    format!("{name:?}: use 1-64 letters, digits, '-', '_' or '.'"),
                ));
            }
            self.name = name;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("test.yaml"))
    }

    #[test]
    fn every_ranged_setting_takes_its_bounds_and_refuses_one_beyond() {
        for &(key, min, max) in RANGES {
            for ok in [min, max] {
                assert!(
                    parse(&format!("{key}: {ok}")).is_ok(),
                    "{key}: {ok} is within its range"
                );
            }
            let min_text = if min == 0 {
                "0 (off)".to_string()
            } else {
                min.to_string()
            };
            for bad in [min - 1, max + 1] {
                let err = parse(&format!("{key}: {bad}")).unwrap_err().to_string();
                // Below 0 the field's unsigned type refuses it first, naming the key too.
                let range = bad < 0 || err.contains(&format!("{bad}: use {min_text} to {max}"));
                assert!(err.contains(key) && range, "{key}: {bad}: {err}");
            }
        }
    }

    #[test]
    fn empty_file_gives_contract_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.cpu, 4.0);
        assert_eq!(c.mem_mb, 4096);
        assert!(!c.has_gpu && c.microvm_runtime.is_none() && !c.sgx.enable);
    }

    #[test]
    fn contract_example_parses() {
        let c = parse(
            "type: \"docker\"\ntimeout: 2\ncpu: 2\nmem: 2048\nhas_gpu: true\nmicroVM_runtime: kata\n\
             sgx:\n  enable: true\n  sgx_device: /dev/sgx_enclave\n  aesmd_path: /var/run/aesmd\n",
        )
        .unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.cpu, 2.0);
        assert_eq!(c.mem_mb, 2048);
        assert!(c.has_gpu);
        assert_eq!(c.microvm_runtime.as_deref(), Some("kata"));
        assert_eq!(c.sgx.sgx_device.as_deref(), Some("/dev/sgx_enclave"));
    }

    #[test]
    fn idle_timeout_overrides_timeout() {
        let c = parse("timeout: 5\nidle_timeout: 30s\nqueue_timeout: 2s\ncpu: 0.5\n").unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.queue_timeout, Duration::from_secs(2));
        assert_eq!(c.cpu, 0.5);
    }

    #[test]
    fn keep_alive_is_fixed_unless_adaptive_is_asked_for() {
        assert_eq!(parse("").unwrap().keep_alive, KeepAlivePolicy::Fixed);
        assert_eq!(
            parse("keep_alive: fixed\n").unwrap().keep_alive,
            KeepAlivePolicy::Fixed
        );
        assert_eq!(
            parse("keep_alive: adaptive\n").unwrap().keep_alive,
            KeepAlivePolicy::Adaptive(crate::keepalive::Params::default())
        );
    }

    #[test]
    fn refills_wait_for_requests_unless_switched_off() {
        assert!(parse("").unwrap().refills_wait_for_requests);
        assert!(
            !parse("refills_wait_for_requests: false\n")
                .unwrap()
                .refills_wait_for_requests
        );
        assert!(parse("refills_wait_for_requests: sometimes\n").is_err());
    }

    #[test]
    fn keep_alive_priced_takes_a_price() {
        let priced = |price| KeepAlivePolicy::Priced {
            params: crate::keepalive::Params::priced(),
            price,
        };
        assert_eq!(
            parse("keep_alive: priced\n").unwrap().keep_alive,
            priced(DEFAULT_KEEP_ALIVE_PRICE)
        );
        assert_eq!(
            parse("keep_alive: priced\nkeep_alive_price: 96000\n")
                .unwrap()
                .keep_alive,
            priced(96000.0)
        );
        for (yaml, key) in [
            (
                "keep_alive: priced\nkeep_alive_price: 0\n",
                "keep_alive_price",
            ),
            (
                "keep_alive: priced\nkeep_alive_price: -5\n",
                "keep_alive_price",
            ),
            (
                "keep_alive: priced\nkeep_alive_price: 1e300\n",
                "keep_alive_price",
            ),
            (
                "keep_alive: adaptive\nkeep_alive_price: 96000\n",
                "keep_alive_price",
            ),
            ("keep_alive_price: 96000\n", "keep_alive_price"),
        ] {
            match parse(yaml) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{yaml}"),
                other => panic!("{yaml}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("cpus: 2\n").unwrap_err().to_string();
        assert!(e.contains("cpus"), "{e}");
    }

    #[test]
    fn prewarm_entries_become_task_keys() {
        let c = parse("prewarm:\n  - image: meca-echo:latest\n    cpu: 0.5\n    mem: 64\n  - image: other:v1\n").unwrap();
        assert_eq!(c.prewarm.len(), 2);
        assert_eq!(
            c.prewarm[0].key.demand,
            Demand {
                milli_cpu: 500,
                mem_mb: 64
            }
        );
        assert_eq!(
            c.prewarm[1].key.demand,
            Demand {
                milli_cpu: 1000,
                mem_mb: 128
            },
            "request defaults"
        );
        for bad in [
            "prewarm:\n  - image: \"a b\"\n",
            "prewarm:\n  - image: a\n    cpu: 0\n",
            "prewarm:\n  - image: a\n    count: 2\n",
            "prewarm:\n  - image: a\n    runtime: vm\n",
            "prewarm:\n  - image: a\n  - image: a\n",
            "prewarm:\n  - image: a\n    cpus: 1\n",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("prewarm"), "{bad:?} gave {e}");
        }
    }

    #[test]
    fn tasks_are_isolated_unless_the_owner_chooses_internet() {
        let c = parse("").unwrap();
        assert_eq!(c.task_network, TaskNetwork::Isolated);
        assert!(c.retired.is_empty());
        let c = parse("task_network: internet\nnetwork: my-net\n").unwrap();
        assert_eq!(c.task_network, TaskNetwork::Internet);
        assert_eq!(c.network.as_deref(), Some("my-net"));
        // The retired keys: accepted when they ask for nothing weaker, and named.
        let c = parse("internal_network: true\npublish_task_ports: false\n").unwrap();
        assert_eq!(c.task_network, TaskNetwork::Isolated);
        assert_eq!(c.retired.len(), 2, "{:?}", c.retired);
        let c = parse("socket_dir: /run/x\n").unwrap();
        assert_eq!(c.socket_dir.as_deref(), Some(Path::new("/run/x")));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("cpu: 0\n", "cpu"),
            ("cpu: -1\n", "cpu"),
            ("mem: 0\n", "mem"),
            ("timeout: 0\n", "timeout"),
            ("idle_timeout: soon\n", "idle_timeout"),
            ("start_timeout: 0s\n", "start_timeout"),
            ("type: podman\n", "type"),
            ("name: \"a b\"\n", "name"),
            ("sgx:\n  enable: true\n", "sgx"),
            ("pull_timeout: forever\n", "pull_timeout"),
            ("max_request_bytes: 10\n", "max_request_bytes"),
            ("max_answer_bytes: 0\n", "max_answer_bytes"),
            ("pids_limit: 1\n", "pids_limit"),
            ("nofile_limit: 2\n", "nofile_limit"),
            ("log_max_size: big\n", "log_max_size"),
            ("log_max_files: 0\n", "log_max_files"),
            ("auth_token: \"\"\n", "auth_token"),
            ("max_concurrent_pulls: 0\n", "max_concurrent_pulls"),
            ("listen: everywhere\n", "listen"),
            ("keep_alive: sometimes\n", "keep_alive"),
            ("keep_alive: 5m\n", "keep_alive"),
            ("max_connections: 0\n", "max_connections"),
            ("max_connections_per_peer: 0\n", "max_connections_per_peer"),
            (
                "max_connections: 8\nmax_connections_per_peer: 9\n",
                "max_connections_per_peer",
            ),
            ("max_requests_in_flight: 0\n", "max_requests_in_flight"),
            ("task_network: open\n", "task_network"),
            ("network: mecanywhere\n", "network"),
            ("publish_task_ports: true\n", "publish_task_ports"),
            (
                "internal_network: true\ntask_network: internet\n",
                "internal_network",
            ),
            ("socket_dir: relative/dir\n", "socket_dir"),
            ("header_read_timeout: 0s\n", "header_read_timeout"),
            (
                "idle_connection_timeout: forever\n",
                "idle_connection_timeout",
            ),
            // Numbers that would overflow clock or size arithmetic.
            ("queue_timeout: 500000000000y\n", "queue_timeout"),
            ("idle_timeout: 366days\n", "idle_timeout"),
            ("timeout: 200000000000000000\n", "timeout"),
            ("timeout: 525601\n", "timeout"),
            ("mem: 9223372036854775807\n", "mem"),
            ("cpu: 1e300\n", "cpu"),
            ("pids_limit: 9223372036854775807\n", "pids_limit"),
            ("nofile_limit: 9223372036854775807\n", "nofile_limit"),
            (
                "prewarm:\n  - image: a\n    mem: 9223372036854775807\n",
                "prewarm",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} gave {e}");
        }
        let e = parse("mem: lots\n").unwrap_err().to_string();
        assert!(e.contains("mem"), "{e}");
    }

    #[test]
    fn max_connections_per_peer_stays_within_max_connections() {
        assert_eq!(parse("").unwrap().max_connections_per_peer, 256);
        // The default follows a smaller max_connections instead of refusing it.
        assert_eq!(
            parse("max_connections: 2\n")
                .unwrap()
                .max_connections_per_peer,
            2
        );
        let c = parse("max_connections: 64\nmax_connections_per_peer: 64\n").unwrap();
        assert_eq!((c.max_connections, c.max_connections_per_peer), (64, 64));
    }

    #[test]
    fn the_engine_is_docker_unless_swarm_is_named() {
        assert_eq!(parse("").unwrap().engine, EngineChoice::Docker);
        assert_eq!(
            parse("type: docker\n").unwrap().engine,
            EngineChoice::Docker
        );
        let c = parse(
            "engine: swarm\nswarm:\n  node_runtime: kata\n  constraints: [\"node.role==worker\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.engine,
            EngineChoice::Swarm(SwarmSettings {
                node_runtime: "kata".into(),
                constraints: vec!["node.role==worker".into()],
            })
        );
        assert!(parse("type: swarm\n").unwrap().engine.is_swarm());
        // What a swarm cannot do is off by default there, and refused when asked for.
        let c = parse("engine: swarm\n").unwrap();
        assert_eq!(c.spare_containers, 0);
        assert!(!c.image_gc.enabled);
        assert!(parse("engine: swarm\nspare_containers: 0\nimage_gc: off\n").is_ok());
        for (yaml, key) in [
            ("engine: swarm\ntype: docker\n", "engine"),
            ("swarm:\n  node_runtime: runc\n", "swarm"),
            ("engine: docker\nswarm: {}\n", "engine"),
            ("engine: kubernetes\n", "engine"),
            ("engine: swarm\ntask_network: internet\n", "task_network"),
            ("engine: swarm\nspare_containers: 2\n", "spare_containers"),
            ("engine: swarm\nimage_gc:\n  max_bytes: 10GB\n", "image_gc"),
            (
                "engine: swarm\nsgx:\n  enable: true\n  sgx_device: /dev/sgx\n  aesmd_path: /a\n",
                "sgx",
            ),
        ] {
            match parse(yaml) {
                Err(ConfigError::Invalid { key: k, message }) => {
                    assert_eq!(k, key, "{yaml}: {message}")
                }
                other => panic!("{yaml}: {other:?}"),
            }
        }
    }
}
