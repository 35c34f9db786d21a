//! The shared harness of the tests that run the real executor on the in-memory engine and
//! tokio's paused clock (`tests/policy.rs`, `tests/cold_path_policy.rs`,
//! `tests/simulator.rs`): the engine with its images, the config and the fixed host it runs
//! on, requests, `/metrics` read through the library's own reader, the budget invariant,
//! and a deterministic description of the engine's containers (their labels are a
//! `HashMap`, whose `Debug` order changes from one map to the next).
//!
//! Nothing here talks to Docker; nothing in `mod.rs` (the Docker harness) is needed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

use mecanywhere_executor::config::Config;
use mecanywhere_executor::engine::memory::{ImageScript, MemContainer, MemoryEngine, StartScript};
use mecanywhere_executor::engine::{LABEL_ROLE, LABEL_TASK_KEY, ROLE_SPARE};
use mecanywhere_executor::executor::{ExecError, Executor, GpuLoader, TaskRequest};
use mecanywhere_executor::gpu::GpuError;
use mecanywhere_executor::host::{Host, HostCapacity};
use mecanywhere_executor::metrics_text;
use mecanywhere_executor::resources::Demand;
use mecanywhere_executor::task::{Runtime, TaskKey};

/// The host of the scripted scenarios: 16 cores, 64 GiB.
pub const HOST: HostCapacity = HostCapacity {
    cores: 16,
    mem_mb: 64 * 1024,
};

/// A plain container key (no micro-VM, GPUs or SGX).
pub fn key(image: &str, milli_cpu: u64, mem_mb: u64) -> TaskKey {
    TaskKey {
        image: image.to_string(),
        runtime: Runtime::Container,
        demand: Demand { milli_cpu, mem_mb },
        gpu_count: 0,
        use_sgx: false,
    }
}

/// A request of `key` with `input` (the in-memory task's behaviour: `ok`, `slow:<ms>`,
/// `crash`, `oom`, `hang`).
pub fn request(key: &TaskKey, input: &str) -> TaskRequest {
    TaskRequest {
        key: key.clone(),
        input: Bytes::from(input.to_string()),
    }
}

/// An image present on the host whose task is ready `ms` after it starts.
pub fn ready_after(ms: u64) -> ImageScript {
    ImageScript {
        start: StartScript::Ready(Duration::from_millis(ms)),
        ..ImageScript::default()
    }
}

/// An in-memory engine that knows `images`.
pub fn engine<S: AsRef<str>>(images: &[(S, ImageScript)]) -> MemoryEngine {
    let engine = MemoryEngine::new();
    for (image, script) in images {
        engine.add_image(image.as_ref(), script.clone());
    }
    engine
}

/// The GPU loader of an executor on the in-memory engine: there are none.
pub fn no_gpus() -> GpuLoader {
    Box::new(|| Err(GpuError("no GPUs on the in-memory engine".into())))
}

/// Starts the real executor with `config` on `engine`, on a fixed host of `host` (no
/// readings of the machine the test runs on). Image GC is off unless the test gives it a
/// state file of its own (its default file is the host's).
pub async fn start_on(
    engine: &MemoryEngine,
    host: HostCapacity,
    mut config: Config,
) -> Result<Arc<Executor>, ExecError> {
    if config.image_gc.state_file.is_none() {
        config.image_gc = mecanywhere_executor::config::ImageGc::off();
    }
    Executor::start_on(
        Host::fixed(host),
        config,
        Arc::new(engine.clone()),
        no_gpus(),
    )
    .await
}

/// An engine with `images` and the executor on it, on [`HOST`].
pub async fn start<S: AsRef<str>>(
    config: Config,
    images: &[(S, ImageScript)],
) -> (Arc<Executor>, MemoryEngine) {
    let engine = engine(images);
    let executor = start_on(&engine, HOST, config)
        .await
        .expect("the executor starts on the in-memory engine");
    (executor, engine)
}

/// Runs `future` on a fresh single-threaded runtime whose clock is paused (virtual time:
/// a scenario of minutes takes milliseconds, the same way each time).
pub fn run_paused<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// `executor.execute(request)` as a task of its own.
pub fn spawn_execute(
    executor: &Arc<Executor>,
    request: TaskRequest,
) -> JoinHandle<Result<Bytes, ExecError>> {
    let executor = Arc::clone(executor);
    tokio::spawn(async move { executor.execute(request).await })
}

/// The value of one series of `/metrics` (name and labels exactly as exposed), 0 when
/// absent.
pub fn metric(executor: &Executor, series: &str) -> f64 {
    metrics_text::value(&executor.metrics_text(), series)
}

/// The engine's task containers (not sandbox holders).
pub fn tasks(engine: &MemoryEngine) -> Vec<MemContainer> {
    engine
        .containers()
        .into_iter()
        .filter(|c| !c.holder)
        .collect()
}

/// Whether `container` is a spare (started ahead for a future key of its image).
pub fn is_spare(container: &MemContainer) -> bool {
    container.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_SPARE)
}

/// One line about `container`, the same for the same container in every run: id, what it
/// is (task key, spare, holder), its limits, state, calls, and whether it became ready.
pub fn describe(container: &MemContainer) -> String {
    let what = if container.holder {
        "holder".to_string()
    } else if is_spare(container) {
        format!("spare of {}", container.image)
    } else {
        container
            .labels
            .get(LABEL_TASK_KEY)
            .cloned()
            .unwrap_or_else(|| container.image.clone())
    };
    format!(
        "{} [{what}] {}m {}MB {:?} calls={} ready={} sandbox={}",
        container.id,
        container.milli_cpu,
        container.mem_mb,
        container.state,
        container.calls,
        container.became_ready,
        container.sandbox.as_deref().unwrap_or("-")
    )
}

/// [`describe`] of each container, joined.
pub fn describe_all(containers: &[MemContainer]) -> String {
    let all: Vec<String> = containers.iter().map(describe).collect();
    format!("[{}]", all.join("; "))
}

/// The budget invariant: the live task containers (neither killed nor exited) hold no more
/// than is reserved, and no more is reserved than the budget has.
pub fn check_budget(executor: &Executor, engine: &MemoryEngine) -> Result<(), String> {
    let budget = executor.budget();
    let (live_cpu, live_mem) = engine.live_demand();
    if live_cpu > budget.used.milli_cpu || live_mem > budget.used.mem_mb {
        return Err(format!(
            "containers hold {live_cpu} milli-cores and {live_mem} MB, but only {:?} is reserved: {}",
            budget.used,
            describe_all(&engine.containers())
        ));
    }
    if budget.used.milli_cpu > budget.total.milli_cpu || budget.used.mem_mb > budget.total.mem_mb {
        return Err(format!(
            "reserved {:?} exceeds the budget {:?}",
            budget.used, budget.total
        ));
    }
    Ok(())
}
