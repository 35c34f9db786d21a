//! The container engine seen by the executor: one trait, [`Engine`], and its
//! implementations: Docker ([`docker`]), Docker Swarm ([`swarm`]), in memory ([`memory`],
//! for tests).
//!
//! Owns the translation of a [`ContainerSpec`] into engine calls and of engine failures into
//! [`EngineError`]s a host operator can act on. It must not know about pools, budgets or
//! HTTP requests: a second engine (another daemon, Kubernetes) is added by implementing the
//! trait, without touching the executor.

pub mod docker;
mod docker_logs;
pub mod holder;
pub mod memory;
pub mod ready;
pub mod swarm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

pub use crate::config::Hardening;
pub use crate::host::Filesystem;
use crate::pull_progress::PullProgress;
pub use crate::task_client::TaskAddr;

/// Label on every container this executor creates: the executor's configured `name`.
pub const LABEL_EXECUTOR: &str = "org.mecanywhere.executor";
/// Label: the id of the executor process instance that created the container.
pub const LABEL_INSTANCE: &str = "org.mecanywhere.executor.instance";
/// Label: the task key the container serves.
pub const LABEL_TASK_KEY: &str = "org.mecanywhere.task-key";
/// Labels: the resources reserved for the container.
pub const LABEL_CPU: &str = "org.mecanywhere.cpu";
pub const LABEL_MEM: &str = "org.mecanywhere.mem-mb";
/// Label: what a container is for when it is not a task's own: [`ROLE_SANDBOX`].
pub const LABEL_ROLE: &str = "org.mecanywhere.role";
/// [`LABEL_ROLE`] of a sandbox holder.
pub const ROLE_SANDBOX: &str = "sandbox";
/// [`LABEL_ROLE`] of a container started as a spare (kept after it is claimed: Docker cannot
/// change labels).
pub const ROLE_SPARE: &str = "spare";

/// The port a task listens on inside its container.
pub const TASK_PORT: u16 = 8080;
/// The line a task prints on stdout once it is ready.
pub const READY_LINE: &str = "meca-init-done";

/// SGX device and AESM socket directory mapped into a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgxMounts {
    pub device: String,
    pub aesmd_path: String,
}

/// Everything needed to create one task container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub image: String,
    /// CPU quota in units of 10⁻⁹ cores.
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    /// OCI runtime registered with the engine; `None` = the engine's default.
    pub runtime: Option<String>,
    pub labels: HashMap<String, String>,
    pub sgx: Option<SgxMounts>,
    /// UUIDs of the NVIDIA GPUs the task gets (device request, driver `nvidia`).
    pub gpus: Vec<String>,
    pub hardening: Hardening,
    /// Give the task a terminal as stdout and stderr (one merged stream), so C stdio and
    /// CPython line-buffer what it prints.
    pub tty: bool,
    /// The sandbox whose network namespace the task joins: its only network, and the only
    /// way to it ([`SandboxRef::addr`]).
    pub sandbox: SandboxRef,
}

/// A started sandbox holder: a container that holds a network namespace, which a task
/// container joins, and relays the executor's connections to the task inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRef {
    pub id: String,
    /// Where a task listening on port 8080 inside the sandbox answers.
    pub addr: TaskAddr,
}

/// What a task's network namespace is connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxNetwork {
    /// Nothing: the namespace has only its loopback interface.
    None,
    /// Docker network `network` (`None`: the default bridge), with every destination in
    /// `blocked` unreachable from inside (routes the task cannot change).
    Egress {
        network: Option<String>,
        blocked: Vec<String>,
    },
}

/// Everything needed to start one sandbox holder.
#[derive(Debug, Clone, PartialEq)]
pub struct HolderSpec {
    /// The holder image ([`Engine::ensure_holder_image`]).
    pub image: String,
    pub labels: HashMap<String, String>,
    pub network: SandboxNetwork,
    /// Where the holder's relay socket appears for the executor: a path in the directory
    /// given to [`Engine::prepare_sandboxes`].
    pub socket: PathBuf,
    pub memory_bytes: i64,
}

/// An image the engine stores, as its disk-usage listing describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub id: String,
    /// Its names: `repository:tag` and `repository@digest` references.
    pub names: Vec<String>,
    /// Bytes on disk, layers it shares with other images included (`docker images`' size).
    pub size: u64,
    /// Of `size`, the bytes in layers other images share.
    pub shared: u64,
    /// Containers (running or not) made from it.
    pub containers: u64,
    /// When it was built, in Unix seconds.
    pub created: i64,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitState {
    pub code: i64,
    pub oom_killed: bool,
    /// The container's memory limit, when it had one.
    pub memory_limit_mb: Option<u64>,
    /// The machine it ran on left the cluster (down or gone): nothing more is known.
    pub node_lost: bool,
}

impl std::fmt::Display for ExitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.node_lost {
            return f.write_str("was lost with the node it ran on (the node is down)");
        }
        if self.oom_killed {
            f.write_str("ran out of memory")?;
            if let Some(limit) = self.memory_limit_mb {
                write!(f, " (limit {limit} MB)")?;
            }
            write!(f, " and was killed (exit code {})", self.code)
        } else {
            write!(f, "exited with code {}", self.code)
        }
    }
}

/// An engine failure, worded for a host operator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("container engine unreachable: {0}")]
    Unreachable(String),
    #[error("image {image} is not present and could not be pulled: {detail}")]
    ImageUnavailable { image: String, detail: String },
    #[error("task container {state} before it printed {READY_LINE}{}", tail_suffix(.output))]
    ExitedBeforeReady { state: ExitState, output: String },
    #[error("task container {0} right after it printed {READY_LINE}")]
    ExitedAfterReady(ExitState),
    #[error("task did not print {READY_LINE} within {}", humantime::format_duration(*.0))]
    ReadyTimeout(Duration),
    #[error("task printed {READY_LINE} but did not listen on port {TASK_PORT} within {} of its start", humantime::format_duration(*.0))]
    NotListening(Duration),
    #[error("pulling image {image} timed out after {}", humantime::format_duration(*.after))]
    PullTimeout { image: String, after: Duration },
    #[error("no space left for image {image} on the disk holding the engine's images: {detail}")]
    NoSpace { image: String, detail: String },
    /// A container (of this executor or any other) uses the image.
    #[error("image {0} is in use by a container")]
    ImageInUse(String),
    #[error("pulling image {image} made no progress for {} (pull_stall_timeout); the registry or the network is stuck", humantime::format_duration(*.after))]
    PullStalled { image: String, after: Duration },
    #[error("container engine refused: {0}")]
    Api(String),
    /// The engine has no driver for the GPUs the task asked for (no NVIDIA runtime).
    #[error("container engine cannot give GPUs: {0}")]
    GpuDriverMissing(String),
    /// No machine of the engine has room for the task (a cluster's scheduler kept it
    /// pending).
    #[error("no room for the task: {0}")]
    NoRoom(String),
    /// The engine cannot do what the task needs.
    #[error("this engine cannot run the task: {0}")]
    Unsupported(String),
    /// The container does not exist (any more).
    #[error("container {0} does not exist")]
    NoSuchContainer(String),
}

fn tail_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; its last output: {output}")
    }
}

/// A container engine. All methods are cancel-safe in the sense that dropping a future
/// leaves at worst a labelled container behind, which [`Engine::list_labelled`] finds.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Whether `image` is present locally.
    async fn image_present(&self, image: &str) -> Result<bool, EngineError>;
    /// Pulls `image` from its registry, reporting each layer's progress to `progress` as
    /// the engine learns it.
    async fn pull(&self, image: &str, progress: &PullProgress) -> Result<(), EngineError>;
    /// The images the engine stores, with their sizes and how many containers use each.
    async fn stored_images(&self) -> Result<Vec<StoredImage>, EngineError>;
    /// Removes the image name `name` (a tag or a digest reference); the image goes with its
    /// last name. An image a container uses (running or not) is not removed:
    /// [`EngineError::ImageInUse`]. Removing a missing name is Ok.
    async fn remove_image(&self, name: &str) -> Result<(), EngineError>;
    /// Where the engine keeps its images, as a path on the engine's host (Docker's
    /// `DockerRootDir`).
    async fn image_root(&self) -> Result<PathBuf, EngineError>;
    /// The filesystem of [`image_root`](Self::image_root) as the engine's host sees it,
    /// measured by a holder of image `holder_image` it is mounted into (read-only, the
    /// holder labelled with `labels` and removed after), so it can be read wherever the
    /// executor runs.
    async fn image_filesystem(
        &self,
        holder_image: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Filesystem, EngineError>;
    /// Creates (does not start) a container; returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError>;
    /// Starts the container and follows its output until the ready line, its exit, or
    /// `deadline`; returns the address at which the task answers.
    async fn start_and_wait_ready(
        &self,
        id: &str,
        spec: &ContainerSpec,
        deadline: Duration,
    ) -> Result<TaskAddr, EngineError>;
    /// How the container ended, or `None` while it is still running.
    async fn exit_state(&self, id: &str) -> Result<Option<ExitState>, EngineError>;
    /// Removes the container (killing it if needed). Removing a missing container is Ok.
    async fn remove(&self, id: &str) -> Result<(), EngineError>;
    /// Kills the container's processes and returns once they are dead; the container stays
    /// until removed. Killing a stopped or missing container is Ok.
    async fn kill(&self, id: &str) -> Result<(), EngineError>;
    /// Ids of all containers (running or not) whose label `key` equals `value`.
    async fn list_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError>;
    /// Ids of the running containers whose label `key` equals `value`.
    async fn running_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError>;
    /// A stream of the ids of containers labelled `key=value` as they stop or are removed
    /// (by anyone). It ends or fails when the engine connection breaks.
    fn container_exits(
        &self,
        key: &str,
        value: &str,
    ) -> BoxStream<'static, Result<String, EngineError>>;
    /// Names of the OCI runtimes the engine has registered.
    async fn runtimes(&self) -> Result<Vec<String>, EngineError>;
    /// Makes ready to give sandbox holders `dir`, the directory where their relay sockets
    /// appear for the executor (the engine finds how to share it with them: the directory
    /// itself, or the volume it is on when the executor runs in a container). Fails with
    /// the reason when it cannot be shared.
    async fn prepare_sandboxes(&self, dir: &Path) -> Result<(), EngineError>;
    /// The capacity tasks are scheduled on, when the engine's machines are not the
    /// executor's own (a cluster: the ready nodes open to tasks, in all); `None`: this
    /// host's. Read at start and then every few seconds: machines come and go.
    async fn capacity(&self) -> Result<Option<crate::host::HostCapacity>, EngineError> {
        Ok(None)
    }
    /// Whether the engine's machines get a task's image themselves when the task starts (a
    /// cluster's nodes each pull for themselves): then the executor neither checks nor
    /// pulls it, and an image no machine can get fails the start
    /// ([`EngineError::ImageUnavailable`]); `image_present` and `pull` speak of the
    /// executor's own machine only.
    fn pulls_at_start(&self) -> bool {
        false
    }
    /// Whether the holders' sockets are files in that directory (an engine that relays in
    /// memory needs no directory at all).
    fn sockets_on_disk(&self) -> bool {
        true
    }
    /// Makes sure the sandbox holder image `name` is present, importing it when absent.
    /// Fails when the holder program does not exist for this architecture.
    async fn ensure_holder_image(&self, name: &str) -> Result<(), EngineError>;
    /// The host's own IPv4 addresses (every interface of the host's network namespace, as
    /// the engine's daemon sees it), found with a holder of image `holder_image` (labelled
    /// with `labels`, removed after).
    async fn host_addresses(
        &self,
        holder_image: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<String>, EngineError>;
    /// Creates and starts a sandbox holder; returns it once its relay socket accepts
    /// connections. A holder that fails half-way is removed.
    async fn start_holder(&self, spec: &HolderSpec) -> Result<SandboxRef, EngineError>;
    /// Changes the CPU quota and memory limit (swap: none beyond memory) of a running
    /// container.
    async fn update_limits(
        &self,
        id: &str,
        nano_cpus: i64,
        memory_bytes: i64,
    ) -> Result<(), EngineError>;
    /// The client that calls the task of a ready container at `addr`: HTTP by default.
    fn task_client(
        &self,
        _id: &str,
        addr: &TaskAddr,
        max_answer_bytes: usize,
    ) -> std::sync::Arc<dyn crate::task_client::TaskCall> {
        std::sync::Arc::new(crate::task_client::TaskClient::new(
            addr.clone(),
            max_answer_bytes,
        ))
    }
}
