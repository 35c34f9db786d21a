//! The executor: admission, warm-pool lookup, cold starts, the task call, and the control
//! operations (pause, unpause, update-config, stats, stop).
//!
//! Ties the pool, the budget and the engine together through components that each own
//! their state and do one job: `Context` (shared handles), `Admission`, `Gpus`, `Pulls`,
//! `Room` (reserving, eviction, the idle reaper), `Starter` (cold starts and their pause),
//! `Removals` (taking containers down, broken containers), `Spares`, `Sandboxes`,
//! `Refills`, `Watcher`, `Prewarmer`, `Adaptive` (the learned keep-alive and pre-warm
//! times), `ImageCollector` with `ImageUse` (image GC and its record of use), and
//! `CapacityFollower` (the budget's ceiling on a cluster, whose machines change). This
//! file holds the public types and the wiring: [`Executor`] composes the
//! components and starts the background tasks, each holding only the component it runs.
//! What the executor does is one file per job: `request` (the request path, top to
//! bottom), `control` (pause, unpause, update-config, stop), `report` (/stats, /metrics).
//! Those files build on this one; nothing here uses them.
//! Nothing holds a lock across an `.await`: the pool and the budget are synchronous, and
//! each cold start runs as its own task so that no key ever waits for another. HTTP lives in
//! `api`, Docker in `engine`; this module sees neither wire format.

mod adaptive;
mod admission;
mod background;
mod capacity;
mod container;
mod context;
mod control;
mod error;
mod gpus;
mod image_gc;
mod image_use;
mod outcome;
mod pool;
mod prewarm;
mod pulls;
mod queue;
mod refills;
mod removals;
mod report;
mod request;
mod room;
mod sandboxes;
mod spares;
mod start;
mod watcher;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use error::ExecError;
pub use gpus::GpuLoader;

use crate::config::{Config, KeepAlivePolicy};
use crate::engine::{Engine, EngineError, LABEL_EXECUTOR};
use crate::host::{Host, HostCapacity};
use crate::metrics::Metrics;
use crate::resources::{cores_to_milli, Budget, Demand};
use crate::task::TaskKey;
use adaptive::Adaptive;
use admission::Admission;
use background::spawn_supervised;
use capacity::CapacityFollower;
use context::Context;
use gpus::Gpus;
use image_gc::ImageCollector;
use image_use::ImageUse;
use pool::Pool;
use prewarm::Prewarmer;
use pulls::Pulls;
use removals::Removals;
use room::Room;
use sandboxes::Sandboxes;
use spares::Spares;
use start::Starter;
use watcher::Watcher;

/// A validated execute request.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    pub key: TaskKey,
    pub input: Bytes,
}

/// The fields `/update-config` may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigUpdate {
    pub idle_timeout: Option<Duration>,
    pub cpu: Option<f64>,
    pub mem_mb: Option<u64>,
    pub has_gpu: Option<bool>,
    pub microvm_runtime: Option<Option<String>>,
    /// `keep_alive` (with `keep_alive_price`): a new policy starts learning afresh.
    pub keep_alive: Option<KeepAlivePolicy>,
}

/// What `/stats` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub host: HostCapacity,
    pub host_cpu_percent: f64,
    pub host_mem_percent: f64,
    pub task_cpu: f64,
    pub task_mem_mb: u64,
    pub task_used_cpu_percent: f64,
    pub task_used_mem_percent: f64,
    pub gpu_model: String,
    pub task_gpu: u32,
    pub task_used_gpu: u32,
    /// Task containers starting, warm, or being removed (not spares, not holders).
    pub containers: usize,
    /// Spare containers ready (the executor's own stock, evicted first for any task).
    pub spare_containers: usize,
    /// Percent of the CPU and memory budget held by spares, ready or starting.
    pub spare_used_cpu_percent: f64,
    pub spare_used_mem_percent: f64,
    /// Sandbox holders started ahead, waiting for a task (outside the budget).
    pub free_sandboxes: usize,
    /// The image pulls in progress, by image, with how far each has come.
    pub pulls: Vec<(String, crate::pull_progress::PullSummary)>,
    /// The `runtime` values requests may use on this host.
    pub runtimes: Vec<&'static str>,
}

/// The task budget the config allows on this host: CPU capped at the host's cores,
/// memory at 80% of its memory.
pub fn task_budget(config: &Config, host: HostCapacity) -> Demand {
    Demand {
        milli_cpu: cores_to_milli(config.cpu).min(u64::from(host.cores) * 1000),
        mem_mb: config.mem_mb.min(host.mem_mb * 8 / 10),
    }
}

pub struct Executor {
    /// The handles every component shares (engine, config, metrics, stop, tracked work).
    ctx: Context,
    host: Arc<Host>,
    pool: Arc<Pool>,
    budget: Arc<Budget>,
    gpus: Arc<Gpus>,
    admission: Arc<Admission>,
    pulls: Arc<Pulls>,
    room: Arc<Room>,
    starter: Arc<Starter>,
    removals: Arc<Removals>,
    sandboxes: Arc<Sandboxes>,
    spares: Arc<Spares>,
    /// The policy that learns each key's idle times (`keep_alive: adaptive`, `priced`).
    adaptive: Arc<Adaptive>,
    /// Image GC (`image_gc`).
    collector: Arc<ImageCollector>,
}

impl Executor {
    /// Removes what an earlier instance with the same name left, proves that the engine can
    /// isolate tasks as `task_network` says (else fails: nothing runs weaker than
    /// configured), learns the engine's runtimes and GPUs, and starts the background tasks
    /// (idle reaper, container watcher, sandbox and prewarm keepers).
    pub async fn start(
        config: Config,
        engine: Arc<dyn Engine>,
        gpu_loader: GpuLoader,
    ) -> Result<Arc<Executor>, ExecError> {
        Executor::start_on(Host::new(), config, engine, gpu_loader).await
    }

    /// [`start`](Self::start) on a given host (a fixed one for simulations).
    pub async fn start_on(
        host: Host,
        config: Config,
        engine: Arc<dyn Engine>,
        gpu_loader: GpuLoader,
    ) -> Result<Arc<Executor>, ExecError> {
        for retired in &config.retired {
            tracing::warn!("config: {retired}");
        }
        // On a cluster, the budget is capped by the cluster's capacity, not this host's.
        let cluster = engine.capacity().await?;
        if let Some(capacity) = cluster {
            tracing::info!(
                cores = capacity.cores,
                mem_mb = capacity.mem_mb,
                "the engine's machines in all"
            );
            host.set_capacity(capacity);
        }
        let host = Arc::new(host);
        let total = task_budget(&config, host.capacity());
        let orphans = engine.list_labelled(LABEL_EXECUTOR, &config.name).await?;
        for id in &orphans {
            tracing::info!(container = %id, "removing container left by an earlier executor instance");
            engine.remove(id).await?;
        }
        let runtimes = engine.runtimes().await?;
        let has_gpu = config.has_gpu;
        let adaptive = Arc::new(Adaptive::new(&config.keep_alive)?);
        // `/update-config` may put a learned keep-alive in force: the keeper always runs.
        let pull_slots = config.max_concurrent_pulls as usize;
        let uses = Arc::new(if config.image_gc.enabled {
            let file = config
                .image_gc
                .state_file
                .clone()
                .unwrap_or_else(crate::config::default_state_file);
            ImageUse::load(file).map_err(|e| ExecError::Engine(EngineError::Api(e.to_string())))?
        } else {
            ImageUse::in_memory()
        });
        let ctx = Context::new(engine, config);
        let sandboxes = Arc::new(Sandboxes::prepare(ctx.clone()).await?);
        ctx.metrics.task_network(ctx.config().task_network);
        let pool = Pool::new();
        let budget = Budget::new(total);
        let gpus = Arc::new(Gpus::new(gpu_loader));
        let admission = Arc::new(Admission::new(ctx.clone(), Arc::clone(&budget), runtimes));
        let removals = Arc::new(Removals::new(ctx.clone(), Arc::clone(&pool)));
        let spares = Arc::new(Spares::new(ctx.clone(), Arc::clone(&removals)));
        let collector = Arc::new(
            ImageCollector::new(
                ctx.clone(),
                Arc::clone(&uses),
                Arc::clone(&pool),
                Arc::clone(&spares),
                sandboxes.holder_image().to_string(),
            )
            .await?,
        );
        let pulls = Arc::new(Pulls::new(
            ctx.clone(),
            pull_slots,
            Arc::clone(&uses),
            Arc::clone(&collector),
        ));
        let room = Arc::new(Room::new(
            ctx.clone(),
            Arc::clone(&pool),
            Arc::clone(&budget),
            Arc::clone(&gpus),
            Arc::clone(&removals),
            Arc::clone(&spares),
            adaptive.clone(),
        ));
        let starter = Arc::new(Starter::new(
            ctx.clone(),
            Arc::clone(&pool),
            Arc::clone(&pulls),
            Arc::clone(&room),
            Arc::clone(&removals),
            Arc::clone(&sandboxes),
            Arc::clone(&spares),
        ));
        admission.check_microvm_runtime();
        gpus.set_enabled(has_gpu, &budget);
        spawn_supervised(&ctx, "idle_reaper", Arc::clone(&room), Room::reap_idle);
        spawn_supervised(
            &ctx,
            "sandbox_keeper",
            Arc::clone(&sandboxes),
            Sandboxes::keep_filled,
        );
        spawn_supervised(&ctx, "spare_reaper", Arc::clone(&spares), Spares::reap);
        spawn_supervised(
            &ctx,
            "image_gc",
            Arc::clone(&collector),
            ImageCollector::run,
        );
        let watcher = Watcher::new(
            ctx.clone(),
            Arc::clone(&pool),
            Arc::clone(&removals),
            Arc::clone(&sandboxes),
            Arc::clone(&spares),
        );
        spawn_supervised(
            &ctx,
            "container_watcher",
            Arc::new(watcher),
            Watcher::watch_containers,
        );
        let prewarmer = Prewarmer::new(
            ctx.clone(),
            Arc::clone(&room),
            Arc::clone(&starter),
            Arc::clone(&admission),
            Arc::clone(&pulls),
            Arc::clone(&removals),
            Arc::clone(&adaptive),
        );
        spawn_supervised(
            &ctx,
            "prewarm_keeper",
            Arc::new(prewarmer),
            Prewarmer::keep_prewarmed,
        );
        if cluster.is_some() {
            let follower = CapacityFollower::new(
                ctx.clone(),
                Arc::clone(&host),
                Arc::clone(&budget),
                Arc::clone(&pool),
                task_budget,
            );
            spawn_supervised(
                &ctx,
                "capacity_follower",
                Arc::new(follower),
                CapacityFollower::follow,
            );
        }
        let budget_total = budget.snapshot().total;
        tracing::info!(
            instance = %ctx.instance,
            cpu = budget_total.cores(),
            mem_mb = budget_total.mem_mb,
            removed_orphans = orphans.len(),
            "executor ready"
        );
        Ok(Arc::new(Executor {
            ctx,
            host,
            pool,
            budget,
            gpus,
            admission,
            pulls,
            room,
            starter,
            removals,
            sandboxes,
            spares,
            adaptive,
            collector,
        }))
    }

    /// The current configuration (a shared snapshot: cheap on the request path).
    pub fn config(&self) -> Arc<Config> {
        self.ctx.config()
    }

    pub fn is_paused(&self) -> bool {
        self.starter.is_paused()
    }

    /// The budget now: total and reserved.
    pub fn budget(&self) -> crate::resources::BudgetSnapshot {
        self.budget.snapshot()
    }

    /// Counters the API layer records itself (requests refused before the executor).
    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }
}
