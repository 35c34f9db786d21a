//! Container starts: a request's cold start (the image, room in the budget, then the
//! container itself), and whether starts may run at all (pause).
//!
//! Owns the pause state of starts: the `paused` flag, the token that starts in progress
//! watch (pause cancels it and puts a fresh one in its place), and the tracker of starts in
//! progress that pause waits for. Each cold start runs as its own task, owns its
//! [`StartTicket`], and ends by putting the container in the pool (leased to the request
//! that started it) or telling the waiting requests why it could not. Images come from
//! [`Pulls`], room from [`Room`]; a container that fails to start is removed through
//! [`Removals`]. Starts never take containers out of the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::context::Context;
use super::pulls::Pulls;
use super::removals::Removals;
use super::room::Room;
use super::ExecError;
use crate::config::Config;
use crate::engine::{
    ContainerSpec, EngineError, SgxMounts, LABEL_CPU, LABEL_EXECUTOR, LABEL_INSTANCE, LABEL_MEM,
    LABEL_TASK_KEY,
};
use crate::pool::{Container, Lease, Pool, StartTicket};
use crate::resources::Reservation;
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

pub(super) struct Starter {
    ctx: Context,
    pool: Arc<Pool>,
    pulls: Arc<Pulls>,
    room: Arc<Room>,
    removals: Arc<Removals>,
    paused: AtomicBool,
    /// Cancelled (and replaced) by pause: starts in progress give up and remove what they
    /// created.
    start_cancel: RwLock<CancellationToken>,
    /// Container starts in progress (requests' and prewarm's); pause waits for them.
    starts: TaskTracker,
}

impl Starter {
    pub(super) fn new(
        ctx: Context,
        pool: Arc<Pool>,
        pulls: Arc<Pulls>,
        room: Arc<Room>,
        removals: Arc<Removals>,
    ) -> Starter {
        Starter {
            ctx,
            pool,
            pulls,
            room,
            removals,
            paused: AtomicBool::new(false),
            start_cancel: RwLock::new(CancellationToken::new()),
            starts: TaskTracker::new(),
        }
    }

    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Refuses work while stopping or paused.
    pub(super) fn check_open(&self) -> Result<(), ExecError> {
        if self.ctx.closing.is_cancelled() {
            return Err(ExecError::ShuttingDown);
        }
        if self.is_paused() {
            return Err(ExecError::Paused);
        }
        Ok(())
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

    /// Pause, first half: no start begins any more, and those in progress are cancelled.
    pub(super) fn pause_starts(&self) {
        self.paused.store(true, Ordering::SeqCst);
        // A start that read the old token is cancelled; one that reads the new one sees
        // `paused` and does not begin.
        let old =
            std::mem::take(&mut *self.start_cancel.write().unwrap_or_else(|e| e.into_inner()));
        old.cancel();
    }

    /// Pause, second half: waits until the starts in progress ended (each removes what it
    /// created).
    pub(super) async fn wait_for_starts(&self) {
        self.starts.close();
        self.starts.wait().await;
        self.starts.reopen();
    }

    /// Starts may begin again.
    pub(super) fn unpause(&self) {
        self.paused.store(false, Ordering::Release);
    }

    /// Runs one cold start to its end (spawned by the request that claimed the key).
    pub(super) async fn cold_start(
        self: Arc<Self>,
        ticket: StartTicket,
        starter: oneshot::Sender<Result<Lease, ExecError>>,
    ) {
        let key = ticket.key().clone();
        let cancel = self.start_cancel();
        // Pause and shutdown both cancel `cancel`: the start then ends cooperatively, removing
        // what it created, instead of being dropped half-way.
        let started = if self.is_paused() {
            Err(ExecError::Paused)
        } else {
            self.start_container(&key, &cancel).await
        };
        let started = match started {
            Err(ExecError::Paused) if self.ctx.closing.is_cancelled() => {
                Err(ExecError::ShuttingDown)
            }
            other => other,
        };
        match started {
            Ok(container) => {
                tracing::info!(container = %container.id, key = %key, addr = %container.addr(), "task container ready");
                match ticket.ready(container) {
                    // If the starter went away, dropping its lease leaves the container idle.
                    Ok(lease) => drop(starter.send(Ok(lease))),
                    Err(container) => {
                        let _ = starter.send(Err(ExecError::Paused));
                        self.removals.retire(container, Duration::ZERO).await;
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
        let config = self.ctx.config();
        let mut phases = Phases::new(&self.ctx.metrics);
        unless_paused(
            cancel,
            self.pulls.ensure_image(&key.image, config.pull_timeout),
        )
        .await?;
        phases.lap("image");
        let reservation = unless_paused(
            cancel,
            self.room
                .reserve(key.demand, key.gpu_count, config.queue_timeout),
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
        let engine = &self.ctx.engine;
        // Not cancelled half-way: once created, the container is removed on every path.
        let id = engine.create(&spec).await?;
        phases.lap("create");
        let started = unless_paused(
            cancel,
            engine.start_and_wait_ready(&id, &spec, config.start_timeout),
        )
        .await;
        phases.lap("start");
        match started {
            Ok(addr) => {
                let client = engine.task_client(&id, addr, config.max_answer_bytes);
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
                self.removals
                    .remove_or_keep_trying(&id, Box::new(reservation))
                    .await;
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

    fn container_spec(&self, key: &TaskKey, config: &Config, gpus: &[String]) -> ContainerSpec {
        let labels = HashMap::from([
            (LABEL_EXECUTOR.to_string(), config.name.clone()),
            (LABEL_INSTANCE.to_string(), self.ctx.instance.to_string()),
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
}
