//! [`Engine`] on a Docker daemon, through bollard over the Unix socket (`DOCKER_HOST`
//! honoured), with the API version negotiated so older daemons (API 1.41) work.
//!
//! Owns every Docker API call the executor makes. Readiness is read from the container's
//! followed log stream, never by polling.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerUpdateBody, DeviceMapping,
    DeviceRequest, EndpointSettings, HostConfig, HostConfigLogConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, InspectContainerOptions,
    InspectNetworkOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::ready::{OutputScanner, Stream};
use super::{
    holder, ContainerSpec, Engine, EngineError, ExitState, HolderSpec, SandboxRef, TASK_PORT,
};

/// The Docker engine.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
}

fn api_error(e: bollard::errors::Error) -> EngineError {
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

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// `name` → `name:latest`; references with a tag or digest are kept. (Without a tag the
/// pull API would fetch every tag of the repository.)
fn with_default_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

impl DockerEngine {
    /// Connects using `DOCKER_HOST` or the default socket and negotiates the API version.
    pub async fn connect() -> Result<DockerEngine, EngineError> {
        let docker = Docker::connect_with_defaults().map_err(api_error)?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            EngineError::Unreachable(format!("cannot talk to the Docker daemon: {e}"))
        })?;
        tracing::info!(api_version = %docker.client_version(), "connected to Docker");
        Ok(DockerEngine { docker })
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

    async fn pull_image(&self, image: &str) -> Result<(), EngineError> {
        let reference = with_default_tag(image);
        tracing::info!(image = %reference, "pulling image");
        let options = CreateImageOptions {
            from_image: Some(reference.clone()),
            ..Default::default()
        };
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        return Err(EngineError::ImageUnavailable {
                            image: image.to_string(),
                            detail,
                        });
                    }
                    tracing::debug!(image = %reference, status = ?info.status, progress = ?info.progress, "pull");
                }
                Err(e) => {
                    let detail = match e {
                        bollard::errors::Error::DockerResponseServerError { message, .. } => {
                            message
                        }
                        bollard::errors::Error::DockerStreamError { error } => error,
                        other => other.to_string(),
                    };
                    return Err(EngineError::ImageUnavailable {
                        image: image.to_string(),
                        detail,
                    });
                }
            }
        }
        tracing::info!(image = %reference, "image pulled");
        Ok(())
    }

    /// Where the started container answers: its IP on the task network, or the port
    /// Docker published on 127.0.0.1.
    fn task_address(
        info: &ContainerInspectResponse,
        network: Option<&str>,
        publish_port: bool,
    ) -> Result<SocketAddr, EngineError> {
        let settings = info
            .network_settings
            .as_ref()
            .ok_or_else(|| EngineError::Api("container has no network settings".into()))?;
        if publish_port {
            let port = settings
                .ports
                .as_ref()
                .and_then(|p| p.get(&format!("{TASK_PORT}/tcp")))
                .and_then(|b| b.as_ref())
                .and_then(|b| b.iter().find_map(|b| b.host_port.as_deref()?.parse().ok()))
                .ok_or_else(|| EngineError::Api("Docker published no port for the task".into()))?;
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
        let network = network.unwrap_or("bridge");
        let ip = settings
            .networks
            .as_ref()
            .and_then(|n| n.get(network))
            .and_then(|e| e.ip_address.as_deref())
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| {
                EngineError::Api(format!(
                    "task container has no address on network {network}"
                ))
            })?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| EngineError::Api(format!("Docker reported a bad address {ip:?}")))?;
        Ok(SocketAddr::new(ip, TASK_PORT))
    }

    /// Follows the container's output until the ready line; `Ok(false)` when the stream
    /// ended first (the container stopped).
    async fn follow_until_ready(
        logs: &mut LogStream,
        scanner: &mut OutputScanner,
    ) -> Result<bool, EngineError> {
        while let Some(item) = logs.next().await {
            let ready = match item.map_err(api_error)? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    scanner.feed(Stream::Stdout, &message)
                }
                LogOutput::StdErr { message } => scanner.feed(Stream::Stderr, &message),
                LogOutput::StdIn { .. } => false,
            };
            if ready {
                return Ok(true);
            }
        }
        Ok(scanner.finish())
    }

    /// Waits, after the ready line, until the task accepts connections at `addr` (a task
    /// may print the line before it listens: Flask apps print it while their module loads).
    /// False when the container's output ended first, i.e. it stopped.
    async fn until_listening(addr: SocketAddr, via_proxy: bool, logs: &mut LogStream) -> bool {
        let probe = async {
            while !accepts(addr, via_proxy).await {
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        };
        let stopped = async { while logs.next().await.is_some() {} };
        tokio::select! {
            () = probe => true,
            () = stopped => false,
        }
    }
}

type LogStream = BoxStream<'static, Result<LogOutput, bollard::errors::Error>>;

/// How often a task that printed the ready line is checked for its port.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// How long a connection through Docker's port proxy must stay open to count: the proxy
/// accepts every connection and closes it at once when nothing listens behind it.
const PROXY_GRACE: Duration = Duration::from_millis(25);

/// Whether something listens at `addr`. The probe connection is closed without a request.
async fn accepts(addr: SocketAddr, via_proxy: bool) -> bool {
    use tokio::io::AsyncReadExt;
    let connect =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr));
    let Ok(Ok(mut stream)) = connect.await else {
        return false;
    };
    if !via_proxy {
        return true;
    }
    let mut byte = [0u8; 1];
    match tokio::time::timeout(PROXY_GRACE, stream.read(&mut byte)).await {
        // Still open, or the server spoke first: something listens.
        Err(_) | Ok(Ok(1..)) => true,
        // Closed or reset by the proxy: nothing listens behind it yet.
        Ok(Ok(0)) | Ok(Err(_)) => false,
    }
}

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
    })
}

/// Port 8080 published on an ephemeral port of 127.0.0.1.
fn published_task_port() -> HashMap<String, Option<Vec<PortBinding>>> {
    HashMap::from([(
        format!("{TASK_PORT}/tcp"),
        Some(vec![PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(String::new()),
        }]),
    )])
}

/// Joining network `name` at create time.
fn joined(name: &str) -> NetworkingConfig {
    NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            name.to_string(),
            EndpointSettings::default(),
        )])),
    }
}

fn label_filter(key: &str, value: &str) -> (String, Vec<String>) {
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

    async fn pull(&self, image: &str) -> Result<(), EngineError> {
        self.pull_image(image).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        let port_key = format!("{TASK_PORT}/tcp");
        let hardening = &spec.hardening;
        let mut host_config = HostConfig {
            nano_cpus: Some(spec.nano_cpus),
            memory: Some(spec.memory_bytes),
            // No swap beyond the memory limit: a task gets exactly the memory it asked for.
            memory_swap: Some(spec.memory_bytes),
            runtime: spec.runtime.clone(),
            network_mode: match &spec.sandbox {
                Some(sandbox) => Some(format!("container:{}", sandbox.id)),
                None => spec.network.clone(),
            },
            // Untrusted code: no privilege gain, no capabilities (a task serving on port
            // 8080 needs none), bounded processes, files and logs.
            privileged: Some(false),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            pids_limit: Some(hardening.pids_limit),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(hardening.nofile_limit),
                hard: Some(hardening.nofile_limit),
            }]),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), hardening.log_max_size.clone()),
                    ("max-file".to_string(), hardening.log_max_files.to_string()),
                ])),
            }),
            ..Default::default()
        };
        if hardening.read_only_rootfs {
            host_config.readonly_rootfs = Some(true);
            host_config.tmpfs = Some(HashMap::from([(
                "/tmp".to_string(),
                "rw,nosuid,nodev,size=64m".to_string(),
            )]));
        }
        // In a sandbox, the network (its ports included) is the holder's.
        let own_network = spec.sandbox.is_none();
        if spec.publish_port && own_network {
            host_config.port_bindings = Some(published_task_port());
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
        let networking_config = spec
            .network
            .as_ref()
            .filter(|_| own_network)
            .map(|n| joined(n));
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: own_network.then(|| HashMap::from([(port_key, HashMap::new())])),
            // A terminal makes C stdio and CPython line-buffer stdout, so a task's plain
            // `print("meca-init-done")` reaches the log at once (on a pipe it would wait in
            // a 4-8 KiB buffer).
            tty: Some(spec.tty),
            host_config: Some(host_config),
            networking_config,
            ..Default::default()
        };
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

    async fn start_and_wait_ready(
        &self,
        id: &str,
        spec: &ContainerSpec,
        deadline: Duration,
    ) -> Result<SocketAddr, EngineError> {
        self.docker
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(api_error)?;
        let started = tokio::time::Instant::now();
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut logs: LogStream = self.docker.logs(id, Some(options)).boxed();
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
        let addr = match &spec.sandbox {
            Some(sandbox) => sandbox.addr,
            None => Self::task_address(&info, spec.network.as_deref(), spec.publish_port)?,
        };
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(
            left,
            Self::until_listening(addr, spec.publish_port, &mut logs),
        )
        .await
        {
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
        let options = WaitContainerOptions {
            condition: "not-running".into(),
        };
        match self.docker.wait_container(id, Some(options)).next().await {
            None | Some(Ok(_)) => Ok(()),
            // A non-zero exit code (137 here) comes as an error: it exited all the same.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => Ok(()),
            Some(Err(e)) if is_not_found(&e) => Ok(()),
            Some(Err(e)) => Err(api_error(e)),
        }
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

    async fn ensure_internal_network(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<bool, EngineError> {
        match self
            .docker
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(network) if network.internal == Some(true) => {
                // Ours when it carries our labels (left by an earlier instance of ours).
                let theirs = network.labels.unwrap_or_default();
                Ok(labels.iter().all(|(k, v)| theirs.get(k) == Some(v)))
            }
            Ok(_) => Err(EngineError::Api(format!(
                "network {name} exists but is not internal: tasks on it could reach outside"
            ))),
            Err(e) if is_not_found(&e) => {
                let request = NetworkCreateRequest {
                    name: name.to_string(),
                    driver: Some("bridge".into()),
                    internal: Some(true),
                    labels: Some(labels.clone()),
                    ..Default::default()
                };
                self.docker
                    .create_network(request)
                    .await
                    .map_err(api_error)?;
                Ok(true)
            }
            Err(e) => Err(api_error(e)),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn ensure_holder_image(&self, name: &str) -> Result<(), EngineError> {
        if self.image_present(name).await? {
            return Ok(());
        }
        let program = holder::holder_program().ok_or_else(|| {
            EngineError::Api(format!(
                "no sandbox holder program for this architecture ({})",
                std::env::consts::ARCH
            ))
        })?;
        let (repo, tag) = name.rsplit_once(':').unwrap_or((name, "latest"));
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            changes: vec![format!("CMD [\"{}\"]", holder::HOLDER_PATH)],
            ..Default::default()
        };
        let body = bollard::body_full(holder::rootfs_tar(&program).into());
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

    async fn start_holder(&self, spec: &HolderSpec) -> Result<SandboxRef, EngineError> {
        let mut host_config = HostConfig {
            memory: Some(spec.memory_bytes),
            memory_swap: Some(spec.memory_bytes),
            // It never runs: it sleeps in pause(2) until it is removed.
            nano_cpus: Some(10_000_000),
            network_mode: spec.network.clone(),
            privileged: Some(false),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            pids_limit: Some(4),
            readonly_rootfs: Some(true),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            ..Default::default()
        };
        if spec.publish_port {
            host_config.port_bindings = Some(published_task_port());
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: spec
                .publish_port
                .then(|| HashMap::from([(format!("{TASK_PORT}/tcp"), HashMap::new())])),
            host_config: Some(host_config),
            networking_config: spec.network.as_deref().map(joined),
            ..Default::default()
        };
        let id = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(api_error)?
            .id;
        let started = async {
            self.docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .map_err(api_error)?;
            let info = self.inspect(&id).await?;
            if exit_state_of(&info).is_some() {
                return Err(EngineError::Api("the sandbox holder exited at once".into()));
            }
            Self::task_address(&info, spec.network.as_deref(), spec.publish_port)
        };
        match started.await {
            Ok(addr) => Ok(SandboxRef { id, addr }),
            Err(e) => {
                if let Err(removal) = self.remove(&id).await {
                    tracing::warn!(container = %id, error = %removal, "could not remove a failed sandbox holder");
                }
                Err(e)
            }
        }
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
