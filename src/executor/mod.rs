//! The executor: admission, warm-pool lookup, cold starts, the task call, and the control
//! operations (pause, unpause, update-config, stats, stop).
//!
//! Ties the pool, the budget and the engine together through components that each own
//! their state and do one job: `Context` (shared handles), `Admission`, `Gpus`, `Pulls`,
//! `Room` (reserving, eviction, the idle reaper), `Starter` (cold starts and their pause),
//! `Removals` (taking containers down, broken containers), `Watcher`, `Prewarmer`, and, with
//! `keep_alive: adaptive`, `Adaptive` (the learned keep-alive and pre-warm times).
//! [`Executor`] composes them, serves requests and the control operations, and starts the
//! background tasks, each holding only the component it runs.
//! Nothing holds a lock across an `.await`: the pool and the budget are synchronous, and
//! each cold start runs as its own task so that no key ever waits for another. HTTP lives in
//! `api`, Docker in `engine`; this module sees neither wire format.

mod adaptive;
mod admission;
mod context;
mod error;
mod gpus;
mod prewarm;
mod pulls;
mod queue;
mod refills;
mod removals;
mod room;
mod sandboxes;
mod spares;
mod start;
mod watcher;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use tracing::Instrument;

pub use error::ExecError;
pub use gpus::GpuLoader;
pub use sandboxes::SandboxLease;

use crate::config::{Config, KeepAlivePolicy};
use crate::engine::{Engine, LABEL_EXECUTOR};
use crate::host::{Host, HostCapacity};
use crate::metrics::Metrics;
use crate::pool::{Lease, Lookup, Pool, StartOutcome};
use crate::resources::{cores_to_milli, Budget, Demand};
use crate::task::{Call, TaskKey};
use crate::task_client::CallError;
use adaptive::Adaptive;
use admission::Admission;
use context::Context;
use gpus::Gpus;
use prewarm::Prewarmer;
use pulls::Pulls;
use removals::Removals;
use room::Room;
use sandboxes::Sandboxes;
use spares::Spares;
use start::Starter;
use watcher::Watcher;

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
    host: Host,
    pool: Arc<Pool>,
    budget: Arc<Budget>,
    gpus: Arc<Gpus>,
    admission: Arc<Admission>,
    room: Arc<Room>,
    starter: Arc<Starter>,
    removals: Arc<Removals>,
    sandboxes: Arc<Sandboxes>,
    spares: Arc<Spares>,
    /// The policy that learns each key's idle times (`keep_alive: adaptive`, `priced`).
    adaptive: Arc<Adaptive>,
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
        let ctx = Context::new(engine, config);
        let sandboxes = Arc::new(Sandboxes::prepare(ctx.clone()).await?);
        ctx.metrics.task_network(ctx.config().task_network);
        let pool = Pool::new();
        let budget = Budget::new(total);
        let gpus = Arc::new(Gpus::new(gpu_loader));
        let admission = Arc::new(Admission::new(ctx.clone(), Arc::clone(&budget), runtimes));
        let pulls = Arc::new(Pulls::new(ctx.clone(), pull_slots));
        let removals = Arc::new(Removals::new(ctx.clone(), Arc::clone(&pool)));
        let spares = Arc::new(Spares::new(ctx.clone(), Arc::clone(&removals)));
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
            pulls,
            Arc::clone(&removals),
            Arc::clone(&adaptive),
        );
        spawn_supervised(
            &ctx,
            "prewarm_keeper",
            Arc::new(prewarmer),
            Prewarmer::keep_prewarmed,
        );
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
            room,
            starter,
            removals,
            sandboxes,
            spares,
            adaptive,
        }))
    }

    /// The current configuration (a shared snapshot: cheap on the request path).
    pub fn config(&self) -> Arc<Config> {
        self.ctx.config()
    }

    pub fn is_paused(&self) -> bool {
        self.starter.is_paused()
    }

    /// Refuses work while stopping or paused, then checks what depends on this host and its
    /// configuration; returns the config to use.
    fn admit(&self, key: &TaskKey) -> Result<Arc<Config>, ExecError> {
        self.starter.check_open()?;
        self.admission.admit(key)
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
            Some(path) => self.ctx.metrics.request(outcome, path, started.elapsed()),
            None => {
                self.ctx
                    .metrics
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
        // Declared before the lease, so dropped after it: the request's end is recorded
        // once its container is idle again.
        let _visit = self
            .adaptive
            .visit(&request.key, &self.room, config.idle_timeout);
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
            Err(e) => Err(ExecError::TaskBroken(
                self.removals.discard_broken(lease, e).await,
            )),
        };
        (result, Some(path))
    }

    /// A lease on a ready container for `key`, starting one if needed (single flight).
    /// The flag says whether the request had to wait for a start. A request that starts a
    /// container gets the first lease on it.
    ///
    /// A request gets a container within pull, queue and start timeouts of its arrival: when
    /// the start it waited for ended with a container that was lost before this request
    /// could use it, it looks again, but no longer than that.
    async fn lease(self: &Arc<Self>, key: &TaskKey) -> Result<(Lease, bool), ExecError> {
        let config = self.config();
        let patience = config.pull_timeout + config.queue_timeout + config.start_timeout;
        let deadline = Instant::now() + patience;
        let gave_up = || {
            tracing::warn!(key = %key, "no container of the key became available to this request within its time; giving up");
            ExecError::NoContainer(humantime::format_duration(patience).to_string())
        };
        let mut cold = false;
        // A start this request waited for ended, yet no container is there for it now: it
        // looks again, bounded by `deadline`.
        let mut looking_again = false;
        loop {
            // Paused or stopping since admission (or while waiting): start nothing new.
            if cold {
                self.starter.check_open()?;
                looking_again = true;
            }
            let lookup = self.pool.lease_or_claim(key);
            if looking_again && Instant::now() >= deadline {
                match lookup {
                    Lookup::Leased(lease) => return Ok((lease, cold)),
                    // Requests that came meanwhile look again themselves.
                    Lookup::Claimed(ticket) => ticket.abandon(),
                    Lookup::Wait(_) => {}
                }
                return Err(gave_up());
            }
            let mut outcome = match lookup {
                Lookup::Leased(lease) => return Ok((lease, cold)),
                Lookup::Wait(outcome) => outcome,
                Lookup::Claimed(ticket) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let starter = Arc::clone(&self.starter);
                    // The start logs as part of the request that claimed it.
                    self.starter
                        .spawn_start(starter.cold_start(ticket, tx).in_current_span());
                    // A first start is bounded by its own phases' timeouts; one begun after
                    // an earlier container was lost, by what is left of this request's time.
                    let started = if looking_again {
                        tokio::time::timeout_at(deadline, rx)
                            .await
                            .map_err(|_| gave_up())?
                    } else {
                        rx.await
                    };
                    return match started {
                        Ok(result) => result.map(|lease| (lease, true)),
                        Err(_) => Err(ExecError::StartCancelled),
                    };
                }
            };
            let waited = outcome.wait_for(|o| !matches!(o, StartOutcome::Pending));
            let result = if looking_again {
                tokio::time::timeout_at(deadline, waited)
                    .await
                    .map_err(|_| gave_up())?
            } else {
                waited.await
            }
            .map(|o| o.clone());
            cold = true;
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
        let m = &self.ctx.metrics;
        for (state, n) in [
            ("starting", counts.starting),
            ("idle", counts.ready - counts.busy),
            ("busy", counts.busy),
            ("removing", self.removals.retiring()),
            ("removal_failed", self.removals.removal_failed()),
            ("spare", self.spares.count()),
        ] {
            m.containers
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        let (free, in_use) = self.sandboxes.counts();
        for (state, n) in [("free", free), ("in_use", in_use)] {
            m.sandboxes
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        let budget = self.budget.snapshot();
        let spares = self.spares.stock().demand;
        let tasks = budget.used.saturating_sub(spares);
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
            ("tasks", tasks.cores(), tasks.mem_mb, budget.gpus_used),
            ("spares", spares.cores(), spares.mem_mb, 0),
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
        &self.ctx.metrics
    }

    /// `/pause`: refuse new tasks, stop the starts in progress, and remove every container.
    /// When it returns, nothing is reserved but containers the engine failed to remove.
    pub async fn pause(self: &Arc<Self>) {
        self.starter.pause_starts();
        self.sandboxes.disable();
        let mut containers = self.pool.take_all();
        containers.extend(self.spares.disable_and_take_all());
        tracing::info!(removing = containers.len(), "paused");
        // A tracked task of its own: the removals finish even if the caller goes away.
        let removals = Arc::clone(&self.removals);
        let starter = Arc::clone(&self.starter);
        let sandboxes = Arc::clone(&self.sandboxes);
        let removal = self.ctx.work.spawn(async move {
            removals.retire_all(containers, PAUSE_DRAIN_LIMIT).await;
            starter.wait_for_starts().await;
            // Removals the executor began before (the reaper's, the watcher's, evictions',
            // discards'): none may still hold room when `/update-config` checks the budget.
            if tokio::time::timeout(PAUSE_DRAIN_LIMIT, removals.wait_retired())
                .await
                .is_err()
            {
                tracing::warn!(
                    retiring = removals.retiring(),
                    "removals still in flight after pausing"
                );
            }
            // Last: the starts and removals above gave their sandboxes back.
            sandboxes.drain().await;
        });
        let _ = removal.await;
    }

    /// `/unpause`: accept tasks again.
    pub fn unpause(&self) {
        self.starter.unpause();
        self.sandboxes.enable();
        self.spares.enable();
        self.room.wake_prewarm();
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
        self.admission.refresh_runtimes().await?;
        // A keep-alive policy other than the one in force replaces it (nothing is idle
        // while paused); the same one keeps what it learned.
        let keep_alive = match update.keep_alive {
            Some(policy) if policy != self.config().keep_alive => {
                Some((policy, Adaptive::build(&policy)?))
            }
            _ => None,
        };
        let new_total = self.ctx.update_config(|config| {
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
            if let Some((policy, _)) = &keep_alive {
                config.keep_alive = *policy;
            }
            task_budget(config, self.host.capacity())
        });
        if let Some((_, built)) = keep_alive {
            self.adaptive.install(built);
            self.room.wake_prewarm();
        }
        self.budget.set_total(new_total);
        if let Some(on) = update.has_gpu {
            self.gpus.set_enabled(on, &self.budget);
        }
        self.admission.check_microvm_runtime();
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
        let spares = self.spares.stock();
        let tasks = budget.used.saturating_sub(spares.demand);
        Some(Stats {
            host: self.host.capacity(),
            host_cpu_percent: usage.cpu_percent,
            host_mem_percent: usage.mem_percent,
            task_cpu: budget.total.cores(),
            task_mem_mb: budget.total.mem_mb,
            task_used_cpu_percent: percent(tasks.milli_cpu, budget.total.milli_cpu),
            task_used_mem_percent: percent(tasks.mem_mb, budget.total.mem_mb),
            gpu_model: self.gpus.monitor().map(|m| m.model()).unwrap_or_default(),
            task_gpu: budget.gpus_total as u32,
            task_used_gpu: budget.gpus_used as u32,
            containers: counts.ready
                + counts.starting
                + self.removals.retiring()
                + self.removals.removal_failed(),
            spare_containers: spares.count,
            spare_used_cpu_percent: percent(spares.demand.milli_cpu, budget.total.milli_cpu),
            spare_used_mem_percent: percent(spares.demand.mem_mb, budget.total.mem_mb),
            free_sandboxes: self.sandboxes.counts().0,
            runtimes: if self.admission.microvm_runtime(&self.config()).is_ok() {
                vec!["container", "microVM"]
            } else {
                vec!["container"]
            },
        })
    }

    /// Stop: refuse new work, cancel cold starts, remove every container this instance
    /// created (found by label, so nothing escapes), and return.
    pub async fn shutdown(&self) {
        self.ctx.closing.cancel();
        // Starts in progress end as on pause: each removes what it created.
        self.starter.pause_starts();
        self.sandboxes.disable();
        let mut containers = self.pool.take_all();
        containers.extend(self.spares.disable_and_take_all());
        self.removals
            .retire_all(containers, SHUTDOWN_DRAIN_LIMIT)
            .await;
        self.ctx.work.close();
        // Starts end at once on `closing`; removals and diagnoses finish.
        let ended = async {
            self.starter.wait_for_starts().await;
            self.ctx.work.wait().await;
        };
        let ended = async {
            ended.await;
            self.sandboxes.drain().await;
        };
        if tokio::time::timeout(Duration::from_secs(30), ended)
            .await
            .is_err()
        {
            tracing::warn!(
                "starts and removals did not end within 30s; removing their containers anyway"
            );
        }
        let engine = &self.ctx.engine;
        match engine
            .list_labelled(crate::engine::LABEL_INSTANCE, &self.ctx.instance)
            .await
        {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = engine.remove(&id).await {
                        tracing::error!(container = %id, error = %e, "could not remove task container");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not list task containers to remove"),
        }
        self.sandboxes.remove_dir();
        tracing::info!("all task containers removed");
    }
}

/// Runs a background task under [`supervise`](crate::supervise), holding only the component
/// it runs: a panic is logged, counted in `meca_background_panics_total`, and the task
/// started again.
fn spawn_supervised<C, Fut>(
    ctx: &Context,
    task: &'static str,
    component: Arc<C>,
    run: fn(Arc<C>) -> Fut,
) where
    C: Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let metrics = Arc::clone(&ctx.metrics);
    tokio::spawn(async move {
        let counter = metrics
            .background_panics
            .get_or_create_owned(&crate::metrics::TaskLabel { task });
        crate::supervise::supervise(
            task,
            || run(Arc::clone(&component)),
            move || {
                counter.inc();
            },
        )
        .await;
    });
}

/// Sleeps until `at`, or forever when there is nothing to wake for (a background loop's
/// next deadline).
async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs `f` when dropped (also when the future holding it is cancelled).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
