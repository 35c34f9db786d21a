//! Which container engine the executor drives (`engine:`, or the seed's `type:`), and the
//! `swarm:` section.
//!
//! Owns the choice's format and what each engine cannot do, so that a setting an engine
//! cannot honour is refused at start, never silently dropped. It reads no file and talks
//! to no engine.

use serde::Deserialize;

/// The engine tasks run on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EngineChoice {
    /// The Docker daemon of this host (`DOCKER_HOST`).
    #[default]
    Docker,
    /// The Docker Swarm whose manager `DOCKER_HOST` is: one replicated service per warm
    /// task, placed by Swarm's scheduler on any node.
    Swarm(SwarmSettings),
}

/// The `swarm:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmSettings {
    /// The OCI runtime the nodes' dockerd run containers with by default (Swarm cannot
    /// choose one per service): tasks asking for `microVM_runtime` run only when this is
    /// that runtime.
    #[serde(default = "default_node_runtime")]
    pub node_runtime: String,
    /// Swarm placement constraints every task service gets (`docker service create
    /// --constraint` syntax, e.g. `node.role==worker` to keep tasks off the managers, or
    /// `node.labels.meca==yes` for the nodes the owner lends).
    #[serde(default)]
    pub constraints: Vec<String>,
}

fn default_node_runtime() -> String {
    "runc".into()
}

impl Default for SwarmSettings {
    fn default() -> Self {
        SwarmSettings {
            node_runtime: default_node_runtime(),
            constraints: Vec::new(),
        }
    }
}

impl EngineChoice {
    /// The engine named `name` (`docker` or `swarm`), with the `swarm:` section if given.
    pub fn parse(name: &str, swarm: Option<SwarmSettings>) -> Result<EngineChoice, String> {
        match name.trim() {
            "docker" if swarm.is_some() => {
                Err("a swarm: section needs engine: swarm (the engine is docker)".into())
            }
            "docker" => Ok(EngineChoice::Docker),
            "swarm" => Ok(EngineChoice::Swarm(swarm.unwrap_or_default())),
            other => Err(format!(
                "{other:?}: the engines are \"docker\" and \"swarm\""
            )),
        }
    }

    pub fn is_swarm(&self) -> bool {
        matches!(self, EngineChoice::Swarm(_))
    }
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineChoice::Docker => "docker",
            EngineChoice::Swarm(_) => "swarm",
        })
    }
}
