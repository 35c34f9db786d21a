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

use super::container::{Container, Lease};
use super::context::Context;
use super::error::ExecError;
use super::pool::{Pool, StartTicket};
use super::pulls::Pulls;
use super::removals::Removals;
use super::room::Room;
use super::sandboxes::Sandboxes;
use super::spares::Spares;
use crate::config::Config;
use crate::engine::{
    ContainerSpec, EngineError, SandboxRef, SgxMounts, LABEL_CPU, LABEL_EXECUTOR, LABEL_INSTANCE,
    LABEL_MEM, LABEL_ROLE, LABEL_TASK_KEY, ROLE_SPARE,
};
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

/// `demand`'s CPU as a container quota (10⁻⁹ cores).
fn nano_cpus(demand: Demand) -> i64 {
    demand.milli_cpu as i64 * 1_000_000
}

/// `demand`'s memory as a container limit in bytes.
fn memory_bytes(demand: Demand) -> i64 {
    demand.mem_mb as i64 * 1024 * 1024
}

/// `f`, unless the executor is paused first (`cancel`): then [`ExecError::Paused`].
async fn unless_paused<T, E: Into<ExecError>>(
    cancel: &CancellationToken,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ExecError> {
    tokio::select! {
        biased; // In the order written, not at random: a simulated run replays.
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
    sandboxes: Arc<Sandboxes>,
    spares: Arc<Spares>,
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
        sandboxes: Arc<Sandboxes>,
        spares: Arc<Spares>,
    ) -> Starter {
        Starter {
            ctx,
            pool,
            pulls,
            room,
            removals,
            sandboxes,
            spares,
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
                self.maybe_start_spare(&key);
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
        // From here to its end (not while it pulls, which takes the network, not the CPU),
        // refills (holders, spares) wait for this start.
        let _request_start = self.ctx.refills.request_start();
        if let Some(container) = self.claim_spare(key, &config).await {
            phases.lap("resize");
            return Ok(container);
        }
        let reservation = unless_paused(
            cancel,
            self.room
                .reserve(key.demand, key.gpu_count, config.queue_timeout),
        )
        .await?;
        phases.lap("reserve");
        self.launch(key, &config, reservation, phases, cancel).await
    }

    /// The spare of `key`'s image, grown to `key`'s limits, if there is one within them (a
    /// spare is never shrunk: see `spares`) and the budget has room for what `key` adds. The
    /// reservation is grown before the engine resizes, so what runs never exceeds what is
    /// reserved.
    async fn claim_spare(&self, key: &TaskKey, config: &Config) -> Option<Arc<Container>> {
        if !key.is_plain_container() {
            return None;
        }
        let (spare, started) = self.spares.take_fitting(key)?;
        let spare = match Arc::try_unwrap(spare) {
            Ok(spare) => spare,
            Err(shared) => {
                self.removals.retire_later(shared);
                return None;
            }
        };
        let Some(mut reservation) = spare.take_reservation() else {
            self.removals.retire_later(Arc::new(spare));
            return None;
        };
        if !reservation.resize(key.demand) {
            // No free room to grow into: it stays a spare (evicted first if room is needed).
            spare.put_reservation(reservation);
            self.spares.put_back(Arc::new(spare), started);
            return None;
        }
        let resized = self
            .ctx
            .engine
            .update_limits(&spare.id, nano_cpus(key.demand), memory_bytes(key.demand))
            .await;
        if let Err(e) = resized {
            tracing::warn!(container = %spare.id, key = %key, error = %e, "could not resize the spare container; starting afresh");
            spare.put_reservation(reservation);
            self.removals.retire_later(Arc::new(spare));
            return None;
        }
        tracing::info!(container = %spare.id, key = %key, "spare container grown for the key");
        self.ctx.metrics.spares_claimed.inc();
        let prewarmed = config.prewarm.iter().any(|p| &p.key == key);
        Some(Arc::new(spare.rekeyed(key.clone(), reservation, prewarmed)))
    }

    /// After a container of `key` started: starts a spare of its image in the background,
    /// if the spares' bounds allow one.
    fn maybe_start_spare(self: &Arc<Self>, key: &TaskKey) {
        let Some(key) = self.spares.wants(key) else {
            return;
        };
        let starter = Arc::clone(self);
        self.spawn_start(async move {
            let _ended = super::background::scopeguard(|| starter.spares.start_ended(&key));
            starter.start_spare(&key).await;
        });
    }

    /// Starts a spare with `template`'s limits, from free room only, out of the way of
    /// requests: in its turn among the refills (no request start in flight), never while a
    /// start waits for room.
    async fn start_spare(&self, template: &TaskKey) {
        let cancel = self.start_cancel();
        let _turn = tokio::select! {
            biased; // In the order written, not at random: a simulated run replays.
            _ = cancel.cancelled() => return,
            turn = self.ctx.refills.turn() => turn,
        };
        if self.is_paused() || self.room.waiting_for_room() > 0 {
            return;
        }
        let Some(reservation) = self.room.budget().try_reserve(template.demand) else {
            return;
        };
        self.spares.start_reserved(template);
        let config = self.ctx.config();
        let phases = Phases::new(&self.ctx.metrics);
        let started = self.launch_as(template, &config, reservation, phases, &cancel, true);
        match started.await {
            Ok(container) => {
                if let Err(container) = self.spares.put(container) {
                    self.removals.retire(container, Duration::ZERO).await;
                }
            }
            Err(e) => {
                tracing::info!(image = %template.image, error = %e, "spare container could not be started")
            }
        }
    }

    /// Creates and starts the container of `key` with its `reservation`, and waits until it
    /// is ready. A container that fails is removed.
    /// A pause (`cancel`) while it starts ends the start: the container is removed.
    pub(super) async fn launch(
        &self,
        key: &TaskKey,
        config: &Config,
        reservation: Reservation,
        phases: Phases<'_>,
        cancel: &CancellationToken,
    ) -> Result<Arc<Container>, ExecError> {
        self.launch_as(key, config, reservation, phases, cancel, false)
            .await
    }

    /// [`launch`](Self::launch), of a spare (labelled so) when `spare`.
    async fn launch_as(
        &self,
        key: &TaskKey,
        config: &Config,
        reservation: Reservation,
        mut phases: Phases<'_>,
        cancel: &CancellationToken,
        spare: bool,
    ) -> Result<Arc<Container>, ExecError> {
        let engine = &self.ctx.engine;
        let mut sandbox = match self.sandboxes.take() {
            Some(sandbox) => sandbox,
            None => {
                let own = self.sandboxes.start_own().await;
                phases.lap("sandbox");
                match own {
                    Ok(sandbox) => sandbox,
                    // Nothing was created: the reservation is released with it.
                    Err(e) => return Err(e),
                }
            }
        };
        // A pooled sandbox whose holder died (stopped from outside) cannot be joined: the
        // engine refuses, and the start takes a sandbox of its own instead (once).
        let mut retried = false;
        loop {
            let mut spec =
                self.container_spec(key, config, reservation.gpus(), sandbox.holder().clone());
            if spare {
                // Docker cannot change labels later: a claimed spare keeps this one (and the
                // task key and size labels of the key it was started for).
                spec.labels
                    .insert(LABEL_ROLE.to_string(), ROLE_SPARE.to_string());
            }
            let sandbox_failed = |e: &EngineError| {
                !retried && matches!(e, EngineError::Api(_) | EngineError::NoSuchContainer(_))
            };
            // Not cancelled half-way: once created, the container is removed on every path.
            let id = match engine.create(&spec).await {
                Ok(id) => id,
                Err(e) if sandbox_failed(&e) => {
                    tracing::warn!(key = %key, error = %e, "could not join a pooled sandbox; the start takes a sandbox of its own");
                    retried = true;
                    match self.sandboxes.start_own().await {
                        Ok(own) => sandbox = own,
                        Err(e) => return Err(e),
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            phases.lap("create");
            let started = unless_paused(
                cancel,
                engine.start_and_wait_ready(&id, &spec, config.start_timeout),
            )
            .await;
            phases.lap("start");
            let e = match started {
                Ok(addr) => {
                    self.pulls.used(&key.image);
                    let client = engine.task_client(&id, &addr, config.max_answer_bytes);
                    let prewarmed = config.prewarm.iter().any(|p| &p.key == key);
                    return Ok(Arc::new(Container::new(
                        id,
                        key.clone(),
                        client,
                        reservation,
                        prewarmed,
                        self.pool.idle_signal(),
                        Some(sandbox),
                    )));
                }
                Err(ExecError::Engine(e)) if sandbox_failed(&e) => {
                    // Removed at once, its room is the retry's; else it keeps the room.
                    if self.removals.remove(&id).await {
                        tracing::warn!(key = %key, error = %e, "could not start in a pooled sandbox; the start takes a sandbox of its own");
                        retried = true;
                        drop(sandbox);
                        match self.sandboxes.start_own().await {
                            Ok(own) => sandbox = own,
                            Err(e) => return Err(e),
                        }
                        continue;
                    }
                    self.removals
                        .keep_trying(&id, Box::new((reservation, sandbox)));
                    return Err(e.into());
                }
                Err(e) => e,
            };
            // The reservation stays with the container until it is gone. The sandbox, its
            // state unknown after a failed start, is discarded with it.
            self.removals
                .remove_or_keep_trying(&id, Box::new((reservation, sandbox)))
                .await;
            return match e {
                ExecError::Engine(EngineError::GpuDriverMissing(detail)) => {
                    Err(ExecError::NoGpu(format!(
                        "Docker could not give the task its GPUs ({detail}); is the NVIDIA \
                         container toolkit installed and registered with Docker?"
                    )))
                }
                e => Err(e),
            };
        }
    }

    fn container_spec(
        &self,
        key: &TaskKey,
        config: &Config,
        gpus: &[String],
        sandbox: SandboxRef,
    ) -> ContainerSpec {
        let labels = HashMap::from([
            (LABEL_EXECUTOR.to_string(), config.name.clone()),
            (LABEL_INSTANCE.to_string(), self.ctx.instance.to_string()),
            (LABEL_TASK_KEY.to_string(), key.to_string()),
            (LABEL_CPU.to_string(), key.demand.cores().to_string()),
            (LABEL_MEM.to_string(), key.demand.mem_mb.to_string()),
        ]);
        ContainerSpec {
            image: key.image.clone(),
            nano_cpus: nano_cpus(key.demand),
            memory_bytes: memory_bytes(key.demand),
            runtime: match key.runtime {
                Runtime::Container => None,
                Runtime::MicroVm => config.microvm_runtime.clone(),
            },
            labels,
            sgx: key.use_sgx.then(|| SgxMounts {
                device: config.sgx.sgx_device.clone().unwrap_or_default(),
                aesmd_path: config.sgx.aesmd_path.clone().unwrap_or_default(),
            }),
            gpus: gpus.to_vec(),
            hardening: config.hardening.clone(),
            tty: config.task_tty,
            sandbox,
        }
    }
}
