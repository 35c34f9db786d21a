//! Room in the budget: reserving for a start (evicting idle containers, then waiting, in
//! arrival order), and the idle reaper that gives back what warm containers no longer use.
//!
//! Owns the policy over the pool and the budget: which idle container to evict and when
//! eviction can help, how long a start waits, the queue of starts waiting for room
//! (`queue.rs`), how many wait (`waiting_for_room`, which prewarming yields to) and the
//! signal that wakes the prewarm keeper. It never creates containers (the starter does) and
//! removes them only through [`Removals`]. The reaper sleeps until the earliest possible
//! expiry (no polling) and wakes early only when the pool gains a container, the config
//! changes, or (`keep_alive: adaptive`, whose expiries are per key) the end of a request
//! brings its container's expiry forward. A container with a request in flight is never
//! taken (the pool guarantees it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::adaptive::Adaptive;
use super::background::scopeguard;
use super::context::Context;
use super::error::ExecError;
use super::gpus::Gpus;
use super::pool::Pool;
use super::queue::RoomQueue;
use super::removals::Removals;
use super::spares::Spares;
use crate::resources::{Budget, Demand, Reservation};

fn describe(d: Demand) -> String {
    format!("{} cores and {} MB", d.cores(), d.mem_mb)
}

pub(super) struct Room {
    ctx: Context,
    pool: Arc<Pool>,
    budget: Arc<Budget>,
    gpus: Arc<Gpus>,
    removals: Arc<Removals>,
    spares: Arc<Spares>,
    /// Starts now waiting for budget room; prewarming yields to them.
    waiting_for_room: AtomicUsize,
    /// The order in which waiting starts get room.
    queue: RoomQueue,
    /// Wakes the prewarm keeper (a start stopped waiting, unpause).
    prewarm_wake: Notify,
    /// The per-key expiry of idle containers (`keep_alive: adaptive`, `priced`).
    adaptive: Arc<Adaptive>,
}

impl Room {
    pub(super) fn new(
        ctx: Context,
        pool: Arc<Pool>,
        budget: Arc<Budget>,
        gpus: Arc<Gpus>,
        removals: Arc<Removals>,
        spares: Arc<Spares>,
        adaptive: Arc<Adaptive>,
    ) -> Room {
        Room {
            ctx,
            pool,
            budget,
            gpus,
            removals,
            spares,
            waiting_for_room: AtomicUsize::new(0),
            queue: RoomQueue::default(),
            prewarm_wake: Notify::new(),
            adaptive,
        }
    }

    /// The pool this room's policy governs.
    pub(super) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The budget this room's policy governs.
    pub(super) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// How many starts wait for room now.
    pub(super) fn waiting_for_room(&self) -> usize {
        self.waiting_for_room.load(Ordering::Acquire)
    }

    /// The pre-warm keeper's signal, for those who wake it without the room
    /// ([`super::adaptive::Adaptive::visit`]).
    pub(super) fn prewarm_signal(&self) -> &Notify {
        &self.prewarm_wake
    }

    /// Wakes the prewarm keeper (or its next wait, if it is not waiting).
    pub(super) fn wake_prewarm(&self) {
        self.prewarm_wake.notify_one();
    }

    /// A future that completes when the prewarm keeper is woken. Enable it before looking.
    pub(super) fn prewarm_woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.prewarm_wake.notified()
    }

    /// Reserves `demand` and `gpus` GPUs: at once if they fit, else after evicting idle
    /// containers (least recently used first), else after waiting up to `queue_timeout` for
    /// releases (and, for GPUs, for their utilisation to drop).
    pub(super) async fn reserve(
        &self,
        demand: Demand,
        gpus: u32,
        queue_timeout: Duration,
    ) -> Result<Reservation, ExecError> {
        let deadline = tokio::time::Instant::now() + queue_timeout;
        let entered = Instant::now();
        // While a start waits for room, prewarming stays out of its way.
        self.waiting_for_room.fetch_add(1, Ordering::AcqRel);
        let _done = scopeguard(|| {
            self.waiting_for_room.fetch_sub(1, Ordering::AcqRel);
            self.ctx
                .metrics
                .queue_wait_seconds
                .observe(entered.elapsed().as_secs_f64());
            self.prewarm_wake.notify_one();
        });
        let monitor = self.gpus.monitor();
        let gpu_idle = |uuid: &str| monitor.as_ref().is_some_and(|m| m.is_idle(uuid));
        // First come, first served: while an earlier start waits for room, this one takes none.
        let place = self.queue.join();
        loop {
            // Room appears when a reservation is released, when a busy container goes idle
            // (it can be evicted then), or when an earlier start stops waiting: listen for
            // all of them before looking.
            let released = self.budget.released();
            let became_idle = self.pool.became_idle();
            let queue_moved = self.queue.changed();
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
                    // Spares first: they serve no key yet.
                    let victim = self
                        .spares
                        .take_oldest()
                        .or_else(|| self.pool.take_lru_idle());
                    if let Some(victim) = victim {
                        tracing::info!(container = %victim.id, key = %victim.key, "evicting idle container to make room");
                        self.evict(victim).await;
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
                    biased; // In the order written, not at random: a simulated run replays.
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

    /// Prewarm keys come before spares: evicts spares (oldest first) until `demand` fits,
    /// if removing every spare would make it fit. True when it fits now.
    pub(super) async fn room_from_spares(&self, demand: Demand) -> bool {
        let budget = self.budget.snapshot();
        let spares = self.spares.demand();
        let fits_without_spares = budget.used.milli_cpu - spares.milli_cpu + demand.milli_cpu
            <= budget.total.milli_cpu
            && budget.used.mem_mb - spares.mem_mb + demand.mem_mb <= budget.total.mem_mb;
        if !fits_without_spares {
            return self.budget.fits_now(demand);
        }
        while !self.budget.fits_now(demand) {
            let Some(victim) = self.spares.take_oldest() else {
                return false;
            };
            tracing::info!(container = %victim.id, image = %victim.key.image, "evicting a spare container for a prewarm key");
            self.evict(victim).await;
        }
        true
    }

    /// Evicts `victim` (out of the pool or the spares) and returns once its room is free.
    /// A task of its own: if the caller is cancelled (pause, stop), the eviction still ends
    /// with the victim dead and removed, never with its room given back while it runs.
    async fn evict(&self, victim: Arc<super::container::Container>) {
        self.ctx.metrics.evictions.inc();
        let in_background = self.ctx.config().background_eviction;
        let removals = Arc::clone(&self.removals);
        let eviction = self
            .ctx
            .work
            .spawn(async move { removals.evict(victim, in_background).await });
        let _ = eviction.await;
    }

    /// Whether removing every idle container would make `demand` fit (GPUs: assumed so).
    /// Otherwise evicting only loses warm containers: the request has to wait anyway.
    fn eviction_can_help(&self, demand: Demand, gpus: u32) -> bool {
        if gpus > 0 {
            return true;
        }
        let budget = self.budget.snapshot();
        let pooled = self.pool.idle_demand();
        let spares = self.spares.demand();
        let idle = Demand {
            milli_cpu: pooled.milli_cpu + spares.milli_cpu,
            mem_mb: pooled.mem_mb + spares.mem_mb,
        };
        let busy_cpu = budget.used.milli_cpu.saturating_sub(idle.milli_cpu);
        let busy_mem = budget.used.mem_mb.saturating_sub(idle.mem_mb);
        busy_cpu + demand.milli_cpu <= budget.total.milli_cpu
            && busy_mem + demand.mem_mb <= budget.total.mem_mb
    }

    /// The idle reaper: removes warm containers that served nothing for the idle timeout
    /// (`keep_alive: adaptive`: for their key's keep-alive window, at most the idle timeout).
    /// Wakes at the earliest expiry, when the pool gains a container or the config changes,
    /// and (adaptive) when a request's end moves its container's expiry earlier.
    pub(super) async fn reap_idle(self: Arc<Self>) {
        loop {
            let idle_timeout = self.ctx.config().idle_timeout;
            let now = Instant::now();
            let (expired, next) = self.adaptive.take_expired(&self.pool, now, idle_timeout);
            for (container, unused_prewarm) in expired {
                self.ctx.metrics.reaped.inc();
                if unused_prewarm {
                    self.ctx.metrics.predicted_prewarms_unused.inc();
                    tracing::info!(container = %container.id, key = %container.key, "removing a pre-warmed container its predicted request did not use");
                } else {
                    tracing::info!(container = %container.id, key = %container.key, "removing idle container");
                }
                self.removals.retire_later(container);
            }
            let sleep = super::background::sleep_until_or_forever(next);
            tokio::select! {
                biased; // In the order written, not at random: a simulated run replays.
                _ = self.ctx.closing.cancelled() => return,
                _ = self.pool.changed.notified() => {}
                _ = sleep => {}
            }
        }
    }
}
