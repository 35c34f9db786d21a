//! The executor under test: Docker and the task image checked, the executor started on a
//! free loopback port with the bench's config, and stopped at the end with a check of what it
//! left.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use bollard::Docker;
use hyper::Method;
use mecanywhere_tools::{docker, launch};

use crate::args::Args;
use crate::cleanup::leftovers;
use crate::conn::Conn;
use crate::error::err;
use crate::fixture::{IMAGE, LABEL_BENCH, PREWARM_CPU, PREWARM_MEM};
use crate::metrics::wait_settled;
use mecanywhere_executor::engine::LABEL_EXECUTOR;

/// Docker's API, its version negotiated, and its version as the bench prints it.
pub async fn connect_docker() -> Result<(Docker, String), String> {
    let docker = Docker::connect_with_defaults()
        .map_err(err("Docker"))?
        .negotiate_version()
        .await
        .map_err(err("Docker API version"))?;
    let version = docker.version().await.map_err(err("Docker version"))?;
    let docker_version = format!(
        "{} (API {})",
        version.version.clone().unwrap_or_default(),
        version.api_version.clone().unwrap_or_default()
    );
    Ok((docker, docker_version))
}

/// Builds the task images with `scripts/build-task-images.sh` when [`IMAGE`] is missing.
pub fn ensure_image() -> Result<(), String> {
    if docker::image_present(IMAGE) {
        return Ok(());
    }
    // The scripts are the executor's, one level above this crate.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root
        .parent()
        .unwrap_or(root)
        .join("scripts/build-task-images.sh");
    eprintln!("bench: {IMAGE} missing: running {}", script.display());
    let status = Command::new(&script)
        .status()
        .map_err(err(script.display()))?;
    if !status.success() || !docker::image_present(IMAGE) {
        return Err(format!("{} failed to build {IMAGE}", script.display()));
    }
    Ok(())
}

/// The executor the bench started and what the rows need to reach it.
pub struct Session {
    pub addr: SocketAddr,
    pub docker: Docker,
    /// The executor's `name` (its containers' label).
    pub name: String,
    /// The baseline containers' label value.
    pub bench_label: String,
    pub exec_pid: u32,
    /// The host's cores, the executor's CPU budget.
    pub cores: usize,
    /// The executor's config file and log.
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Session {
    /// Starts the executor (`executor_bin`) and waits until its prewarmed key is ready;
    /// returns it with the control connection.
    pub async fn start(
        args: &Args,
        docker: Docker,
        executor_bin: &Path,
        cores: usize,
    ) -> Result<(Session, Conn), String> {
        let pid = std::process::id();
        let name = format!("bench-{pid}");
        let bench_label = pid.to_string();
        let dir = std::env::temp_dir().join(format!("meca-{name}"));
        {
            let mut state = leftovers();
            state.temp_dir = Some(dir.clone());
            state.executor_name = Some(name.clone());
            state.bench_label = Some(bench_label.clone());
        }
        std::fs::create_dir_all(&dir).map_err(err(dir.display()))?;
        let config = dir.join("mecanywhere_executor.yaml");
        let state_file = dir.join("images.json");
        std::fs::write(&config, config_text(args, &name, cores, &state_file))
            .map_err(err(config.display()))?;
        let port = launch::free_port().map_err(err("free port"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join("executor.log");
        let child = launch::spawn_executor(executor_bin, &config, addr, &log)
            .map_err(err(executor_bin.display()))?;
        let exec_pid = child.id();
        leftovers().executor = Some(child);
        let exited = || {
            leftovers()
                .executor
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
        };

        let started = Instant::now();
        let mut ctl = loop {
            if let Ok(mut c) = Conn::open(addr).await {
                if c.control(Method::GET, "/health").await.is_ok() {
                    break c;
                }
            }
            if started.elapsed() > Duration::from_secs(30) || exited() {
                return Err("the executor did not become healthy".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The prewarmed container ready, nothing else: the executor is at rest.
        wait_settled(&mut ctl, 1.0, Duration::from_secs(60)).await?;
        println!(
            "bench: executor pid {exec_pid} on {addr}, name {name}; prewarmed key ready after {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        let session = Session {
            addr,
            docker,
            name,
            bench_label,
            exec_pid,
            cores,
            config,
            log,
        };
        Ok((session, ctl))
    }

    /// Sends `/stop`, waits for the executor to exit, and removes (and reports) what it or the
    /// baseline left.
    pub async fn stop(&self, ctl: &mut Conn) -> Result<Stop, String> {
        let t = Instant::now();
        ctl.control(Method::POST, "/stop").await?;
        let exit = loop {
            let status = {
                let mut state = leftovers();
                match state.executor.as_mut() {
                    Some(child) => child.try_wait().map_err(err("executor wait"))?,
                    None => return Err("executor handle lost".into()),
                }
            };
            if let Some(status) = status {
                leftovers().executor = None;
                break status;
            }
            if t.elapsed() > Duration::from_secs(60) {
                return Err("the executor did not exit within 60 s of /stop".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let stop_ms = t.elapsed().as_secs_f64() * 1000.0;
        let name = &self.name;
        let left_executor = docker::labelled(LABEL_EXECUTOR, name);
        if !left_executor.is_empty() {
            eprintln!(
                "bench: PROBLEM: {} container(s) labelled {LABEL_EXECUTOR}={name} left after /stop: {left_executor:?}; removing",
                left_executor.len()
            );
            docker::remove(&left_executor, true);
        }
        let left_bench = docker::labelled(LABEL_BENCH, &self.bench_label);
        if !left_bench.is_empty() {
            eprintln!(
                "bench: removing {} leftover baseline container(s)",
                left_bench.len()
            );
            docker::remove(&left_bench, true);
        }
        let left_tags = leftovers().tags.len();
        Ok(Stop {
            exit,
            stop_ms,
            left_executor: left_executor.len(),
            left_bench: left_bench.len(),
            left_tags,
        })
    }
}

/// The executor's config: the host's cores, 4 GB, one prewarmed key, image_gc's record in
/// the bench's temp dir (its defaults otherwise), and the pools and eviction as the command
/// line sets them.
fn config_text(args: &Args, name: &str, cores: usize, state_file: &Path) -> String {
    format!(
        "name: {name}\ncpu: {cores}\nmem: 4096\nidle_timeout: 10m\nprewarm:\n  \
         - image: {IMAGE}\n    cpu: {PREWARM_CPU}\n    mem: {PREWARM_MEM}\n\
         background_eviction: {}\n{}{}image_gc:\n  state_file: {}\n",
        args.background_eviction,
        args.sandbox_pool
            .map(|n| format!("sandbox_pool: {n}\n"))
            .unwrap_or_default(),
        args.spare_containers
            .map(|n| format!("spare_containers: {n}\n"))
            .unwrap_or_default(),
        state_file.display(),
    )
}

/// How the executor stopped.
pub struct Stop {
    pub exit: ExitStatus,
    pub stop_ms: f64,
    /// Containers left labelled with the executor's name, and baseline containers.
    pub left_executor: usize,
    pub left_bench: usize,
    /// Image tags that could not be removed.
    pub left_tags: usize,
}

impl Stop {
    /// Whether the executor exited 0 with none of its containers left.
    pub fn clean(&self) -> bool {
        self.exit.success() && self.left_executor == 0
    }

    pub fn print(&self) {
        println!(
            "stop: executor exited {} after {:.0} ms; labelled containers left {}, \
             baseline containers left {}, tags left {}",
            self.exit, self.stop_ms, self.left_executor, self.left_bench, self.left_tags
        );
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "exit_ok": self.exit.success(),
            "stop_ms": self.stop_ms,
            "labelled_containers_left": self.left_executor,
            "baseline_containers_left": self.left_bench,
            "tags_left": self.left_tags,
        })
    }
}

/// The JSON's default place: `<target>/release/bench` → `<target>/bench-results.json`.
pub fn default_json_path(exe: &Path) -> PathBuf {
    exe.parent()
        .and_then(|p| p.parent())
        .map(|t| t.join("bench-results.json"))
        .unwrap_or_else(|| PathBuf::from("target/bench-results.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_config_names_the_prewarmed_key_and_the_pools_set() {
        let args = Args::try_parse_from(["bench", "--sandbox-pool", "0"]).unwrap();
        assert_eq!(
            config_text(&args, "bench-1", 2, Path::new("/t/images.json")),
            "name: bench-1\ncpu: 2\nmem: 4096\nidle_timeout: 10m\nprewarm:\n  \
             - image: meca-echo:latest\n    cpu: 0.25\n    mem: 48\n\
             background_eviction: true\nsandbox_pool: 0\nimage_gc:\n  state_file: /t/images.json\n"
        );
        assert_eq!(
            default_json_path(Path::new("/w/target/release/bench")),
            PathBuf::from("/w/target/bench-results.json")
        );
    }
}
