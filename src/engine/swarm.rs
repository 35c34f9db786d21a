//! [`Engine`] on a Docker Swarm: the executor talks to a manager's daemon (`DOCKER_HOST`),
//! and each task container is a replicated service of one replica that Swarm's scheduler
//! places on a node with room (its limits are also its reservations).
//!
//! Owns the mapping of the engine contract onto services and tasks: a "container id" is a
//! service id; its state is the state of the service's one task (read from the manager's
//! task list, so a task on a node that went down is seen as lost); readiness is read from
//! the service's log stream. Never restarted by Swarm (restart condition none): the
//! executor decides, as on Docker.
//!
//! Sandboxes: a task on another node cannot join a holder's network namespace, so a
//! sandbox here is an internal attachable overlay network of its own (no gateway: nothing
//! but the network is reachable) and, on the manager, a holder on that network that
//! forwards the executor's connections to the task's address on it (`relay --forward`).
//! The executor itself is on no task network, so a task reaches neither the executor's API
//! nor any other task. Holders, images, runtimes and the manager's own disk are the
//! manager daemon's, through [`DockerEngine`].
//!
//! Images: each node pulls for itself when its task starts ([`Engine::pulls_at_start`]);
//! a service names its image by digest or id ([`SwarmEngine::pinned`]), so a node pulls
//! only what it lacks, and a pull that fails or takes too long is read from the task's
//! state.
//!
//! Not here: a per-service OCI runtime and device mappings (Swarm has neither; refused at
//! [`Engine::create`]), and changing a running task's limits (a new task in Swarm).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, GenericResourcesInner,
    GenericResourcesInnerDiscreteResourceSpec, Limit, Mount, MountTmpfsOptions, MountTypeEnum,
    NetworkAttachmentConfig, NetworkCreateRequest, ResourceObject, ResourcesUlimits, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecPrivileges, TaskSpecLogDriver, TaskSpecPlacement, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{InspectServiceOptions, ListNetworksOptions, UpdateServiceOptions};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::Deserialize;

use super::docker::{api_error, is_not_found, label_filter, DockerEngine};
use super::docker_logs::LogFollower;
use super::ready::OutputScanner;
use super::{
    ContainerSpec, Engine, EngineError, ExitState, Filesystem, HolderSpec, SandboxNetwork,
    SandboxRef, StoredImage, TaskAddr, LABEL_ROLE, TASK_PORT,
};
use crate::config::SwarmSettings;
use crate::pull_progress::PullProgress;
use crate::task::Call;
use crate::task_client::{Answer, CallError, TaskCall, TaskClient};
use bytes::Bytes;

/// [`LABEL_ROLE`] of a sandbox's overlay network.
pub const ROLE_SANDBOX_NETWORK: &str = "sandbox-network";
/// Set on a service that [`SwarmEngine::kill`] scaled to 0. Swarm deletes the task of a
/// service scaled down soon after it stopped; once it is gone, this label is how
/// [`SwarmEngine::exit_state`] still tells a killed task (SIGKILL, 137) from one never
/// started.
const LABEL_KILLED: &str = "org.mecanywhere.killed";
/// The name of every sandbox network starts so.
const NETWORK_PREFIX: &str = "meca-sbx-";
/// How often a starting task's state is read.
const TASK_POLL: Duration = Duration::from_millis(100);
/// How often the exits stream lists the services.
const EXITS_POLL: Duration = Duration::from_millis(500);
/// How long the removal of a service waits for its task to stop.
const TASK_GONE_WAIT: Duration = Duration::from_secs(10);
/// How long the removal of a sandbox's network may wait for its last task to leave it.
const NETWORK_REMOVAL_WAIT: Duration = Duration::from_secs(30);

/// The Swarm engine.
pub struct SwarmEngine {
    /// The manager's daemon: holders, images, runtimes, and the raw API calls.
    docker: DockerEngine,
    settings: SwarmSettings,
    /// How long a task may wait for a node with room, and for its node's pull.
    queue_timeout: Duration,
    pull_timeout: Duration,
    /// The services this engine removed or killed, with their labels: the exits stream
    /// names them at once (its polling would miss a service created and removed between
    /// two looks).
    ended: tokio::sync::broadcast::Sender<(String, HashMap<String, String>)>,
}

/// A swarm task as the manager lists it (only the fields read here; bollard's model drops
/// the network attachments).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SwarmTask {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    created_at: String,
    #[serde(rename = "NodeID", default)]
    node_id: String,
    #[serde(default)]
    status: TaskStatus,
    #[serde(default)]
    networks_attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskStatus {
    #[serde(default)]
    state: String,
    #[serde(default)]
    err: String,
    #[serde(default)]
    container_status: Option<ContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerStatus {
    #[serde(default)]
    exit_code: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attachment {
    network: AttachedNetwork,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttachedNetwork {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    spec: NetworkName,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkName {
    #[serde(default)]
    name: String,
}

/// Where a task is in its life, as the executor cares.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Not yet on a node: waiting for one with room (`no_room` holds Swarm's words).
    Pending {
        no_room: Option<String>,
    },
    /// On a node, pulling its image or creating its container.
    Preparing,
    Running,
    /// Ended (or never will start): how.
    Ended(Ending),
}

#[derive(Debug, Clone, PartialEq)]
enum Ending {
    /// The node could not get the image.
    NoImage(String),
    /// Its container ran and exited (or was killed).
    Exited { code: i64, detail: String },
    /// Its node went down.
    NodeLost,
}

impl Ending {
    /// The start's error for a task that ended so, with what it printed (read from `logs`
    /// until they pause).
    async fn into_error(self, spec: &ContainerSpec, logs: &mut LogFollower) -> EngineError {
        let mut scanner = OutputScanner::default();
        drain(logs, &mut scanner).await;
        self.with_output(spec, scanner.tail())
    }

    fn with_output(self, spec: &ContainerSpec, output: String) -> EngineError {
        let limit_mb = Some(spec.memory_bytes as u64 / (1024 * 1024));
        match self {
            Ending::NoImage(detail) => EngineError::ImageUnavailable {
                image: spec.image.clone(),
                detail: format!("the node could not get it: {detail}"),
            },
            Ending::Exited { code, .. } => EngineError::ExitedBeforeReady {
                state: exited(code, limit_mb),
                output,
            },
            Ending::NodeLost => EngineError::ExitedBeforeReady {
                state: ExitState {
                    code: -1,
                    oom_killed: false,
                    memory_limit_mb: limit_mb,
                    node_lost: true,
                },
                output,
            },
        }
    }
}

impl SwarmTask {
    fn phase(&self, nodes_down: &HashSet<String>) -> Phase {
        let state = self.status.state.as_str();
        let err = self.status.err.clone();
        match state {
            "new" | "allocated" | "pending" => Phase::Pending {
                no_room: (!err.is_empty()).then_some(err),
            },
            "assigned" | "accepted" | "preparing" | "ready" | "starting" | "running"
                if nodes_down.contains(&self.node_id) =>
            {
                Phase::Ended(Ending::NodeLost)
            }
            "assigned" | "accepted" | "preparing" | "ready" | "starting" => Phase::Preparing,
            "running" => Phase::Running,
            "rejected" if is_image_error(&err) => Phase::Ended(Ending::NoImage(err)),
            _ if state == "orphaned" => Phase::Ended(Ending::NodeLost),
            _ => Phase::Ended(Ending::Exited {
                code: self
                    .status
                    .container_status
                    .as_ref()
                    .map_or(-1, |c| c.exit_code),
                detail: if err.is_empty() {
                    state.to_string()
                } else {
                    err
                },
            }),
        }
    }

    /// The task's address on network `network` (an id or a name).
    fn address_on(&self, network: &str) -> Option<std::net::Ipv4Addr> {
        self.networks_attachments
            .iter()
            .find(|a| a.network.id == network || a.network.spec.name == network)?
            .addresses
            .iter()
            .find_map(|a| a.split('/').next()?.parse().ok())
    }
}

/// Whether a rejected task's error says its node could not get the image.
fn is_image_error(err: &str) -> bool {
    let err = err.to_ascii_lowercase();
    [
        "no such image",
        "pull access denied",
        "manifest unknown",
        "not found",
        "repository does not exist",
    ]
    .iter()
    .any(|m| err.contains(m))
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

impl SwarmEngine {
    /// The engine on the swarm managed by `docker`'s daemon; fails unless that daemon is
    /// an active swarm manager.
    pub async fn connect(
        docker: DockerEngine,
        settings: SwarmSettings,
        queue_timeout: Duration,
        pull_timeout: Duration,
    ) -> Result<SwarmEngine, EngineError> {
        let info = docker.client().info().await.map_err(api_error)?;
        let swarm = info.swarm.unwrap_or_default();
        if swarm.control_available != Some(true) {
            return Err(EngineError::Unreachable(format!(
                "engine: swarm needs a swarm manager, and this Docker daemon is not one \
                 (swarm state: {}); run `docker swarm init` here or point DOCKER_HOST at a \
                 manager",
                swarm
                    .local_node_state
                    .map_or("unknown".to_string(), |s| s.to_string())
            )));
        }
        let nodes = docker.get_json("/nodes").await?;
        let versions: Vec<String> = nodes
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                format!(
                    "{} {}",
                    n["Description"]["Hostname"].as_str().unwrap_or("?"),
                    n["Description"]["Engine"]["EngineVersion"]
                        .as_str()
                        .unwrap_or("?")
                )
            })
            .collect();
        tracing::info!(
            nodes = ?versions,
            managers = swarm.managers.unwrap_or(0),
            node_runtime = %settings.node_runtime,
            "connected to a swarm manager; a task gets no-new-privileges only where its \
             node's daemon applies it (Docker 20.10 ignores it in a service: set \
             \"no-new-privileges\": true in each node's daemon.json)"
        );
        Ok(SwarmEngine {
            docker,
            settings,
            queue_timeout,
            pull_timeout,
            ended: tokio::sync::broadcast::channel(256).0,
        })
    }

    /// The latest task of service `id` (`None`: none yet); a missing service is
    /// [`EngineError::NoSuchContainer`].
    async fn current_task(&self, id: &str) -> Result<Option<SwarmTask>, EngineError> {
        self.inspect_service(id).await?;
        Ok(tasks_of(&self.docker, &[id.to_string()])
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .next())
    }

    async fn inspect_service(&self, id: &str) -> Result<bollard::models::Service, EngineError> {
        match self
            .docker
            .client()
            .inspect_service(id, None::<InspectServiceOptions>)
            .await
        {
            Ok(service) => Ok(service),
            Err(e) if is_not_found(&e) => Err(EngineError::NoSuchContainer(id.to_string())),
            Err(e) => Err(api_error(e)),
        }
    }

    /// Sets service `id`'s replicas to `replicas`; `killed` also labels it [`LABEL_KILLED`],
    /// in the same update.
    async fn scale(&self, id: &str, replicas: i64, killed: bool) -> Result<(), EngineError> {
        for _ in 0..5 {
            let service = self.inspect_service(id).await?;
            let version = service.version.and_then(|v| v.index).unwrap_or(0);
            let mut spec = service.spec.unwrap_or_default();
            if killed {
                spec.labels
                    .get_or_insert_with(HashMap::new)
                    .insert(LABEL_KILLED.to_string(), "true".to_string());
            }
            spec.mode = Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(replicas),
                }),
                ..Default::default()
            });
            let options = UpdateServiceOptions {
                version: version as i32,
                ..Default::default()
            };
            match self
                .docker
                .client()
                .update_service(id, spec, options, None)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) => {
                    return Err(EngineError::NoSuchContainer(id.to_string()))
                }
                // Another update came between: read the new version and try again.
                Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                    if message.contains("update out of sequence") => {}
                Err(e) => return Err(api_error(e)),
            }
        }
        Err(EngineError::Api(format!(
            "service {id} kept changing while it was being scaled"
        )))
    }

    /// The sandbox network of holder `holder`, which must run (its relay is the only way
    /// to a task on that network).
    async fn network_of(&self, holder: &str) -> Result<String, EngineError> {
        let info = self
            .docker
            .client()
            .inspect_container(
                holder,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    EngineError::NoSuchContainer(holder.to_string())
                } else {
                    api_error(e)
                }
            })?;
        if !info.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
            return Err(EngineError::Api(format!(
                "sandbox holder {holder} is not running"
            )));
        }
        Self::sandbox_network(info.host_config.and_then(|h| h.network_mode)).ok_or_else(|| {
            EngineError::Api(format!(
                "container {holder} is not a sandbox holder of a swarm"
            ))
        })
    }

    /// A holder's network mode, when it is a sandbox network.
    fn sandbox_network(mode: Option<String>) -> Option<String> {
        mode.filter(|mode| mode.starts_with(NETWORK_PREFIX))
    }

    /// Removes network `network`, waiting while the last tasks on it leave.
    async fn remove_network(&self, network: &str) -> Result<(), EngineError> {
        let started = tokio::time::Instant::now();
        loop {
            match self.docker.client().remove_network(network).await {
                Ok(()) => {
                    // The manager's own copy (its holder's attachment) goes a moment later.
                    while started.elapsed() < NETWORK_REMOVAL_WAIT {
                        let inspected = self
                            .docker
                            .client()
                            .inspect_network(
                                network,
                                None::<bollard::query_parameters::InspectNetworkOptions>,
                            )
                            .await;
                        if inspected.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    return Ok(());
                }
                // A manager says so with a 404 or, for a swarm network, a 500.
                Err(e) if is_not_found(&e) || e.to_string().contains("not found") => return Ok(()),
                Err(e) if started.elapsed() < NETWORK_REMOVAL_WAIT => {
                    tracing::debug!(%network, error = %e, "sandbox network still in use");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(api_error(e)),
            }
        }
    }

    /// What Swarm is asked to create for a task.
    fn service_spec(&self, spec: &ContainerSpec, name: &str, network: &str) -> ServiceSpec {
        let hardening = &spec.hardening;
        let mut container = TaskSpecContainerSpec {
            image: Some(spec.image.clone()),
            labels: Some(spec.labels.clone()),
            tty: Some(spec.tty),
            read_only: hardening.read_only_rootfs.then_some(true),
            capability_drop: Some(vec!["ALL".into()]),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(hardening.nofile_limit),
                hard: Some(hardening.nofile_limit),
            }]),
            privileges: Some(TaskSpecContainerSpecPrivileges {
                no_new_privileges: Some(true),
                ..Default::default()
            }),
            // Killed at once when scaled away or removed, as `docker kill` and `rm -f`.
            stop_signal: Some("SIGKILL".into()),
            stop_grace_period: Some(0),
            ..Default::default()
        };
        if hardening.read_only_rootfs {
            container.mounts = Some(vec![Mount {
                target: Some("/tmp".into()),
                typ: Some(MountTypeEnum::TMPFS),
                tmpfs_options: Some(MountTmpfsOptions {
                    size_bytes: Some(64 << 20),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
        }
        let generic = (!spec.gpus.is_empty()).then(|| {
            vec![GenericResourcesInner {
                discrete_resource_spec: Some(GenericResourcesInnerDiscreteResourceSpec {
                    kind: Some("NVIDIA-GPU".into()),
                    value: Some(spec.gpus.len() as i64),
                }),
                ..Default::default()
            }]
        });
        let log_options = HashMap::from([
            ("max-size".to_string(), hardening.log_max_size.clone()),
            ("max-file".to_string(), hardening.log_max_files.to_string()),
        ]);
        ServiceSpec {
            name: Some(name.to_string()),
            labels: Some(spec.labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(container),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: Some(spec.nano_cpus),
                        memory_bytes: Some(spec.memory_bytes),
                        pids: Some(hardening.pids_limit),
                    }),
                    // Limits are reservations: a node is chosen only where the task fits.
                    reservations: Some(ResourceObject {
                        nano_cpus: Some(spec.nano_cpus),
                        memory_bytes: Some(spec.memory_bytes),
                        generic_resources: generic,
                    }),
                }),
                placement: (!self.settings.constraints.is_empty()).then(|| TaskSpecPlacement {
                    constraints: Some(self.settings.constraints.clone()),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    ..Default::default()
                }),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(network.to_string()),
                    ..Default::default()
                }]),
                log_driver: Some(TaskSpecLogDriver {
                    name: Some("json-file".into()),
                    options: Some(log_options),
                }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }),
                ..Default::default()
            }),
            // No virtual IP: the executor reaches the task at its own address.
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Waits until service `id`'s task runs (through a node with room and its pull), and
    /// returns it; fails with what kept it from running.
    async fn until_running(
        &self,
        id: &str,
        spec: &ContainerSpec,
    ) -> Result<SwarmTask, EngineError> {
        let started = tokio::time::Instant::now();
        let mut preparing_since = None;
        let mut seen = String::new();
        loop {
            let down = nodes_down(&self.docker).await?;
            if let Some(task) = self.current_task(id).await? {
                let state = format!("{} {}", task.status.state, task.status.err);
                if state != seen {
                    tracing::debug!(service = %id, %state, after = ?started.elapsed(), "task state");
                    seen = state;
                }
                match task.phase(&down) {
                    Phase::Running => return Ok(task),
                    Phase::Pending { no_room } => {
                        if started.elapsed() >= self.queue_timeout {
                            return Err(EngineError::NoRoom(format!(
                                "no node of the swarm had room for the task within \
                                 queue_timeout ({}): {}",
                                humantime::format_duration(self.queue_timeout),
                                no_room.unwrap_or_else(|| "it stayed pending".into())
                            )));
                        }
                    }
                    Phase::Preparing => {
                        let since = *preparing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= self.pull_timeout {
                            return Err(EngineError::PullTimeout {
                                image: spec.image.clone(),
                                after: self.pull_timeout,
                            });
                        }
                    }
                    Phase::Ended(ending) => {
                        let mut logs = self.docker.follow_service(id, spec.tty).await?;
                        return Err(ending.into_error(spec, &mut logs).await);
                    }
                }
            }
            tokio::time::sleep(TASK_POLL).await;
        }
    }

    /// Waits (at most [`TASK_GONE_WAIT`]) until none of `tasks` (of a removed service) runs
    /// any more, so a removal is over when it returns, as on Docker.
    async fn until_tasks_gone(&self, service: &str, tasks: &[String]) {
        let started = tokio::time::Instant::now();
        for task in tasks {
            while started.elapsed() < TASK_GONE_WAIT {
                let Ok(down) = nodes_down(&self.docker).await else {
                    return;
                };
                match self.docker.get_json(&format!("/tasks/{task}")).await {
                    Ok(value) => match serde_json::from_value::<SwarmTask>(value) {
                        Ok(t) if !matches!(t.phase(&down), Phase::Ended(_)) => {}
                        _ => break,
                    },
                    // Gone from the manager: its node reported it stopped.
                    Err(_) => break,
                }
                tokio::time::sleep(TASK_POLL).await;
            }
        }
        if started.elapsed() >= TASK_GONE_WAIT {
            tracing::warn!(%service, "a removed service's task still ran after {TASK_GONE_WAIT:?}");
        }
    }

    /// The reference a task service names `image` by, so that a node runs the image it has
    /// and pulls only one it lacks. Named by tag, a node's agent pulls at every start
    /// (Swarm always refreshes a tag): from the tag's registry, Docker Hub for a bare name,
    /// even when it has the image. So, as `docker service create` resolves a tag:
    /// the manager's copy's registry digest (`name@sha256:...`: a node that has it pulls
    /// nothing, one that lacks it pulls exactly that), or its image id when it came from
    /// no registry (loaded or built on the nodes); an image the manager lacks is resolved
    /// by its registry; one no registry resolves stays as named (the node then reports
    /// what it could not get).
    async fn pinned(&self, image: &str) -> String {
        let (name, _, _) = crate::image_ref::split(image);
        match self.docker.client().inspect_image(image).await {
            Ok(info) => {
                let wanted = crate::image_ref::canonical(&format!("{name}@x"));
                let digest = info.repo_digests.unwrap_or_default().into_iter().find(|d| {
                    let (repo, _, _) = crate::image_ref::split(d);
                    crate::image_ref::canonical(&format!("{repo}@x")) == wanted
                });
                digest.or(info.id).unwrap_or_else(|| image.to_string())
            }
            Err(_) => match self
                .docker
                .client()
                .inspect_registry_image(image, None)
                .await
            {
                Ok(found) => match found.descriptor.digest {
                    Some(digest) => format!("{name}@{digest}"),
                    None => image.to_string(),
                },
                Err(e) => {
                    tracing::debug!(%image, error = %e, "no registry resolves the image");
                    image.to_string()
                }
            },
        }
    }

    /// Lists labelled services: all, or those whose task runs.
    async fn labelled_services(
        &self,
        key: &str,
        value: &str,
        all: bool,
    ) -> Result<Vec<String>, EngineError> {
        let ids = services_labelled(&self.docker, key, value).await?;
        if all {
            return Ok(ids);
        }
        let down = nodes_down(&self.docker).await?;
        let latest = latest_tasks(&self.docker, &ids).await?;
        Ok(ids
            .into_iter()
            .filter(|id| {
                latest
                    .get(id)
                    .is_some_and(|t| t.phase(&down) == Phase::Running)
            })
            .collect())
    }
}

/// Feeds `scanner` what `logs` bring until they pause (a task that ended prints no more; the
/// service's stream does not end with it).
async fn drain(logs: &mut LogFollower, scanner: &mut OutputScanner) {
    while let Ok(Some(Ok((stream, bytes)))) =
        tokio::time::timeout(Duration::from_millis(300), logs.next()).await
    {
        scanner.feed(stream, &bytes);
    }
}

/// The ids of the services labelled `key=value`.
async fn services_labelled(
    docker: &DockerEngine,
    key: &str,
    value: &str,
) -> Result<Vec<String>, EngineError> {
    let filters = serde_json::json!({ "label": [format!("{key}={value}")] }).to_string();
    let services = docker
        .get_json(&format!("/services?filters={}", urlencode(&filters)))
        .await?;
    Ok(services
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some(s["ID"].as_str()?.to_string()))
        .collect())
}

/// The tasks of services `ids` (with their service's id), the latest first.
async fn tasks_of(
    docker: &DockerEngine,
    ids: &[String],
) -> Result<Vec<(String, SwarmTask)>, EngineError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let filters = serde_json::json!({ "service": ids }).to_string();
    let value = docker
        .get_json(&format!("/tasks?filters={}", urlencode(&filters)))
        .await?;
    let mut tasks: Vec<(String, SwarmTask)> = value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let service = t["ServiceID"].as_str()?.to_string();
            Some((service, serde_json::from_value(t.clone()).ok()?))
        })
        .collect();
    tasks.sort_by(|a, b| b.1.created_at.cmp(&a.1.created_at));
    Ok(tasks)
}

/// The latest task of each of services `ids` that has one.
async fn latest_tasks(
    docker: &DockerEngine,
    ids: &[String],
) -> Result<HashMap<String, SwarmTask>, EngineError> {
    let mut latest = HashMap::new();
    for (service, task) in tasks_of(docker, ids).await? {
        latest.entry(service).or_insert(task);
    }
    Ok(latest)
}

/// The nodes that are not ready (down, or gone from the swarm).
async fn nodes_down(docker: &DockerEngine) -> Result<HashSet<String>, EngineError> {
    let nodes = docker.get_json("/nodes").await?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["Status"]["State"].as_str() != Some("ready"))
        .filter_map(|n| Some(n["ID"].as_str()?.to_string()))
        .collect())
}

/// The replicas a service's spec asks for (0 or 1 here).
fn replicas(spec: &ServiceSpec) -> i64 {
    spec.mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref()?.replicas)
        .unwrap_or(0)
}

fn exited(code: i64, memory_limit_mb: Option<u64>) -> ExitState {
    ExitState {
        code,
        // Swarm's task status does not tell an OOM kill from another SIGKILL.
        oom_killed: false,
        memory_limit_mb,
        node_lost: false,
    }
}

/// Percent-encodes a query value.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[async_trait]
impl Engine for SwarmEngine {
    async fn capacity(&self) -> Result<Option<crate::host::HostCapacity>, EngineError> {
        let nodes = self.docker.get_json("/nodes").await?;
        let (mut nano_cpus, mut mem_bytes) = (0i64, 0i64);
        for node in nodes.as_array().into_iter().flatten() {
            let ready = node["Status"]["State"].as_str() == Some("ready");
            let open = node["Spec"]["Availability"].as_str() == Some("active");
            if ready && open {
                nano_cpus += node["Description"]["Resources"]["NanoCPUs"]
                    .as_i64()
                    .unwrap_or(0);
                mem_bytes += node["Description"]["Resources"]["MemoryBytes"]
                    .as_i64()
                    .unwrap_or(0);
            }
        }
        Ok(Some(crate::host::HostCapacity {
            cores: (nano_cpus / 1_000_000_000) as u32,
            mem_mb: (mem_bytes / (1024 * 1024)) as u64,
        }))
    }

    fn pulls_at_start(&self) -> bool {
        // Each node pulls for itself when its task starts (see `until_running`).
        true
    }

    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        self.docker.image_present(image).await
    }

    async fn pull(&self, image: &str, progress: &PullProgress) -> Result<(), EngineError> {
        self.docker.pull(image, progress).await
    }

    async fn stored_images(&self) -> Result<Vec<StoredImage>, EngineError> {
        self.docker.stored_images().await
    }

    async fn remove_image(&self, name: &str) -> Result<(), EngineError> {
        self.docker.remove_image(name).await
    }

    async fn image_root(&self) -> Result<PathBuf, EngineError> {
        self.docker.image_root().await
    }

    async fn image_filesystem(
        &self,
        holder_image: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Filesystem, EngineError> {
        self.docker.image_filesystem(holder_image, labels).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        if let Some(runtime) = &spec.runtime {
            if *runtime != self.settings.node_runtime {
                return Err(EngineError::Unsupported(format!(
                    "runtime {runtime}: a swarm service cannot choose its runtime, and the \
                     nodes run {} (swarm.node_runtime)",
                    self.settings.node_runtime
                )));
            }
        }
        if spec.sgx.is_some() {
            return Err(EngineError::Unsupported(
                "SGX: a swarm service cannot map devices; SGX tasks need engine: docker".into(),
            ));
        }
        let network = self.network_of(&spec.sandbox.id).await?;
        let name = format!("meca-task-{}", random_suffix());
        let mut body = self.service_spec(spec, &name, &network);
        let image = self.pinned(&spec.image).await;
        if let Some(container) = body
            .task_template
            .as_mut()
            .and_then(|t| t.container_spec.as_mut())
        {
            container.image = Some(image);
        }
        let created = self
            .docker
            .client()
            .create_service(body, None)
            .await
            .map_err(api_error)?;
        created
            .id
            .ok_or_else(|| EngineError::Api("the manager created a service without an id".into()))
    }

    async fn start_and_wait_ready(
        &self,
        id: &str,
        spec: &ContainerSpec,
        deadline: Duration,
    ) -> Result<TaskAddr, EngineError> {
        let TaskAddr::Relay(relay) = &spec.sandbox.addr else {
            return Err(EngineError::Api(
                "a swarm task's sandbox must be a holder's relay".into(),
            ));
        };
        let network = self.network_of(&spec.sandbox.id).await?;
        let began = tokio::time::Instant::now();
        self.scale(id, 1, false).await?;
        let task = self.until_running(id, spec).await?;
        tracing::debug!(service = %id, node = %task.node_id, after = ?began.elapsed(), "task running");
        // Followed once the task is on its node: a log subscription made before Swarm placed
        // the task reached that node up to 30 s late (1 start in 8 in a burst, measured);
        // the stream still begins with the task's first line.
        let mut logs = self.docker.follow_service(id, spec.tty).await?;
        let started = tokio::time::Instant::now();
        let Some(ip) = task.address_on(&network) else {
            return Err(EngineError::Api(format!(
                "task {} of service {id} has no address on its sandbox network {network}",
                task.id
            )));
        };
        let addr = TaskAddr::Forward {
            relay: relay.clone(),
            to: std::net::SocketAddrV4::new(ip, TASK_PORT),
        };
        // The service's log stream does not end when its task does: the task's state is
        // watched beside it.
        let mut scanner = OutputScanner::default();
        let ended = async {
            loop {
                tokio::time::sleep(TASK_POLL * 2).await;
                let down = nodes_down(&self.docker).await?;
                if let Some(task) = self.current_task(id).await? {
                    if let Phase::Ended(ending) = task.phase(&down) {
                        return Ok::<Ending, EngineError>(ending);
                    }
                }
            }
        };
        tokio::pin!(ended);
        let ready = async {
            tokio::select! {
                ready = DockerEngine::follow_until_ready(&mut logs, &mut scanner) => ready.map(|_| None),
                ending = &mut ended => ending.map(Some),
            }
        };
        match tokio::time::timeout(deadline, ready).await {
            Err(_) => return Err(EngineError::ReadyTimeout(deadline)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Some(ending))) => {
                drain(&mut logs, &mut scanner).await;
                return Err(ending.with_output(spec, scanner.tail()));
            }
            Ok(Ok(None)) => {
                tracing::debug!(service = %id, after = ?began.elapsed(), "task printed its ready line");
            }
        }
        let left = deadline.saturating_sub(started.elapsed());
        let listening = async {
            tokio::select! {
                listens = DockerEngine::until_listening(&addr, &mut logs) => Ok(listens),
                ending = &mut ended => ending.map(|_| false),
            }
        };
        match tokio::time::timeout(left, listening).await {
            Err(_) => Err(EngineError::NotListening(deadline)),
            Ok(Ok(true)) => Ok(addr),
            Ok(Ok(false)) | Ok(Err(_)) => match self.exit_state(id).await? {
                Some(state) => Err(EngineError::ExitedAfterReady(state)),
                None => Err(EngineError::Api(
                    "the task's output ended before it listened on its port".into(),
                )),
            },
        }
    }

    async fn exit_state(&self, id: &str) -> Result<Option<ExitState>, EngineError> {
        let service = self.inspect_service(id).await?;
        let spec = service.spec.unwrap_or_default();
        let killed = spec
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(LABEL_KILLED));
        let scaled_up = replicas(&spec) > 0;
        let memory_limit_mb = spec
            .task_template
            .and_then(|t| t.resources?.limits?.memory_bytes)
            .map(|m| m as u64 / (1024 * 1024));
        let down = nodes_down(&self.docker).await?;
        let Some(task) = tasks_of(&self.docker, &[id.to_string()])
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .next()
        else {
            return Ok(match (scaled_up, killed) {
                // Started, and Swarm has not made its task yet.
                (true, _) => None,
                // Swarm deleted the task of a killed service once it stopped: it was
                // killed by the stop signal, SIGKILL.
                (false, true) => Some(exited(137, memory_limit_mb)),
                // Created, never started: stopped, as a created container is.
                (false, false) => Some(exited(0, memory_limit_mb)),
            });
        };
        Ok(match task.phase(&down) {
            Phase::Pending { .. } | Phase::Preparing | Phase::Running => None,
            Phase::Ended(Ending::NodeLost) => Some(ExitState {
                code: -1,
                oom_killed: false,
                memory_limit_mb,
                node_lost: true,
            }),
            Phase::Ended(Ending::NoImage(_)) => Some(exited(-1, memory_limit_mb)),
            Phase::Ended(Ending::Exited { code, .. }) => Some(exited(code, memory_limit_mb)),
        })
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let labels = match self.inspect_service(id).await {
            Ok(service) => Some(service.spec.and_then(|s| s.labels).unwrap_or_default()),
            Err(EngineError::NoSuchContainer(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(labels) = labels {
            let tasks: Vec<String> = tasks_of(&self.docker, &[id.to_string()])
                .await?
                .into_iter()
                .map(|(_, t)| t.id)
                .collect();
            match self.docker.client().delete_service(id).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api_error(e)),
            }
            let _ = self.ended.send((id.to_string(), labels));
            self.until_tasks_gone(id, &tasks).await;
            return Ok(());
        }
        // A holder: the container, then its network once the last task left it.
        let holder = self
            .docker
            .client()
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await;
        match holder {
            Ok(info) => {
                let network = Self::sandbox_network(info.host_config.and_then(|h| h.network_mode));
                self.docker.remove(id).await?;
                match network {
                    Some(network) => self.remove_network(&network).await,
                    None => Ok(()),
                }
            }
            Err(e) if is_not_found(&e) => {
                // Perhaps a sandbox network whose holder is gone (`list_labelled` lists
                // them); an unknown id is no error.
                self.remove_network(id).await
            }
            Err(e) => Err(api_error(e)),
        }
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        let spec = match self.inspect_service(id).await {
            Ok(service) => service.spec.unwrap_or_default(),
            // Perhaps a holder.
            Err(EngineError::NoSuchContainer(_)) => return self.docker.kill(id).await,
            Err(e) => return Err(e),
        };
        if replicas(&spec) == 0 {
            // Never started, or killed already.
            return Ok(());
        }
        let labels = spec.labels.unwrap_or_default();
        // A task that already ended keeps its exit state: scaling its service to 0 would
        // make Swarm delete it, and its exit code with it.
        match self.exit_state(id).await {
            Ok(Some(_)) | Err(EngineError::NoSuchContainer(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        match self.scale(id, 0, true).await {
            Ok(()) => {}
            Err(EngineError::NoSuchContainer(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            match self.exit_state(id).await {
                Ok(Some(_)) | Err(EngineError::NoSuchContainer(_)) => {
                    let _ = self.ended.send((id.to_string(), labels));
                    return Ok(());
                }
                Ok(None) => tokio::time::sleep(TASK_POLL).await,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Api(format!(
            "the task of service {id} was still running 30s after it was scaled to 0"
        )))
    }

    async fn list_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError> {
        let mut ids = self.labelled_services(key, value, true).await?;
        let filter = HashMap::from([label_filter(key, value)]);
        let containers = self
            .docker
            .client()
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filter),
                ..Default::default()
            }))
            .await
            .map_err(api_error)?;
        let mut held = HashSet::new();
        for container in containers {
            let mode = container.host_config.and_then(|h| h.network_mode);
            held.extend(Self::sandbox_network(mode));
            ids.extend(container.id);
        }
        // Sandbox networks whose holder is gone (a removal that gave up, a crash between);
        // a holder's own goes with it.
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![
                    format!("{key}={value}"),
                    format!("{LABEL_ROLE}={ROLE_SANDBOX_NETWORK}"),
                ],
            )])),
        };
        for network in self
            .docker
            .client()
            .list_networks(Some(options))
            .await
            .map_err(api_error)?
        {
            if !held.contains(network.name.as_deref().unwrap_or_default()) {
                ids.extend(network.id);
            }
        }
        Ok(ids)
    }

    async fn running_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError> {
        let mut ids = self.labelled_services(key, value, false).await?;
        ids.extend(self.docker.running_labelled(key, value).await?);
        Ok(ids)
    }

    fn container_exits(
        &self,
        key: &str,
        value: &str,
    ) -> BoxStream<'static, Result<String, EngineError>> {
        let holders = self.docker.container_exits(key, value);
        let engine = ExitPoller {
            docker: self.docker.clone(),
            key: key.to_string(),
            value: value.to_string(),
            ended: self.ended.clone(),
        };
        // The poller looks at once, so what runs now is known when it ends later; it stops
        // when the stream is dropped.
        let (found, mut found_rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let (mut alive, mut reported) = (HashSet::new(), HashSet::new());
            loop {
                match engine.poll(&mut alive, &mut reported).await {
                    Ok(gone) => {
                        for id in gone {
                            let labels =
                                HashMap::from([(engine.key.clone(), engine.value.clone())]);
                            let _ = engine.ended.send((id.clone(), labels));
                            if found.send(Ok(id)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = found.send(Err(e)).await;
                        return;
                    }
                }
                tokio::select! {
                    () = found.closed() => return,
                    () = tokio::time::sleep(EXITS_POLL) => {}
                }
            }
        });
        let services = futures_util::stream::poll_fn(move |cx| found_rx.poll_recv(cx));
        let (key, value) = (key.to_string(), value.to_string());
        let announced = futures_util::stream::unfold(self.ended.subscribe(), move |mut ended| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                loop {
                    match ended.recv().await {
                        Ok((id, labels)) if labels.get(&key) == Some(&value) => {
                            return Some((Ok(id), ended))
                        }
                        Ok(_) => {}
                        // Missed some: the polling names them.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        futures_util::stream::select(futures_util::stream::select(holders, announced), services)
            .boxed()
    }

    async fn runtimes(&self) -> Result<Vec<String>, EngineError> {
        Ok(vec![self.settings.node_runtime.clone()])
    }

    async fn prepare_sandboxes(&self, dir: &Path) -> Result<(), EngineError> {
        self.docker.prepare_sandboxes(dir).await
    }

    async fn ensure_holder_image(&self, name: &str) -> Result<(), EngineError> {
        self.docker.ensure_holder_image(name).await
    }

    async fn host_addresses(
        &self,
        holder_image: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<String>, EngineError> {
        self.docker.host_addresses(holder_image, labels).await
    }

    async fn start_holder(&self, spec: &HolderSpec) -> Result<SandboxRef, EngineError> {
        if spec.network != SandboxNetwork::None {
            return Err(EngineError::Unsupported(
                "engine: swarm gives tasks isolated sandboxes only".into(),
            ));
        }
        let name = format!("{NETWORK_PREFIX}{}", random_suffix());
        let mut labels = spec.labels.clone();
        labels.insert(LABEL_ROLE.to_string(), ROLE_SANDBOX_NETWORK.to_string());
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("overlay".into()),
            // No gateway: the network reaches nothing but its own members.
            internal: Some(true),
            attachable: Some(true),
            labels: Some(labels),
            ..Default::default()
        };
        self.docker
            .client()
            .create_network(request)
            .await
            .map_err(api_error)?;
        match self.docker.start_holder_on(spec, Some(&name)).await {
            Ok(holder) => Ok(holder),
            Err(e) => {
                if let Err(removal) = self.remove_network(&name).await {
                    tracing::warn!(network = %name, error = %removal, "could not remove a failed sandbox's network");
                }
                Err(e)
            }
        }
    }

    fn task_client(
        &self,
        id: &str,
        addr: &TaskAddr,
        max_answer_bytes: usize,
    ) -> std::sync::Arc<dyn TaskCall> {
        std::sync::Arc::new(LostAware {
            inner: TaskClient::new(addr.clone(), max_answer_bytes),
            id: id.to_string(),
            ended: self.ended.clone(),
        })
    }

    async fn update_limits(
        &self,
        id: &str,
        _nano_cpus: i64,
        _memory_bytes: i64,
    ) -> Result<(), EngineError> {
        Err(EngineError::Unsupported(format!(
            "service {id}: a swarm task's limits cannot change while it runs (Swarm replaces \
             the task)"
        )))
    }
}

/// The client of a task on a swarm: a call in flight fails as soon as its task is known to
/// have ended (removed, or its node lost). On a single host a container's death closes
/// the connection; a node that went away closes nothing, and the call would wait for its
/// timeout.
#[derive(Debug)]
struct LostAware {
    inner: TaskClient,
    id: String,
    ended: tokio::sync::broadcast::Sender<(String, HashMap<String, String>)>,
}

#[async_trait]
impl TaskCall for LostAware {
    fn addr(&self) -> &TaskAddr {
        self.inner.addr()
    }

    async fn call(&self, call: Call, input: Bytes, timeout: Duration) -> Result<Answer, CallError> {
        let mut ended = self.ended.subscribe();
        let gone = async {
            loop {
                match ended.recv().await {
                    Ok((id, _)) if id == self.id => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        };
        tokio::select! {
            answer = self.inner.call(call, input, timeout) => answer,
            () = gone => Err(CallError::Transport(
                "the task ended while it was called (removed, or its node was lost)".into(),
            )),
        }
    }

    fn close(&self) {
        self.inner.close();
    }
}

/// What the exits stream of services needs (moved into its poller).
struct ExitPoller {
    docker: DockerEngine,
    key: String,
    value: String,
    /// Where what it finds ended is also told, for the calls in flight to those tasks
    /// ([`LostAware`]).
    ended: tokio::sync::broadcast::Sender<(String, HashMap<String, String>)>,
}

impl ExitPoller {
    /// One look at the labelled services: the ids of those whose task ended (or whose node
    /// went down), lost its task, or that were removed since they were seen alive, each
    /// reported once.
    async fn poll(
        &self,
        alive: &mut HashSet<String>,
        reported: &mut HashSet<String>,
    ) -> Result<Vec<String>, EngineError> {
        let ids = services_labelled(&self.docker, &self.key, &self.value).await?;
        let down = nodes_down(&self.docker).await?;
        let latest = latest_tasks(&self.docker, &ids).await?;
        let mut gone = Vec::new();
        let present: HashSet<&String> = ids.iter().collect();
        for id in alive.iter() {
            if !present.contains(id) && reported.insert(id.clone()) {
                gone.push(id.clone());
            }
        }
        alive.retain(|id| present.contains(id));
        for id in &ids {
            match latest.get(id).map(|t| t.phase(&down)) {
                Some(Phase::Ended(_)) => {
                    if reported.insert(id.clone()) {
                        gone.push(id.clone());
                    }
                    alive.remove(id);
                }
                Some(_) => {
                    alive.insert(id.clone());
                }
                // Seen with a task before, none now: Swarm deleted it once it stopped (its
                // service was scaled to 0 by someone other than this engine).
                None if alive.remove(id) && reported.insert(id.clone()) => {
                    gone.push(id.clone());
                }
                None => {}
            }
        }
        reported.retain(|id| present.contains(id));
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: &str, err: &str, node: &str) -> SwarmTask {
        serde_json::from_value(serde_json::json!({
            "ID": "t1",
            "CreatedAt": "2026-12-07T19:21:13Z",
            "NodeID": node,
            "Status": {"State": state, "Err": err, "ContainerStatus": {"ExitCode": 3}},
            "NetworksAttachments": [{
                "Network": {"ID": "n1", "Spec": {"Name": "meca-sbx-1"}},
                "Addresses": ["10.0.1.5/24"]
            }]
        }))
        .unwrap()
    }

    #[test]
    fn a_task_state_is_read_as_the_executor_needs_it() {
        let none = HashSet::new();
        assert_eq!(
            task(
                "pending",
                "no suitable node (insufficient resources on 3 nodes)",
                ""
            )
            .phase(&none),
            Phase::Pending {
                no_room: Some("no suitable node (insufficient resources on 3 nodes)".into())
            }
        );
        assert_eq!(task("preparing", "", "a").phase(&none), Phase::Preparing);
        assert_eq!(task("running", "", "a").phase(&none), Phase::Running);
        assert_eq!(
            task("rejected", "No such image: x:1", "a").phase(&none),
            Phase::Ended(Ending::NoImage("No such image: x:1".into()))
        );
        assert_eq!(
            task("failed", "task: non-zero exit (3)", "a").phase(&none),
            Phase::Ended(Ending::Exited {
                code: 3,
                detail: "task: non-zero exit (3)".into()
            })
        );
        let down = HashSet::from(["a".to_string()]);
        assert_eq!(
            task("running", "", "a").phase(&down),
            Phase::Ended(Ending::NodeLost)
        );
        assert_eq!(task("running", "", "b").phase(&down), Phase::Running);
    }

    #[test]
    fn the_task_address_is_the_one_on_its_sandbox_network() {
        let t = task("running", "", "a");
        assert_eq!(t.address_on("meca-sbx-1"), Some([10, 0, 1, 5].into()));
        assert_eq!(t.address_on("n1"), Some([10, 0, 1, 5].into()));
        assert_eq!(t.address_on("other"), None);
    }

    #[test]
    fn filters_are_percent_encoded() {
        assert_eq!(
            urlencode("{\"a\":[\"b=c\"]}"),
            "%7B%22a%22%3A%5B%22b%3Dc%22%5D%7D"
        );
    }
}
