//! Cold starts and container removal: reserving the budget (evicting idle containers,
//! then waiting), creating and starting the container, and taking containers down.
//!
//! Each cold start runs as its own task, owns its [`StartTicket`], and ends by putting the
//! container in the pool or telling the waiting requests why it could not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::FutureExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{ExecError, Executor};
use crate::config::Config;
use crate::engine::{
    ContainerSpec, EngineError, SgxMounts, LABEL_CPU, LABEL_EXECUTOR, LABEL_INSTANCE, LABEL_MEM,
    LABEL_TASK_KEY,
};
use crate::pool::{Container, Lease, StartTicket};
use crate::resources::{Demand, Reservation};
use crate::task::{Runtime, TaskKey};

/// Times the phases of one cold start into the metrics.
pub(super) struct Phases<'a> {
    metrics: &'a crate::metrics::Metrics,
    last: Instant,
}

impl<'a> Phases<'a> {
    pub(super) fn new(metrics: &'a crate::metrics::Metrics) -> Phases<'a> {
        Phases {
            metrics,
            last: Instant::now(),
        }
    }

    /// Records the time since the previous lap as phase `name`.
    pub(super) fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.metrics.phase(name, now - self.last);
        self.last = now;
    }
}

/// `f`, unless the executor is paused first (`cancel`): then [`ExecError::Paused`].
async fn unless_paused<T, E: Into<ExecError>>(
    cancel: &CancellationToken,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ExecError> {
    tokio::select! {
        result = f => result.map_err(Into::into),
        _ = cancel.cancelled() => Err(ExecError::Paused),
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

/// The first and the longest wait between attempts to remove a container the engine failed
/// to remove.
const REMOVAL_RETRY_FIRST: Duration = Duration::from_secs(1);
const REMOVAL_RETRY_MAX: Duration = Duration::from_secs(30);

fn describe(d: Demand) -> String {
    format!("{} cores and {} MB", d.cores(), d.mem_mb)
}

impl Executor {
    /// Runs one cold start to its end (spawned by the request that claimed the key).
    pub(super) async fn cold_start(
        self: Arc<Self>,
        ticket: StartTicket,
        starter: oneshot::Sender<Result<Lease, ExecError>>,
    ) {
        let key = ticket.key().clone();
        let cancel = self.start_cancel();
        let started = if self.is_paused() {
            Err(ExecError::Paused)
        } else {
            tokio::select! {
                result = self.start_container(&key, &cancel) => result,
                _ = self.closing.cancelled() => Err(ExecError::ShuttingDown),
            }
        };
        match started {
            Ok(container) => {
                tracing::info!(container = %container.id, key = %key, addr = %container.addr(), "task container ready");
                match ticket.ready(container) {
                    // If the starter went away, dropping its lease leaves the container idle.
                    Ok(lease) => drop(starter.send(Ok(lease))),
                    Err(container) => {
                        let _ = starter.send(Err(ExecError::Paused));
                        self.retire(container, Duration::ZERO).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "task container could not be started");
                let e = Arc::new(e);
                ticket.fail(Arc::clone(&e));
                let _ = starter.send(Err(ExecError::StartFailed(e)));
            }
        }
    }

    /// Starts a container for a request's `key`: the image (pulled if needed), room in the
    /// budget (evicting idle containers, then waiting), then the container itself.
    /// Gives up with [`ExecError::Paused`] when `cancel` (pause) fires first.
    async fn start_container(
        &self,
        key: &TaskKey,
        cancel: &CancellationToken,
    ) -> Result<Arc<Container>, ExecError> {
        let config = self.config();
        let mut phases = Phases::new(&self.metrics);
        unless_paused(cancel, self.ensure_image(&key.image, config.pull_timeout)).await?;
        phases.lap("image");
        let reservation = unless_paused(
            cancel,
            self.reserve(key.demand, key.gpu_count, config.queue_timeout),
        )
        .await?;
        phases.lap("reserve");
        self.launch(key, &config, reservation, phases, cancel).await
    }

    /// Creates and starts the container of `key` with its `reservation`, and waits until it
    /// is ready. A container that fails is removed.
    /// A pause (`cancel`) while it starts ends the start: the container is removed.
    pub(super) async fn launch(
        &self,
        key: &TaskKey,
        config: &Config,
        reservation: Reservation,
        mut phases: Phases<'_>,
        cancel: &CancellationToken,
    ) -> Result<Arc<Container>, ExecError> {
        let spec = self.container_spec(key, config, reservation.gpus());
        // Not cancelled half-way: once created, the container is removed on every path.
        let id = self.engine.create(&spec).await?;
        phases.lap("create");
        let started = unless_paused(
            cancel,
            self.engine
                .start_and_wait_ready(&id, &spec, config.start_timeout),
        )
        .await;
        phases.lap("start");
        match started {
            Ok(addr) => {
                let client = self.engine.task_client(&id, addr, config.max_answer_bytes);
                let prewarmed = config.prewarm.iter().any(|p| &p.key == key);
                Ok(Arc::new(Container::new(
                    id,
                    key.clone(),
                    client,
                    reservation,
                    prewarmed,
                    self.pool.idle_signal(),
                )))
            }
            Err(e) => {
                // The reservation stays with the container until it is gone.
                self.remove_or_keep_trying(&id, Box::new(reservation)).await;
                match e {
                    ExecError::Engine(EngineError::GpuDriverMissing(detail)) => {
                        Err(ExecError::NoGpu(format!(
                            "Docker could not give the task its GPUs ({detail}); is the NVIDIA \
                             container toolkit installed and registered with Docker?"
                        )))
                    }
                    e => Err(e),
                }
            }
        }
    }

    /// Makes sure the image is present, pulling it if not. Concurrent starts needing the same
    /// image share one pull; a pull longer than `pull_timeout` fails.
    pub(super) async fn ensure_image(
        &self,
        image: &str,
        pull_timeout: Duration,
    ) -> Result<(), EngineError> {
        if self.engine.image_present(image).await? {
            return Ok(());
        }
        let pull = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
            pulls
                .entry(image.to_string())
                .or_insert_with(|| {
                    let engine = Arc::clone(&self.engine);
                    let image = image.to_string();
                    let pulls = self.metrics.pulls.clone();
                    let pull_seconds = self.metrics.pull_seconds.clone();
                    let slots = Arc::clone(&self.pull_slots);
                    async move {
                        let started = Instant::now();
                        // The wait for a pull slot counts against the pull's timeout.
                        let pull = async {
                            let _slot = slots
                                .acquire()
                                .await
                                .expect("the semaphore is never closed");
                            // Another pull of this image may have finished meanwhile.
                            if engine.image_present(&image).await.unwrap_or(false) {
                                return Ok(());
                            }
                            engine.pull(&image).await
                        };
                        let result = match tokio::time::timeout(pull_timeout, pull).await {
                            Ok(result) => result,
                            Err(_) => Err(EngineError::PullTimeout {
                                image,
                                after: pull_timeout,
                            }),
                        };
                        pull_seconds.observe(started.elapsed().as_secs_f64());
                        let outcome = if result.is_ok() { "success" } else { "failure" };
                        pulls
                            .get_or_create(&crate::metrics::OutcomeLabel { outcome })
                            .inc();
                        result
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = pull.clone().await;
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        if pulls.get(image).is_some_and(|p| p.ptr_eq(&pull)) {
            pulls.remove(image);
        }
        result
    }

    /// Reserves `demand` and `gpus` GPUs: at once if they fit, else after evicting idle
    /// containers (least recently used first), else after waiting up to `queue_timeout` for
    /// releases (and, for GPUs, for their utilisation to drop).
    async fn reserve(
        &self,
        demand: Demand,
        gpus: u32,
        queue_timeout: Duration,
    ) -> Result<Reservation, ExecError> {
        let deadline = tokio::time::Instant::now() + queue_timeout;
        let entered = Instant::now();
        // While a start waits for room, prewarming stays out of its way.
        self.waiting_for_room
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _done = scopeguard(|| {
            self.waiting_for_room
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            self.metrics
                .queue_wait_seconds
                .observe(entered.elapsed().as_secs_f64());
            self.prewarm_wake.notify_one();
        });
        let monitor = self.gpu_monitor();
        let gpu_idle = |uuid: &str| monitor.as_ref().is_some_and(|m| m.is_idle(uuid));
        // First come, first served: while an earlier start waits for room, this one takes none.
        let place = self.room_queue.join();
        loop {
            // Room appears when a reservation is released, when a busy container goes idle
            // (it can be evicted then), or when an earlier start stops waiting: listen for
            // all of them before looking.
            let released = self.budget.released();
            let became_idle = self.pool.became_idle();
            let queue_moved = self.room_queue.changed();
            tokio::pin!(released, became_idle, queue_moved);
            released.as_mut().enable();
            became_idle.as_mut().enable();
            queue_moved.as_mut().enable();
            let first_in_line = !place.behind_someone();
            if first_in_line {
                if let Some(reservation) = self.budget.try_reserve_with_gpus(demand, gpus, gpu_idle)
                {
                    return Ok(reservation);
                }
                if self.eviction_can_help(demand, gpus) {
                    if let Some(victim) = self.pool.take_lru_idle() {
                        self.metrics.evictions.inc();
                        tracing::info!(container = %victim.id, key = %victim.key, "evicting idle container to make room");
                        self.retire(victim, Duration::ZERO).await;
                        continue;
                    }
                }
            }
            // Waiting only for GPUs (CPU and memory fit), this start holds nobody up.
            place.holds_up(!first_in_line || !self.budget.fits_now(demand));
            if !self.budget.can_ever_fit(demand, gpus) {
                let total = self.budget.snapshot().total;
                return Err(ExecError::ExceedsMaximum(format!(
                    "the task asks for {}; the task budget is {}",
                    describe(demand),
                    describe(total)
                )));
            }
            // GPUs also become free when their utilisation drops: look again now and then.
            let recheck = if gpus > 0 {
                crate::gpu::SAMPLE_PERIOD
            } else {
                queue_timeout
            };
            let wake = tokio::time::Instant::now() + recheck;
            let woken = async {
                tokio::select! {
                    _ = released => {}
                    _ = became_idle => {}
                    _ = queue_moved => {}
                }
            };
            match tokio::time::timeout_at(deadline.min(wake), woken).await {
                Ok(()) => {}
                Err(_) if tokio::time::Instant::now() < deadline => {}
                Err(_) => {
                    let snapshot = self.budget.snapshot();
                    let with_gpus = |d: Demand, n: usize| {
                        if gpus > 0 {
                            format!("{} and {n} GPUs", describe(d))
                        } else {
                            describe(d)
                        }
                    };
                    return Err(ExecError::QueueTimeout {
                        waited: humantime::format_duration(queue_timeout).to_string(),
                        wanted: with_gpus(demand, gpus as usize),
                        total: with_gpus(snapshot.total, snapshot.gpus_total),
                        reserved: with_gpus(snapshot.used, snapshot.gpus_used),
                    });
                }
            }
        }
    }

    /// Whether removing every idle container would make `demand` fit (GPUs: assumed so).
    /// Otherwise evicting only loses warm containers: the request has to wait anyway.
    fn eviction_can_help(&self, demand: Demand, gpus: u32) -> bool {
        if gpus > 0 {
            return true;
        }
        let budget = self.budget.snapshot();
        let idle = self.pool.idle_demand();
        let busy_cpu = budget.used.milli_cpu.saturating_sub(idle.milli_cpu);
        let busy_mem = budget.used.mem_mb.saturating_sub(idle.mem_mb);
        busy_cpu + demand.milli_cpu <= budget.total.milli_cpu
            && busy_mem + demand.mem_mb <= budget.total.mem_mb
    }

    fn container_spec(&self, key: &TaskKey, config: &Config, gpus: &[String]) -> ContainerSpec {
        let labels = HashMap::from([
            (LABEL_EXECUTOR.to_string(), config.name.clone()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            (LABEL_TASK_KEY.to_string(), key.to_string()),
            (LABEL_CPU.to_string(), key.demand.cores().to_string()),
            (LABEL_MEM.to_string(), key.demand.mem_mb.to_string()),
        ]);
        ContainerSpec {
            image: key.image.clone(),
            nano_cpus: key.demand.milli_cpu as i64 * 1_000_000,
            memory_bytes: key.demand.mem_mb as i64 * 1024 * 1024,
            runtime: match key.runtime {
                Runtime::Container => None,
                Runtime::MicroVm => config.microvm_runtime.clone(),
            },
            labels,
            network: config.network.clone(),
            publish_port: config.publish_task_ports,
            sgx: key.use_sgx.then(|| SgxMounts {
                device: config.sgx.sgx_device.clone().unwrap_or_default(),
                aesmd_path: config.sgx.aesmd_path.clone().unwrap_or_default(),
            }),
            gpus: gpus.to_vec(),
            hardening: config.hardening.clone(),
            tty: config.task_tty,
        }
    }

    /// Removes a container that is out of the pool, after at most `drain` for its
    /// in-flight requests. Its reservation is released when the last reference goes: after
    /// the engine removed it. A removal that fails is retried in the background, the
    /// container (and so its reservation) kept until it succeeds.
    pub(super) async fn retire(&self, container: Arc<Container>, drain: Duration) {
        // Counted in /stats until it is gone: its resources stay reserved until then.
        self.retiring
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _counted = scopeguard(|| {
            self.retiring
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
        if !drain.is_zero() && !container.wait_drained(drain).await {
            tracing::warn!(container = %container.id, "requests still in flight; removing anyway");
        }
        let id = container.id.clone();
        self.remove_or_keep_trying(&id, Box::new(container)).await;
    }

    /// Removes container `id`; if the engine fails to, keeps `hold` (what reserves the
    /// container's resources) and retries in the background until it is gone or the
    /// executor stops (whose final sweep removes it by label).
    pub(super) async fn remove_or_keep_trying(&self, id: &str, hold: Box<dyn Send>) {
        let Err(e) = self.engine.remove(id).await else {
            tracing::debug!(container = %id, "task container removed");
            return;
        };
        tracing::error!(container = %id, error = %e, "could not remove task container; its resources stay reserved, retrying");
        let engine = Arc::clone(&self.engine);
        let closing = self.closing.clone();
        let failed = Arc::clone(&self.removal_failed);
        let id = id.to_string();
        failed.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.work.spawn(async move {
            let _hold = hold;
            let mut delay = REMOVAL_RETRY_FIRST;
            loop {
                tokio::select! {
                    _ = closing.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                match engine.remove(&id).await {
                    Ok(()) => {
                        tracing::info!(container = %id, "task container removed after retrying");
                        break;
                    }
                    Err(e) => tracing::warn!(container = %id, error = %e, "still cannot remove task container"),
                }
                delay = (delay * 2).min(REMOVAL_RETRY_MAX);
            }
            failed.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
    }

    /// Removes several containers concurrently.
    pub(super) async fn retire_all(&self, containers: Vec<Arc<Container>>, drain: Duration) {
        futures_util::future::join_all(containers.into_iter().map(|c| self.retire(c, drain))).await;
    }
}
