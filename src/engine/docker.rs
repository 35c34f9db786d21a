//! [`Engine`] on a Docker daemon, through bollard over the Unix socket (`DOCKER_HOST`
//! honoured), with the API version negotiated so older daemons (API 1.41) work.
//!
//! Owns every Docker API call the executor makes. Readiness is read from the container's
//! output, attached before its start (see [`super::docker_logs`]), never by polling.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerUpdateBody, DeviceMapping,
    DeviceRequest, HostConfig, HostConfigLogConfig, ImageSummary, Mount, MountPointTypeEnum,
    MountTypeEnum, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, InspectContainerOptions,
    KillContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    RemoveImageOptions, StartContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::docker_logs::{Endpoint, LogFollower};
use super::ready::OutputScanner;
use super::{
    holder, ContainerSpec, Engine, EngineError, ExitState, Filesystem, Hardening, HolderSpec,
    SandboxNetwork, SandboxRef, StoredImage, TaskAddr,
};
use crate::image_ref;
use crate::pull_progress::{LayerEvent, PullProgress};

/// Where a holder sees the executor's socket directory.
const HOLDER_DIR: &str = "/run/meca";
/// Where the holder program lives in its image.
const HOLDER_PATH: &str = "/hold";
/// How long a started holder may take until its relay socket accepts connections.
const HOLDER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The Docker engine.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    /// How holders get the executor's socket directory ([`Engine::prepare_sandboxes`]).
    sockets: Arc<OnceLock<SocketDir>>,
    /// Where starting containers' output is followed from (see [`super::docker_logs`]).
    logs: Endpoint,
    /// The API version negotiated with the daemon, as in request paths ("1.41").
    api_version: String,
}

/// The executor's socket directory as a holder gets it.
#[derive(Debug, Clone)]
struct SocketDir {
    /// The directory as the executor sees it.
    local: PathBuf,
    /// The mount that gives it to a holder (at [`HOLDER_DIR`]).
    mount: Mount,
    /// The directory as the holder sees it.
    inside: PathBuf,
    /// The user a holder runs as (the directory's owner), so its socket is the executor's.
    user: String,
}

/// The id of the Docker container this process runs in, if any: Docker bind-mounts the
/// container's `/etc/hostname` from `.../containers/<id>/hostname`.
fn own_container_id(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        if mount_point != "/etc/hostname" {
            return None;
        }
        let (_, rest) = root.split_once("/containers/")?;
        let id = rest.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}
pub(super) fn api_error(e: bollard::errors::Error) -> EngineError {
    use bollard::errors::Error as E;
    match e {
        // Docker says so only in words.
        E::DockerResponseServerError { message, .. }
            if message.contains("could not select device driver") =>
        {
            EngineError::GpuDriverMissing(message)
        }
        E::DockerResponseServerError { message, .. } => EngineError::Api(message),
        E::IOError { err } => EngineError::Unreachable(err.to_string()),
        E::HyperResponseError { err } => EngineError::Unreachable(err.to_string()),
        E::RequestTimeoutError => EngineError::Unreachable("request timed out".into()),
        // Connecting to the daemon's socket failed (daemon down, socket missing).
        E::HyperLegacyError { err } => EngineError::Unreachable(crate::error_text::chain(&err)),
        other => EngineError::Api(other.to_string()),
    }
}

pub(super) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A holder that runs its program once with `args` (space-separated) and exits: labelled
/// with `labels` and its `role`, in network mode `network`, with `bind`
/// (`source:target:ro`), no capabilities, a read-only root and 16 MB.
fn one_shot_holder_body(
    image: &str,
    args: &str,
    labels: &HashMap<String, String>,
    role: &str,
    network: &str,
    bind: Option<String>,
) -> ContainerCreateBody {
    let mut cmd = vec![HOLDER_PATH.to_string()];
    cmd.extend(args.split(' ').map(String::from));
    let mut labels = labels.clone();
    labels.insert(super::LABEL_ROLE.to_string(), role.to_string());
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(cmd),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(network.into()),
            binds: bind.map(|b| vec![b]),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(true),
            memory: Some(16 * 1024 * 1024),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A failed pull of `image`, by what Docker said: a full disk is named as such.
fn pull_failure(image: &str, detail: String) -> EngineError {
    if detail.contains("no space left on device") {
        EngineError::NoSpace {
            image: image.to_string(),
            detail,
        }
    } else {
        EngineError::ImageUnavailable {
            image: image.to_string(),
            detail,
        }
    }
}

/// An image of Docker's disk-usage listing.
fn stored_image(image: ImageSummary) -> StoredImage {
    let figure = |n: i64| n.max(0) as u64;
    let mut names = image.repo_tags;
    names.extend(image.repo_digests);
    names.retain(|n| n != "<none>:<none>" && n != "<none>@<none>");
    StoredImage {
        id: image.id,
        names,
        size: figure(image.size),
        shared: figure(image.shared_size),
        containers: figure(image.containers),
        created: image.created,
    }
}

/// What a line of Docker's pull stream says of its layer (`id`), by its status; `None` for
/// lines about the image rather than a layer ("Pulling from ...", "Digest: ...").
fn layer_event(status: &str, current: u64, total: u64) -> Option<LayerEvent> {
    match status {
        "Pulling fs layer" | "Waiting" => Some(LayerEvent::Known),
        "Downloading" => Some(LayerEvent::Downloading { current, total }),
        "Verifying Checksum" | "Download complete" | "Extracting" => Some(LayerEvent::Downloaded),
        "Pull complete" | "Already exists" => Some(LayerEvent::Done),
        _ => None,
    }
}

/// `name` → `name:latest`; references with a tag or digest are kept. (Without a tag the
/// pull API would fetch every tag of the repository.)
fn with_default_tag(image: &str) -> String {
    match image_ref::split(image) {
        (name, None, None) => format!("{name}:latest"),
        _ => image.to_string(),
    }
}

impl DockerEngine {
    /// Connects using `DOCKER_HOST` or the default socket and negotiates the API version.
    pub async fn connect() -> Result<DockerEngine, EngineError> {
        Self::connect_to(&std::env::var("DOCKER_HOST").unwrap_or_default()).await
    }

    /// Connects to the daemon at `host` (as `DOCKER_HOST` names one: `unix://PATH`,
    /// `tcp://HOST:PORT`; empty: the default socket) and negotiates the API version.
    pub async fn connect_to(host: &str) -> Result<DockerEngine, EngineError> {
        let logs = Endpoint::parse(host)?;
        let docker = match &logs {
            Endpoint::Unix(path) => Docker::connect_with_unix(
                &path.display().to_string(),
                120,
                bollard::API_DEFAULT_VERSION,
            ),
            Endpoint::Tcp(addr) => {
                Docker::connect_with_http(addr, 120, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(api_error)?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            EngineError::Unreachable(format!("cannot talk to the Docker daemon: {e}"))
        })?;
        let version = docker.client_version();
        let api_version = format!("{}.{}", version.major_version, version.minor_version);
        tracing::info!(%api_version, "connected to Docker");
        Ok(DockerEngine {
            docker,
            sockets: Arc::new(OnceLock::new()),
            logs,
            api_version,
        })
    }

    /// How a holder gets `dir`: bind-mounted when the executor runs on the host; when it
    /// runs in a container, the volume or bind mount of that container `dir` is on.
    async fn socket_dir(&self, dir: &Path) -> Result<SocketDir, EngineError> {
        let meta = std::fs::metadata(dir)
            .map_err(|e| EngineError::Api(format!("socket directory {}: {e}", dir.display())))?;
        let user = format!("{}:{}", meta.uid(), meta.gid());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let Some(own) = own_container_id(&mountinfo) else {
            let mount = Mount {
                target: Some(HOLDER_DIR.into()),
                source: Some(dir.display().to_string()),
                typ: Some(MountTypeEnum::BIND),
                ..Default::default()
            };
            return Ok(SocketDir {
                local: dir.to_path_buf(),
                mount,
                inside: PathBuf::from(HOLDER_DIR),
                user,
            });
        };
        let info = self.inspect(&own).await.map_err(|e| {
            EngineError::Api(format!(
                "this executor runs in container {own}, which the Docker daemon it talks to \
                 cannot show ({e}); sandboxes need the executor's socket directory shared \
                 through that daemon"
            ))
        })?;
        // The mount of the executor's container that holds `dir` (the deepest one).
        let holding = info
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let destination = PathBuf::from(m.destination.clone()?);
                let rel = dir.strip_prefix(&destination).ok()?.to_path_buf();
                Some((destination.components().count(), rel, m))
            })
            .max_by_key(|(depth, _, _)| *depth);
        let (mount, inside) = match holding {
            Some((_, rel, m)) if m.typ == Some(MountPointTypeEnum::VOLUME) => (
                Mount {
                    target: Some(HOLDER_DIR.into()),
                    source: m.name,
                    typ: Some(MountTypeEnum::VOLUME),
                    ..Default::default()
                },
                Path::new(HOLDER_DIR).join(rel),
            ),
            Some((_, rel, m)) if m.typ == Some(MountPointTypeEnum::BIND) => (
                Mount {
                    target: Some(HOLDER_DIR.into()),
                    source: m
                        .source
                        .map(|s| Path::new(&s).join(&rel).display().to_string()),
                    typ: Some(MountTypeEnum::BIND),
                    ..Default::default()
                },
                PathBuf::from(HOLDER_DIR),
            ),
            _ => {
                return Err(EngineError::Api(format!(
                    "this executor runs in container {own}, and its socket directory {} is on \
                     no volume of that container, so sandboxes cannot share it: run the \
                     container with a volume there (`-v {}`; the executor's image declares \
                     it as a VOLUME)",
                    dir.display(),
                    dir.display()
                )))
            }
        };
        Ok(SocketDir {
            local: dir.to_path_buf(),
            mount,
            inside,
            user,
        })
    }

    /// Waits until container `id` is not running any more (a missing one is not).
    async fn wait_not_running(&self, id: &str) -> Result<(), EngineError> {
        let options = WaitContainerOptions {
            condition: "not-running".into(),
        };
        match self.docker.wait_container(id, Some(options)).next().await {
            None | Some(Ok(_)) => Ok(()),
            // A non-zero exit code (137 after a kill) comes as an error: it exited all the same.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => Ok(()),
            Some(Err(e)) if is_not_found(&e) => Ok(()),
            Some(Err(e)) => Err(api_error(e)),
        }
    }

    /// Creates a container from `body`; returns its id. Docker's warnings are logged.
    async fn create_from(&self, body: ContainerCreateBody) -> Result<String, EngineError> {
        let created = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(api_error)?;
        for warning in created.warnings {
            tracing::warn!(container = %created.id, %warning, "Docker warning on create");
        }
        Ok(created.id)
    }

    /// What a container printed, as text (not followed).
    async fn output(&self, id: &str, options: LogsOptions) -> Result<String, EngineError> {
        let mut logs = self.docker.logs(id, Some(options));
        let mut text = String::new();
        while let Some(item) = logs.next().await {
            text.push_str(&String::from_utf8_lossy(
                &item.map_err(api_error)?.into_bytes(),
            ));
        }
        Ok(text)
    }

    /// The last lines a container printed (for the error of a holder that exited).
    /// Runs a one-shot container to its end and removes it; what it wrote (stdout and
    /// stderr).
    async fn run_once(&self, body: ContainerCreateBody) -> Result<String, EngineError> {
        let id = self.create_from(body).await?;
        let ran = async {
            self.docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .map_err(api_error)?;
            self.wait_not_running(&id).await?;
            let options = LogsOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            self.output(&id, options).await
        };
        let ran = ran.await;
        self.remove(&id).await?;
        ran
    }

    async fn output_tail(&self, id: &str) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: "5".into(),
            ..Default::default()
        };
        let text = self.output(id, options).await.unwrap_or_default();
        text.trim().to_string()
    }

    /// Waits until the started holder `id` accepts connections on `socket`.
    /// The daemon's client, for the swarm engine (which speaks to the same daemon, a
    /// manager's).
    pub(super) fn client(&self) -> &Docker {
        &self.docker
    }

    /// GETs `path` of the daemon's API as JSON (see [`super::docker_logs::get_json`]).
    pub(super) async fn get_json(&self, path: &str) -> Result<serde_json::Value, EngineError> {
        super::docker_logs::get_json(&self.logs, &self.api_version, path).await
    }

    /// Follows the output of swarm service `id`'s tasks (see [`LogFollower::open_service`]).
    pub(super) async fn follow_service(
        &self,
        id: &str,
        tty: bool,
    ) -> Result<LogFollower, EngineError> {
        LogFollower::open_service(&self.logs, &self.api_version, id, tty).await
    }

    /// Creates and starts a sandbox holder (on `forward_on`, as a cluster task's gateway,
    /// when given); returns it once its relay socket accepts connections. A holder that
    /// fails half-way is removed.
    pub(super) async fn start_holder_on(
        &self,
        spec: &HolderSpec,
        forward_on: Option<&str>,
    ) -> Result<SandboxRef, EngineError> {
        let shared = self.sockets.get().ok_or_else(|| {
            EngineError::Api("sandboxes were not prepared (no socket directory)".into())
        })?;
        let body = holder_body(spec, shared, forward_on)?;
        let id = self.create_from(body).await?;
        let started = async {
            self.docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .map_err(api_error)?;
            self.until_relay_listens(&id, &spec.socket).await
        };
        match started.await {
            Ok(()) => Ok(SandboxRef {
                id,
                addr: TaskAddr::Relay(spec.socket.clone()),
            }),
            Err(e) => {
                if let Err(removal) = self.remove(&id).await {
                    tracing::warn!(container = %id, error = %removal, "could not remove a failed sandbox holder");
                }
                Err(e)
            }
        }
    }

    async fn until_relay_listens(&self, id: &str, socket: &Path) -> Result<(), EngineError> {
        let started = tokio::time::Instant::now();
        let mut checked = started;
        loop {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now - checked >= Duration::from_millis(200) {
                checked = now;
                if let Some(state) = exit_state_of(&self.inspect(id).await?) {
                    let output = self.output_tail(id).await;
                    return Err(EngineError::Api(format!(
                        "the sandbox holder {state}: {output}"
                    )));
                }
            }
            if now - started >= HOLDER_READY_TIMEOUT {
                return Err(EngineError::Api(format!(
                    "the sandbox holder's socket did not appear at {} within {}: is that \
                     directory the one Docker mounts into the holder?",
                    socket.display(),
                    humantime::format_duration(HOLDER_READY_TIMEOUT)
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Ids of the containers labelled `key=value`: all of them, or only the running ones.
    async fn labelled(
        &self,
        key: &str,
        value: &str,
        all: bool,
    ) -> Result<Vec<String>, EngineError> {
        let options = ListContainersOptions {
            all,
            filters: Some(HashMap::from([label_filter(key, value)])),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(api_error)?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, EngineError> {
        self.docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(api_error)
    }

    async fn pull_image(&self, image: &str, progress: &PullProgress) -> Result<(), EngineError> {
        let reference = with_default_tag(image);
        tracing::debug!(image = %reference, "pull stream opened");
        let options = CreateImageOptions {
            from_image: Some(reference.clone()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        return Err(pull_failure(image, detail));
                    }
                    tracing::debug!(image = %reference, status = ?info.status, progress = ?info.progress, "pull");
                    if let (Some(id), Some(status)) = (&info.id, &info.status) {
                        let detail = info.progress_detail.as_ref();
                        let figure = |f: Option<i64>| f.map_or(0, |n| n.max(0) as u64);
                        if let Some(event) = layer_event(
                            status,
                            figure(detail.and_then(|d| d.current)),
                            figure(detail.and_then(|d| d.total)),
                        ) {
                            progress.layer(id, event);
                        }
                    }
                }
                Err(e) => {
                    let detail = match e {
                        bollard::errors::Error::DockerResponseServerError { message, .. } => {
                            message
                        }
                        bollard::errors::Error::DockerStreamError { error } => error,
                        other => other.to_string(),
                    };
                    return Err(pull_failure(image, detail));
                }
            }
        }
        tracing::debug!(image = %reference, "pull stream ended");
        Ok(())
    }

    /// Follows the container's output until the ready line; `Ok(false)` when the stream
    /// ended first (the container stopped).
    pub(super) async fn follow_until_ready(
        logs: &mut LogFollower,
        scanner: &mut OutputScanner,
    ) -> Result<bool, EngineError> {
        while let Some(piece) = logs.next().await {
            let (stream, bytes) = piece?;
            if scanner.feed(stream, &bytes) {
                return Ok(true);
            }
        }
        Ok(scanner.finish())
    }

    /// Waits, after the ready line, until the task accepts connections at `addr` (a task
    /// may print the line before it listens: Flask apps print it while their module loads).
    /// False when the container's output ended first, i.e. it stopped.
    pub(super) async fn until_listening(addr: &TaskAddr, logs: &mut LogFollower) -> bool {
        let probe = async {
            // Through the relay, a connection stands only once the task's port accepted it.
            // The probe connection is closed without a request.
            while crate::task_client::connect(addr).await.is_err() {
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        };
        let stopped = async { while let Some(Ok(_)) = logs.next().await {} };
        tokio::select! {
            () = probe => true,
            () = stopped => false,
        }
    }
}

/// How often a task that printed the ready line is checked for its port.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
fn exit_state_of(info: &ContainerInspectResponse) -> Option<ExitState> {
    let state = info.state.as_ref()?;
    if state.running.unwrap_or(false) {
        return None;
    }
    let memory = info
        .host_config
        .as_ref()
        .and_then(|h| h.memory)
        .unwrap_or(0);
    Some(ExitState {
        code: state.exit_code.unwrap_or(-1),
        oom_killed: state.oom_killed.unwrap_or(false),
        memory_limit_mb: (memory > 0).then_some(memory as u64 / (1024 * 1024)),
        node_lost: false,
    })
}

/// The hardening every container of the executor gets, task or holder: no privilege gain,
/// no capabilities (a task serving on port 8080 needs none; a holder adds back only what
/// it needs), bounded processes, open files and logs, and a read-only root filesystem if
/// `hardening` says so (a task adds its writable `/tmp`).
fn hardened(hardening: &Hardening) -> HostConfig {
    HostConfig {
        privileged: Some(false),
        security_opt: Some(vec!["no-new-privileges".into()]),
        cap_drop: Some(vec!["ALL".into()]),
        pids_limit: Some(hardening.pids_limit),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("nofile".into()),
            soft: Some(hardening.nofile_limit),
            hard: Some(hardening.nofile_limit),
        }]),
        readonly_rootfs: hardening.read_only_rootfs.then_some(true),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), hardening.log_max_size.clone()),
                ("max-file".to_string(), hardening.log_max_files.to_string()),
            ])),
        }),
        ..Default::default()
    }
}

/// A sandbox holder's hardening: one thread, two descriptors per relayed connection, a
/// small log, nothing written.
fn holder_hardening() -> Hardening {
    Hardening {
        pids_limit: 8,
        nofile_limit: 8192,
        log_max_size: "64k".into(),
        log_max_files: 1,
        read_only_rootfs: true,
    }
}

/// What Docker is asked to create for a task container.
fn task_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut host_config = HostConfig {
        nano_cpus: Some(spec.nano_cpus),
        memory: Some(spec.memory_bytes),
        // No swap beyond the memory limit: a task gets exactly the memory it asked for.
        memory_swap: Some(spec.memory_bytes),
        runtime: spec.runtime.clone(),
        // The sandbox's namespace is the task's only network.
        network_mode: Some(format!("container:{}", spec.sandbox.id)),
        ..hardened(&spec.hardening)
    };
    if spec.hardening.read_only_rootfs {
        host_config.tmpfs = Some(HashMap::from([(
            "/tmp".to_string(),
            "rw,nosuid,nodev,size=64m".to_string(),
        )]));
    }
    if let Some(sgx) = &spec.sgx {
        host_config.devices = Some(vec![DeviceMapping {
            path_on_host: Some(sgx.device.clone()),
            path_in_container: Some("/dev/sgx/enclave".into()),
            cgroup_permissions: Some("rwm".into()),
        }]);
        host_config.binds = Some(vec![format!("{}:/var/run/aesmd", sgx.aesmd_path)]);
    }
    if !spec.gpus.is_empty() {
        // By UUID, not index: indices inside the executor's own container may differ
        // from the host's.
        host_config.device_requests = Some(vec![DeviceRequest {
            driver: Some("nvidia".into()),
            device_ids: Some(spec.gpus.clone()),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }]);
    }
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        labels: Some(spec.labels.clone()),
        // A terminal makes C stdio and CPython line-buffer stdout, so a task's plain
        // `print("meca-init-done")` reaches the log at once (on a pipe it would wait in
        // a 4-8 KiB buffer).
        tty: Some(spec.tty),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// What Docker is asked to create for a sandbox holder that shares `shared`.
/// What Docker is asked to create for a sandbox holder; `forward_on`: the holder is a
/// cluster task's gateway on that network (`relay --forward`), not its namespace.
fn holder_body(
    spec: &HolderSpec,
    shared: &SocketDir,
    forward_on: Option<&str>,
) -> Result<ContainerCreateBody, EngineError> {
    let name = spec.socket.strip_prefix(&shared.local).map_err(|_| {
        EngineError::Api(format!(
            "socket {} is outside the sandbox directory {}",
            spec.socket.display(),
            shared.local.display()
        ))
    })?;
    let inside = shared.inside.join(name).display().to_string();
    let mut cmd = vec![HOLDER_PATH.to_string(), "relay".to_string(), inside];
    let mut user = shared.user.clone();
    let mut host_config = HostConfig {
        memory: Some(spec.memory_bytes),
        memory_swap: Some(spec.memory_bytes),
        mounts: Some(vec![shared.mount.clone()]),
        ..hardened(&holder_hardening())
    };
    match &spec.network {
        SandboxNetwork::None => host_config.network_mode = Some("none".into()),
        SandboxNetwork::Egress { network, blocked } => {
            host_config.network_mode = Some(network.clone().unwrap_or("bridge".into()));
            // The holder's own process sets the routes as root, before any task joins,
            // hands its socket to the executor's user and drops every capability; a
            // task container gets none.
            user = "0:0".to_string();
            cmd.extend(["--owner".to_string(), shared.user.clone()]);
            host_config.cap_add = Some(vec![
                "NET_ADMIN".into(),
                "CHOWN".into(),
                "DAC_OVERRIDE".into(),
            ]);
            host_config.sysctls = Some(HashMap::from([(
                "net.ipv6.conf.all.disable_ipv6".to_string(),
                "1".to_string(),
            )]));
            for prefix in blocked {
                cmd.push("--block".into());
                cmd.push(prefix.clone());
            }
        }
    }
    if let Some(network) = forward_on {
        host_config.network_mode = Some(network.to_string());
        cmd.push("--forward".into());
    }
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        labels: Some(spec.labels.clone()),
        user: Some(user),
        cmd: Some(cmd),
        host_config: Some(host_config),
        ..Default::default()
    })
}

pub(super) fn label_filter(key: &str, value: &str) -> (String, Vec<String>) {
    ("label".to_string(), vec![format!("{key}={value}")])
}

#[async_trait]
impl Engine for DockerEngine {
    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn pull(&self, image: &str, progress: &PullProgress) -> Result<(), EngineError> {
        self.pull_image(image, progress).await
    }

    async fn stored_images(&self) -> Result<Vec<StoredImage>, EngineError> {
        let usage = self.docker.df(None).await.map_err(api_error)?;
        Ok(usage
            .images
            .unwrap_or_default()
            .into_iter()
            .map(stored_image)
            .collect())
    }

    async fn remove_image(&self, name: &str) -> Result<(), EngineError> {
        // Never forced: an image a container uses stays (Docker answers 409).
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
        };
        match self.docker.remove_image(name, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Err(EngineError::ImageInUse(name.to_string())),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn image_root(&self) -> Result<PathBuf, EngineError> {
        let info = self.docker.info().await.map_err(api_error)?;
        info.docker_root_dir
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| EngineError::Api("docker info names no DockerRootDir".into()))
    }

    async fn image_filesystem(
        &self,
        holder_image: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Filesystem, EngineError> {
        // A holder with Docker's root directory mounted read-only measures its filesystem,
        // and is removed. It has no network and no capabilities.
        let root = self.image_root().await?;
        let body = one_shot_holder_body(
            holder_image,
            "statfs /docker-root",
            labels,
            "image-filesystem",
            "none",
            Some(format!("{}:/docker-root:ro", root.display())),
        );
        let measured = self.run_once(body).await?;
        let figures: Vec<u64> = measured
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        match figures[..] {
            [total_bytes, free_bytes, available_bytes, fsid] => Ok(Filesystem {
                total_bytes,
                free_bytes,
                available_bytes,
                fsid,
            }),
            _ => Err(EngineError::Api(format!(
                "could not measure the filesystem of {}: {}",
                root.display(),
                measured.trim()
            ))),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        self.create_from(task_body(spec)).await
    }

    async fn start_and_wait_ready(
        &self,
        id: &str,
        spec: &ContainerSpec,
        deadline: Duration,
    ) -> Result<TaskAddr, EngineError> {
        // Attached before the start, so that nothing the task prints is missed.
        let mut logs = LogFollower::attach(&self.logs, &self.api_version, id, spec.tty).await?;
        self.docker
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(api_error)?;
        let started = tokio::time::Instant::now();
        let mut scanner = OutputScanner::default();
        let ready =
            match tokio::time::timeout(deadline, Self::follow_until_ready(&mut logs, &mut scanner))
                .await
            {
                Err(_) => return Err(EngineError::ReadyTimeout(deadline)),
                Ok(result) => result?,
            };
        let mut info = self.inspect(id).await?;
        if !ready {
            // The log stream ends when the container stops; its state can lag a moment.
            for _ in 0..20 {
                if let Some(state) = exit_state_of(&info) {
                    return Err(EngineError::ExitedBeforeReady {
                        state,
                        output: scanner.tail(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                info = self.inspect(id).await?;
            }
            return Err(EngineError::Api(
                "the container's output ended before it printed the ready line".into(),
            ));
        }
        if let Some(state) = exit_state_of(&info) {
            return Err(EngineError::ExitedAfterReady(state));
        }
        let addr = spec.sandbox.addr.clone();
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, Self::until_listening(&addr, &mut logs)).await {
            Err(_) => Err(EngineError::NotListening(deadline)),
            Ok(true) => Ok(addr),
            Ok(false) => match exit_state_of(&self.inspect(id).await?) {
                Some(state) => Err(EngineError::ExitedAfterReady(state)),
                None => Err(EngineError::Api(
                    "the container's output ended before it listened on its port".into(),
                )),
            },
        }
    }

    async fn exit_state(&self, id: &str) -> Result<Option<ExitState>, EngineError> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => Ok(exit_state_of(&info)),
            Err(e) if is_not_found(&e) => Err(EngineError::NoSuchContainer(id.to_string())),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // "removal already in progress" is success for us.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        let options = KillContainerOptions {
            signal: "SIGKILL".into(),
        };
        match self.docker.kill_container(id, Some(options)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            // Not running (any more).
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => return Err(api_error(e)),
        }
        // Docker answers the kill once the signal is sent: wait until the processes are gone.
        self.wait_not_running(id).await
    }

    async fn list_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError> {
        self.labelled(key, value, true).await
    }

    async fn running_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError> {
        self.labelled(key, value, false).await
    }

    fn container_exits(
        &self,
        key: &str,
        value: &str,
    ) -> BoxStream<'static, Result<String, EngineError>> {
        // From a second ago: the stream is only opened when first polled, and events in
        // between must not be lost.
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(1).to_string())
            .ok();
        let options = EventsOptions {
            since,
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "event".to_string(),
                    vec!["die".to_string(), "destroy".to_string()],
                ),
                label_filter(key, value),
            ])),
            ..Default::default()
        };
        self.docker
            .events(Some(options))
            .filter_map(|event| async move {
                match event {
                    Ok(message) => message.actor.and_then(|a| a.id).map(Ok),
                    Err(e) => Some(Err(api_error(e))),
                }
            })
            .boxed()
    }

    async fn prepare_sandboxes(&self, dir: &Path) -> Result<(), EngineError> {
        let shared = self.socket_dir(dir).await?;
        tracing::info!(dir = %dir.display(), mount = ?shared.mount.typ, source = ?shared.mount.source, "sandbox sockets shared with holders");
        // Prepared once per process: a second call (a test's) keeps the first answer.
        let _ = self.sockets.set(shared);
        Ok(())
    }

    async fn ensure_holder_image(&self, name: &str) -> Result<(), EngineError> {
        if self.image_present(name).await? {
            return Ok(());
        }
        let program = holder::holder_program();
        let (repo, tag, _) = image_ref::split(name);
        let tag = tag.unwrap_or("latest");
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            changes: vec![format!("CMD [\"{HOLDER_PATH}\"]")],
            ..Default::default()
        };
        let body = bollard::body_full(holder::rootfs_tar(program, HOLDER_PATH).into());
        let mut progress = self.docker.create_image(Some(options), Some(body), None);
        while let Some(item) = progress.next().await {
            let info = item.map_err(api_error)?;
            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                return Err(EngineError::Api(format!(
                    "could not import the sandbox holder image: {detail}"
                )));
            }
        }
        tracing::info!(image = %name, "imported the sandbox holder image");
        Ok(())
    }

    async fn host_addresses(
        &self,
        holder_image: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<String>, EngineError> {
        // A holder in the host's network namespace lists its addresses, and is removed.
        let body = one_shot_holder_body(
            holder_image,
            "addrs",
            labels,
            "host-addresses",
            "host",
            None,
        );
        let listed = self.run_once(body).await;
        let addrs: Vec<String> = listed?
            .lines()
            .map(str::trim)
            .filter(|l| {
                l.parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|a| !a.is_loopback())
            })
            .map(String::from)
            .collect();
        tracing::info!(?addrs, "the host's own addresses (unreachable from tasks)");
        Ok(addrs)
    }

    async fn start_holder(&self, spec: &HolderSpec) -> Result<SandboxRef, EngineError> {
        self.start_holder_on(spec, None).await
    }

    async fn update_limits(
        &self,
        id: &str,
        nano_cpus: i64,
        memory_bytes: i64,
    ) -> Result<(), EngineError> {
        let update = ContainerUpdateBody {
            nano_cpus: Some(nano_cpus),
            memory: Some(memory_bytes),
            memory_swap: Some(memory_bytes),
            ..Default::default()
        };
        match self.docker.update_container(id, update).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(EngineError::NoSuchContainer(id.to_string())),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn runtimes(&self) -> Result<Vec<String>, EngineError> {
        let info = self.docker.info().await.map_err(api_error)?;
        let mut names: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_container_it_runs_in_from_its_hostname_mount() {
        let id = "4f".repeat(32);
        let info = format!(
            "600 500 0:52 / / rw,relatime - overlay overlay rw\n\
             612 600 254:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw\n"
        );
        assert_eq!(own_container_id(&info), Some(id));
        let host = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n";
        assert_eq!(own_container_id(host), None);
    }

    /// A task spec and a holder's socket directory as the executor makes them.
    fn task_spec(hardening: crate::config::Hardening) -> ContainerSpec {
        ContainerSpec {
            image: "meca-echo:latest".into(),
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
            runtime: Some("runsc".into()),
            labels: HashMap::from([("org.mecanywhere.executor".into(), "x".into())]),
            sgx: Some(crate::engine::SgxMounts {
                device: "/dev/sgx_enclave".into(),
                aesmd_path: "/var/run/aesmd".into(),
            }),
            gpus: vec!["GPU-1".into()],
            hardening,
            tty: true,
            sandbox: SandboxRef {
                id: "holder1".into(),
                addr: TaskAddr::Relay("/run/x/1".into()),
            },
        }
    }

    fn socket_dir() -> SocketDir {
        SocketDir {
            local: "/run/exec/abc".into(),
            mount: Mount {
                target: Some(HOLDER_DIR.into()),
                source: Some("/run/exec/abc".into()),
                typ: Some(MountTypeEnum::BIND),
                ..Default::default()
            },
            inside: HOLDER_DIR.into(),
            user: "1000:1000".into(),
        }
    }

    fn holder_spec(network: SandboxNetwork) -> HolderSpec {
        HolderSpec {
            image: "mecanywhere-executor-sandbox:0123".into(),
            labels: HashMap::from([("org.mecanywhere.role".into(), "sandbox".into())]),
            network,
            socket: "/run/exec/abc/0badf00d".into(),
            memory_bytes: 16 << 20,
        }
    }

    /// What Docker receives, as JSON (bollard serializes the same structs onto the wire).
    fn json(body: &ContainerCreateBody) -> serde_json::Value {
        serde_json::to_value(body).unwrap()
    }

    /// The bodies pinned here are what Docker received before the hardening shared by tasks
    /// and holders was built by one function ([`hardened`]): that change sent the same.
    #[test]
    fn docker_receives_the_pinned_task_and_holder_bodies() {
        let read_only = crate::config::Hardening {
            read_only_rootfs: true,
            ..Default::default()
        };
        let egress = SandboxNetwork::Egress {
            network: Some("meca-net".into()),
            blocked: vec!["10.0.0.0/8".into()],
        };
        let holder = |network| holder_body(&holder_spec(network), &socket_dir(), None).unwrap();
        let default_body = serde_json::json!({
            "HostConfig": {
                "Binds": [
                    "/var/run/aesmd:/var/run/aesmd"
                ],
                "CapDrop": [
                    "ALL"
                ],
                "DeviceRequests": [
                    {
                        "Capabilities": [
                            [
                                "gpu"
                            ]
                        ],
                        "DeviceIDs": [
                            "GPU-1"
                        ],
                        "Driver": "nvidia"
                    }
                ],
                "Devices": [
                    {
                        "CgroupPermissions": "rwm",
                        "PathInContainer": "/dev/sgx/enclave",
                        "PathOnHost": "/dev/sgx_enclave"
                    }
                ],
                "LogConfig": {
                    "Config": {
                        "max-file": "2",
                        "max-size": "10m"
                    },
                    "Type": "json-file"
                },
                "Memory": 67108864,
                "MemorySwap": 67108864,
                "NanoCpus": 500000000,
                "NetworkMode": "container:holder1",
                "PidsLimit": 1024,
                "Privileged": false,
                "Runtime": "runsc",
                "SecurityOpt": [
                    "no-new-privileges"
                ],
                "Ulimits": [
                    {
                        "Hard": 4096,
                        "Name": "nofile",
                        "Soft": 4096
                    }
                ]
            },
            "Image": "meca-echo:latest",
            "Labels": {
                "org.mecanywhere.executor": "x"
            },
            "Tty": true
        });
        assert_eq!(
            json(&task_body(&task_spec(Default::default()))),
            default_body
        );
        // Read-only: the same body, with the root read-only and a tmpfs at /tmp.
        let mut read_only_body = default_body.clone();
        read_only_body["HostConfig"]["ReadonlyRootfs"] = serde_json::json!(true);
        read_only_body["HostConfig"]["Tmpfs"] =
            serde_json::json!({"/tmp": "rw,nosuid,nodev,size=64m"});
        assert_eq!(json(&task_body(&task_spec(read_only))), read_only_body);
        let isolated_holder = serde_json::json!({
            "Cmd": [
                "/hold",
                "relay",
                "/run/meca/0badf00d"
            ],
            "HostConfig": {
                "CapDrop": [
                    "ALL"
                ],
                "LogConfig": {
                    "Config": {
                        "max-file": "1",
                        "max-size": "64k"
                    },
                    "Type": "json-file"
                },
                "Memory": 16777216,
                "MemorySwap": 16777216,
                "Mounts": [
                    {
                        "Source": "/run/exec/abc",
                        "Target": "/run/meca",
                        "Type": "bind"
                    }
                ],
                "NetworkMode": "none",
                "PidsLimit": 8,
                "Privileged": false,
                "ReadonlyRootfs": true,
                "SecurityOpt": [
                    "no-new-privileges"
                ],
                "Ulimits": [
                    {
                        "Hard": 8192,
                        "Name": "nofile",
                        "Soft": 8192
                    }
                ]
            },
            "Image": "mecanywhere-executor-sandbox:0123",
            "Labels": {
                "org.mecanywhere.role": "sandbox"
            },
            "User": "1000:1000"
        });
        assert_eq!(json(&holder(SandboxNetwork::None)), isolated_holder);
        // Egress: the same holder on its network, as root until it drops its capabilities,
        // with the routes to block and IPv6 off.
        let mut egress_holder = isolated_holder.clone();
        egress_holder["Cmd"] = serde_json::json!([
            "/hold",
            "relay",
            "/run/meca/0badf00d",
            "--owner",
            "1000:1000",
            "--block",
            "10.0.0.0/8"
        ]);
        egress_holder["HostConfig"]["CapAdd"] =
            serde_json::json!(["NET_ADMIN", "CHOWN", "DAC_OVERRIDE"]);
        egress_holder["HostConfig"]["NetworkMode"] = serde_json::json!("meca-net");
        egress_holder["HostConfig"]["Sysctls"] =
            serde_json::json!({"net.ipv6.conf.all.disable_ipv6": "1"});
        egress_holder["User"] = serde_json::json!("0:0");
        assert_eq!(json(&holder(egress)), egress_holder);
    }

    #[test]
    fn pull_stream_statuses_are_read_as_layer_events() {
        assert_eq!(
            layer_event("Pulling fs layer", 0, 0),
            Some(LayerEvent::Known)
        );
        assert_eq!(layer_event("Waiting", 0, 0), Some(LayerEvent::Known));
        assert_eq!(
            layer_event("Downloading", 3_679, 22_920),
            Some(LayerEvent::Downloading {
                current: 3_679,
                total: 22_920
            })
        );
        for downloaded in ["Verifying Checksum", "Download complete", "Extracting"] {
            assert_eq!(layer_event(downloaded, 1, 2), Some(LayerEvent::Downloaded));
        }
        for done in ["Pull complete", "Already exists"] {
            assert_eq!(layer_event(done, 0, 0), Some(LayerEvent::Done));
        }
        // Lines about the image, not a layer.
        assert_eq!(layer_event("Pulling from meca/echo", 0, 0), None);
        assert_eq!(layer_event("Digest: sha256:abc", 0, 0), None);
    }

    #[test]
    fn default_tag() {
        assert_eq!(with_default_tag("echo"), "echo:latest");
        assert_eq!(with_default_tag("a/b:v1"), "a/b:v1");
        assert_eq!(
            with_default_tag("127.0.0.1:5000/a/b"),
            "127.0.0.1:5000/a/b:latest"
        );
        assert_eq!(
            with_default_tag("127.0.0.1:5000/a:v2"),
            "127.0.0.1:5000/a:v2"
        );
        assert_eq!(with_default_tag("r/a@sha256:abc"), "r/a@sha256:abc");
    }
}
