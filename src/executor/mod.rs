//! The executor: admission, warm-pool lookup, cold starts, the task call, and the control
//! operations (pause, unpause, update-config, stats, stop).
//!
//! Owns the policy that ties the pool, the budget and the engine together. It holds no lock
//! across an `.await`: the pool and the budget are synchronous, and each cold start runs as
//! its own task so that no key ever waits for another. HTTP lives in `api`, Docker in
//! `engine`; this module sees neither wire format.

mod broken;
mod error;
mod prewarm;
mod queue;
mod reaper;
mod start;
mod watcher;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ExecError;

use crate::config::Config;
use crate::engine::{Engine, EngineError, LABEL_EXECUTOR};
use crate::gpu::{GpuError, GpuInventory, GpuMonitor};
use crate::host::{Host, HostCapacity};
use crate::metrics::Metrics;
use crate::pool::{Lease, Lookup, Pool, StartOutcome};
use crate::resources::{cores_to_milli, Budget, Demand};
use crate::task::{Call, Runtime, TaskKey};
use crate::task_client::CallError;

/// How long pause lets in-flight requests finish before removing their container.
const PAUSE_DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// The same at shutdown: short, as `docker stop` kills the executor after 10 s.
const SHUTDOWN_DRAIN_LIMIT: Duration = Duration::from_secs(5);

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
    /// Task containers starting, warm, or being removed.
    pub containers: usize,
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

/// A pull in progress, awaited by every start that needs its image.
type SharedPull = Shared<BoxFuture<'static, Result<(), EngineError>>>;

/// Opens the host's GPU inventory (NVML in production); called when `has_gpu` turns on.
pub type GpuLoader = Box<dyn Fn() -> Result<Arc<dyn GpuInventory>, GpuError> + Send + Sync>;

pub struct Executor {
    engine: Arc<dyn Engine>,
    gpu_loader: GpuLoader,
    /// The GPUs in use while `has_gpu` is on and GPUs were found.
    gpus: RwLock<Option<Arc<GpuMonitor>>>,
    pool: Arc<Pool>,
    budget: Arc<Budget>,
    host: Host,
    config: RwLock<Arc<Config>>,
    /// OCI runtimes the engine reported at start or at the last config update.
    runtimes: RwLock<Vec<String>>,
    paused: AtomicBool,
    closing: CancellationToken,
    /// Cold starts and removals in progress; shutdown waits for them.
    work: TaskTracker,
    /// Container starts in progress (requests' and prewarm's); pause waits for them.
    starts: TaskTracker,
    /// Cancelled (and replaced) by pause: starts in progress give up and remove what they
    /// created.
    start_cancel: RwLock<CancellationToken>,
    instance: String,
    /// Pulls in progress, by image: starts that need the same image share one.
    pulls: Mutex<HashMap<String, SharedPull>>,
    /// Pull slots (`max_concurrent_pulls`): a pull waits for one within its timeout.
    pull_slots: Arc<tokio::sync::Semaphore>,
    /// The internal task network this executor owns (removed at shutdown).
    created_network: Option<String>,
    /// Containers out of the pool whose removal is in progress.
    retiring: AtomicUsize,
    /// Containers the engine failed to remove, still reserved, removal retried.
    removal_failed: Arc<AtomicUsize>,
    metrics: Metrics,
    /// Starts now waiting for budget room; prewarming yields to them.
    waiting_for_room: AtomicUsize,
    /// The order in which waiting starts get room.
    room_queue: queue::RoomQueue,
    /// Wakes the prewarm keeper (a start stopped waiting, unpause).
    prewarm_wake: Notify,
    /// When each prewarm key last failed to start for a reason other than room.
    prewarm_failures: Mutex<HashMap<TaskKey, Instant>>,
}

impl Executor {
    /// Prepares the internal task network if configured, removes what an earlier instance
    /// with the same name left, learns the engine's runtimes and GPUs, and starts the
    /// background tasks (idle reaper, container watcher, prewarm keeper).
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
        mut config: Config,
        engine: Arc<dyn Engine>,
        gpu_loader: GpuLoader,
    ) -> Result<Arc<Executor>, ExecError> {
        let mut created_network = None;
        if config.internal_network {
            let name = config
                .network
                .clone()
                .unwrap_or_else(|| format!("mecanywhere-tasks-{}", config.name));
            let labels = HashMap::from([(LABEL_EXECUTOR.to_string(), config.name.clone())]);
            if engine.ensure_internal_network(&name, &labels).await? {
                tracing::info!(network = %name, "internal task network ready (no route out)");
                created_network = Some(name.clone());
            }
            config.network = Some(name);
        }
        let total = task_budget(&config, host.capacity());
        let orphans = engine.list_labelled(LABEL_EXECUTOR, &config.name).await?;
        for id in &orphans {
            tracing::info!(container = %id, "removing container left by an earlier executor instance");
            engine.remove(id).await?;
        }
        let runtimes = engine.runtimes().await?;
        let pull_slots = config.max_concurrent_pulls as usize;
        let executor = Arc::new(Executor {
            engine,
            gpu_loader,
            gpus: RwLock::new(None),
            pool: Pool::new(),
            budget: Budget::new(total),
            host,
            runtimes: RwLock::new(runtimes),
            paused: AtomicBool::new(false),
            closing: CancellationToken::new(),
            work: TaskTracker::new(),
            starts: TaskTracker::new(),
            start_cancel: RwLock::new(CancellationToken::new()),
            instance: uuid::Uuid::new_v4().to_string(),
            config: RwLock::new(Arc::new(config)),
            metrics: Metrics::new(),
            pulls: Mutex::new(HashMap::new()),
            pull_slots: Arc::new(tokio::sync::Semaphore::new(pull_slots)),
            created_network,
            retiring: AtomicUsize::new(0),
            removal_failed: Arc::new(AtomicUsize::new(0)),
            waiting_for_room: AtomicUsize::new(0),
            room_queue: queue::RoomQueue::default(),
            prewarm_wake: Notify::new(),
            prewarm_failures: Mutex::new(HashMap::new()),
        });
        executor.check_microvm_runtime();
        executor.set_gpus_enabled(executor.config().has_gpu);
        executor.spawn_supervised("idle_reaper", |e| e.reap_idle());
        executor.spawn_supervised("container_watcher", |e| e.watch_containers());
        if !executor.config().prewarm.is_empty() {
            executor.spawn_supervised("prewarm_keeper", |e| e.keep_prewarmed());
        }
        let budget = executor.budget.snapshot().total;
        tracing::info!(
            instance = %executor.instance,
            cpu = budget.cores(),
            mem_mb = budget.mem_mb,
            removed_orphans = orphans.len(),
            "executor ready"
        );
        Ok(executor)
    }

    /// Runs a background task of the executor under [`supervise`](crate::supervise): a panic
    /// is logged, counted in `meca_background_panics_total`, and the task started again.
    fn spawn_supervised<Fut>(self: &Arc<Self>, task: &'static str, run: fn(Arc<Executor>) -> Fut)
    where
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let executor = Arc::clone(self);
        tokio::spawn(async move {
            let counter = executor
                .metrics
                .background_panics
                .get_or_create_owned(&crate::metrics::TaskLabel { task });
            crate::supervise::supervise(
                task,
                || run(Arc::clone(&executor)),
                move || {
                    counter.inc();
                },
            )
            .await;
        });
    }

    /// The current configuration (a shared snapshot: cheap on the request path).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Turns GPU scheduling on (detecting the GPUs) or off.
    fn set_gpus_enabled(&self, on: bool) {
        let monitor = if on {
            match (self.gpu_loader)().and_then(GpuMonitor::start) {
                Ok(monitor) => {
                    tracing::info!(count = monitor.devices().len(), model = %monitor.model(), "GPUs available to tasks");
                    Some(monitor)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "has_gpu is set but GPUs are off");
                    None
                }
            }
        } else {
            None
        };
        let uuids = monitor
            .as_ref()
            .map(|m| m.devices().iter().map(|g| g.uuid.clone()).collect())
            .unwrap_or_default();
        self.budget.set_gpus(uuids);
        *self.gpus.write().unwrap_or_else(|e| e.into_inner()) = monitor;
    }

    pub(crate) fn gpu_monitor(&self) -> Option<Arc<GpuMonitor>> {
        self.gpus.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// The Docker runtime serving `runtime: "microVM"`, or why there is none.
    fn microvm_runtime(&self, config: &Config) -> Result<String, ExecError> {
        let Some(name) = config.microvm_runtime.as_deref() else {
            return Err(ExecError::RuntimeUnavailable(
                "runtime microVM is not available on this host: no microVM_runtime is configured \
                 (the task is not run under a weaker runtime instead)"
                    .into(),
            ));
        };
        let known = self.runtimes.read().unwrap_or_else(|e| e.into_inner());
        if !known.iter().any(|r| r == name) {
            return Err(ExecError::RuntimeUnavailable(format!(
                "runtime microVM is not available on this host: the configured runtime {name:?} \
                 is not registered with Docker (registered: {})",
                known.join(", ")
            )));
        }
        Ok(name.to_string())
    }

    fn check_microvm_runtime(&self) {
        let config = self.config();
        match self.microvm_runtime(&config) {
            Ok(name) => tracing::info!(runtime = %name, "microVM requests run under this runtime"),
            Err(e) if config.microvm_runtime.is_some() => tracing::warn!("{e}"),
            Err(_) => {}
        }
    }

    /// Refuses work while stopping or paused.
    fn check_open(&self) -> Result<(), ExecError> {
        if self.closing.is_cancelled() {
            return Err(ExecError::ShuttingDown);
        }
        if self.is_paused() {
            return Err(ExecError::Paused);
        }
        Ok(())
    }

    /// Checks what depends on this host and its configuration; returns the config to use.
    fn admit(&self, key: &TaskKey) -> Result<Arc<Config>, ExecError> {
        self.check_open()?;
        let config = self.config();
        let budget = self.budget.snapshot();
        let total = budget.total;
        if key.demand.milli_cpu > total.milli_cpu || key.demand.mem_mb > total.mem_mb {
            return Err(ExecError::ExceedsMaximum(format!(
                "the task asks for {} cores and {} MB; this executor's task budget is {} cores and {} MB",
                key.demand.cores(),
                key.demand.mem_mb,
                total.cores(),
                total.mem_mb
            )));
        }
        if key.gpu_count as usize > budget.gpus_total {
            let why = if budget.gpus_total > 0 {
                ""
            } else if config.has_gpu {
                " (has_gpu is set, but no usable GPU was found: see the executor's log)"
            } else {
                " (has_gpu is off)"
            };
            return Err(ExecError::NoGpu(format!(
                "the task asks for {} GPUs; this host offers {} GPUs to tasks{why}",
                key.gpu_count, budget.gpus_total
            )));
        }
        if key.runtime == Runtime::MicroVm {
            self.microvm_runtime(&config)?;
        }
        if key.use_sgx {
            if !config.sgx.enable {
                return Err(ExecError::SgxUnavailable(
                    "SGX is not enabled on this host (sgx.enable is false)".into(),
                ));
            }
            let device = config.sgx.sgx_device.as_deref().unwrap_or_default();
            if !Path::new(device).exists() {
                return Err(ExecError::SgxUnavailable(format!(
                    "SGX device {device} does not exist on this host"
                )));
            }
            let aesmd = config.sgx.aesmd_path.as_deref().unwrap_or_default();
            if !Path::new(aesmd).is_dir() {
                return Err(ExecError::SgxUnavailable(format!(
                    "SGX AESM directory {aesmd} does not exist on this host"
                )));
            }
        }
        Ok(config)
    }

    /// Runs one request: admission, a warm container (or a cold start), the task call.
    /// On success returns the task's answer body, valid UTF-8.
    pub async fn execute(self: &Arc<Self>, request: TaskRequest) -> Result<Bytes, ExecError> {
        let started = Instant::now();
        let (result, path) = self.run(request).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.outcome(),
        };
        match path {
            Some(path) => self.metrics.request(outcome, path, started.elapsed()),
            None => {
                self.metrics
                    .requests
                    .get_or_create(&crate::metrics::OutcomeLabel { outcome })
                    .inc();
            }
        }
        result
    }

    /// [`execute`](Self::execute) without the bookkeeping; also says whether the request
    /// found a ready container (`warm`), waited for a start (`cold`), or got neither.
    async fn run(
        self: &Arc<Self>,
        request: TaskRequest,
    ) -> (Result<Bytes, ExecError>, Option<&'static str>) {
        let config = match self.admit(&request.key) {
            Ok(config) => config,
            Err(e) => return (Err(e), None),
        };
        let (lease, path) = match self.lease(&request.key).await {
            Ok((lease, cold)) => (lease, if cold { "cold" } else { "warm" }),
            Err(e) => return (Err(e), Some("cold")),
        };
        let call = Call::for_input(request.key.use_sgx, &request.input);
        let result = match lease
            .container()
            .client
            .call(call, request.input, config.request_timeout)
            .await
        {
            // `msg` is a JSON string: the answer must be text (a lossy conversion would
            // silently change the task's bytes).
            Ok(answer) if answer.status.is_success() => match std::str::from_utf8(&answer.body) {
                Ok(_) => Ok(answer.body),
                Err(_) => Err(ExecError::BadAnswer(format!(
                    "task answered {} bytes that are not valid UTF-8; the answer must be text",
                    answer.body.len()
                ))),
            },
            Ok(answer) => Err(ExecError::TaskStatus {
                status: answer.status.as_u16(),
                body: String::from_utf8_lossy(&answer.body[..answer.body.len().min(4096)])
                    .into_owned(),
            }),
            Err(e @ CallError::TooLarge(_)) => Err(ExecError::BadAnswer(e.to_string())),
            Err(e) => Err(ExecError::TaskBroken(self.discard_broken(lease, e).await)),
        };
        (result, Some(path))
    }

    /// A lease on a ready container for `key`, starting one if needed (single flight).
    /// The flag says whether the request had to wait for a start. A request that starts a
    /// container gets the first lease on it.
    async fn lease(self: &Arc<Self>, key: &TaskKey) -> Result<(Lease, bool), ExecError> {
        let mut cold = false;
        loop {
            // Paused or stopping since admission (or while waiting): start nothing new.
            if cold {
                self.check_open()?;
            }
            let mut outcome = match self.pool.lease_or_claim(key) {
                Lookup::Leased(lease) => return Ok((lease, cold)),
                Lookup::Wait(outcome) => outcome,
                Lookup::Claimed(ticket) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    self.spawn_start(Arc::clone(self).cold_start(ticket, tx));
                    return match rx.await {
                        Ok(result) => result.map(|lease| (lease, true)),
                        Err(_) => Err(ExecError::StartCancelled),
                    };
                }
            };
            cold = true;
            let result = outcome
                .wait_for(|o| !matches!(o, StartOutcome::Pending))
                .await
                .map(|o| o.clone());
            match result {
                Ok(StartOutcome::Failed(e)) => return Err(ExecError::StartFailed(e)),
                Ok(StartOutcome::Refused) => return Err(ExecError::Paused),
                Ok(StartOutcome::Cancelled) => return Err(ExecError::StartCancelled),
                // Ready: lease it on the next turn. (Abandoned, or a closed channel: look
                // again.)
                _ => continue,
            }
        }
    }

    /// The `/metrics` text, with the container and budget gauges read now.
    pub fn metrics_text(&self) -> String {
        use crate::metrics::{KindLabel, StateLabel};
        let counts = self.pool.counts();
        let m = &self.metrics;
        for (state, n) in [
            ("starting", counts.starting),
            ("idle", counts.ready - counts.busy),
            ("busy", counts.busy),
            ("removing", self.retiring.load(Ordering::Acquire)),
            (
                "removal_failed",
                self.removal_failed.load(Ordering::Acquire),
            ),
        ] {
            m.containers
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        let budget = self.budget.snapshot();
        for (kind, cpu, mem, gpus) in [
            (
                "total",
                budget.total.cores(),
                budget.total.mem_mb,
                budget.gpus_total,
            ),
            (
                "reserved",
                budget.used.cores(),
                budget.used.mem_mb,
                budget.gpus_used,
            ),
        ] {
            let kind = KindLabel { kind };
            m.budget_cpu_cores.get_or_create(&kind).set(cpu);
            m.budget_memory_mb.get_or_create(&kind).set(mem as i64);
            m.budget_gpus.get_or_create(&kind).set(gpus as i64);
        }
        m.encode()
    }

    /// The budget now: total and reserved.
    pub fn budget(&self) -> crate::resources::BudgetSnapshot {
        self.budget.snapshot()
    }

    /// Counters the API layer records itself (requests refused before the executor).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs a container start (a request's or prewarm's) as a task pause waits for.
    pub(super) fn spawn_start(
        &self,
        start: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.starts.spawn(start);
    }

    /// The token starts in progress watch: pause cancels it.
    pub(super) fn start_cancel(&self) -> CancellationToken {
        self.start_cancel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `/pause`: refuse new tasks, stop the starts in progress, and remove every container.
    /// When it returns, nothing is reserved but containers the engine failed to remove.
    pub async fn pause(self: &Arc<Self>) {
        self.paused.store(true, Ordering::SeqCst);
        // A start that read the old token is cancelled; one that reads the new one sees
        // `paused` and does not begin.
        let old =
            std::mem::take(&mut *self.start_cancel.write().unwrap_or_else(|e| e.into_inner()));
        old.cancel();
        let containers = self.pool.take_all();
        tracing::info!(removing = containers.len(), "paused");
        // A tracked task of its own: the removals finish even if the caller goes away.
        let executor = Arc::clone(self);
        let removal = self.work.spawn(async move {
            executor.retire_all(containers, PAUSE_DRAIN_LIMIT).await;
            executor.starts.close();
            executor.starts.wait().await;
            executor.starts.reopen();
        });
        let _ = removal.await;
    }

    /// `/unpause`: accept tasks again.
    pub fn unpause(&self) {
        self.paused.store(false, Ordering::Release);
        self.prewarm_wake.notify_one();
        tracing::info!("unpaused");
    }

    /// `/update-config`: only while paused.
    pub async fn update_config(&self, update: ConfigUpdate) -> Result<(), ExecError> {
        if !self.is_paused() {
            return Err(ExecError::Running);
        }
        // What containers the engine failed to remove still hold must fit the new budget.
        let held = self.budget.snapshot().used;
        let wanted = task_budget(
            &Config {
                cpu: update.cpu.unwrap_or(self.config().cpu),
                mem_mb: update.mem_mb.unwrap_or(self.config().mem_mb),
                ..Config::clone(&self.config())
            },
            self.host.capacity(),
        );
        if held.milli_cpu > wanted.milli_cpu || held.mem_mb > wanted.mem_mb {
            return Err(ExecError::StillHeld(format!(
                "{} cores and {} MB are still held by task containers the engine has not removed yet \
                 (see /metrics, meca_containers{{state=\"removal_failed\"}}); the new budget of {} cores \
                 and {} MB cannot hold them: retry when they are gone",
                held.cores(),
                held.mem_mb,
                wanted.cores(),
                wanted.mem_mb
            )));
        }
        // Runtimes may have been registered with Docker since: check against what it has now.
        let runtimes = self.engine.runtimes().await?;
        *self.runtimes.write().unwrap_or_else(|e| e.into_inner()) = runtimes;
        let new_total = {
            let mut shared = self.config.write().unwrap_or_else(|e| e.into_inner());
            let mut config = Config::clone(&shared);
            if let Some(t) = update.idle_timeout {
                config.idle_timeout = t;
            }
            if let Some(cpu) = update.cpu {
                config.cpu = cpu;
            }
            if let Some(mem) = update.mem_mb {
                config.mem_mb = mem;
            }
            if let Some(gpu) = update.has_gpu {
                config.has_gpu = gpu;
            }
            if let Some(runtime) = update.microvm_runtime {
                config.microvm_runtime = runtime;
            }
            let total = task_budget(&config, self.host.capacity());
            *shared = Arc::new(config);
            total
        };
        self.budget.set_total(new_total);
        if let Some(on) = update.has_gpu {
            self.set_gpus_enabled(on);
        }
        self.check_microvm_runtime();
        self.pool.changed.notify_one();
        tracing::info!(
            cpu = new_total.cores(),
            mem_mb = new_total.mem_mb,
            "config updated"
        );
        Ok(())
    }

    /// `/stats`; `None` while paused.
    pub fn stats(&self) -> Option<Stats> {
        if self.is_paused() {
            return None;
        }
        let usage = self.host.usage();
        let budget = self.budget.snapshot();
        let percent = |used: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                used as f64 * 100.0 / total as f64
            }
        };
        let counts = self.pool.counts();
        Some(Stats {
            host: self.host.capacity(),
            host_cpu_percent: usage.cpu_percent,
            host_mem_percent: usage.mem_percent,
            task_cpu: budget.total.cores(),
            task_mem_mb: budget.total.mem_mb,
            task_used_cpu_percent: percent(budget.used.milli_cpu, budget.total.milli_cpu),
            task_used_mem_percent: percent(budget.used.mem_mb, budget.total.mem_mb),
            gpu_model: self.gpu_monitor().map(|m| m.model()).unwrap_or_default(),
            task_gpu: budget.gpus_total as u32,
            task_used_gpu: budget.gpus_used as u32,
            containers: counts.ready
                + counts.starting
                + self.retiring.load(Ordering::Acquire)
                + self.removal_failed.load(Ordering::Acquire),
            runtimes: if self.microvm_runtime(&self.config()).is_ok() {
                vec!["container", "microVM"]
            } else {
                vec!["container"]
            },
        })
    }

    /// Stop: refuse new work, cancel cold starts, remove every container this instance
    /// created (found by label, so nothing escapes), and return.
    pub async fn shutdown(&self) {
        self.closing.cancel();
        let containers = self.pool.take_all();
        self.retire_all(containers, SHUTDOWN_DRAIN_LIMIT).await;
        self.work.close();
        if tokio::time::timeout(Duration::from_secs(30), self.work.wait())
            .await
            .is_err()
        {
            tracing::warn!("cold starts did not end within 30s; removing their containers anyway");
        }
        match self
            .engine
            .list_labelled(crate::engine::LABEL_INSTANCE, &self.instance)
            .await
        {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = self.engine.remove(&id).await {
                        tracing::error!(container = %id, error = %e, "could not remove task container");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not list task containers to remove"),
        }
        if let Some(network) = &self.created_network {
            if let Err(e) = self.engine.remove_network(network).await {
                tracing::error!(%network, error = %e, "could not remove the task network");
            }
        }
        tracing::info!("all task containers removed");
    }
}
