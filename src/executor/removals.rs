//! Taking containers down: removing containers that are out of the pool (retired, evicted,
//! reaped, broken), and retrying in the background a removal the engine failed.
//!
//! Owns the counts of containers being removed (`retiring`: counted from the moment a
//! removal is decided, also while a broken container is diagnosed or a removal waits for its
//! turn, so pause can wait until none is in flight) and of those the engine failed to
//! remove (`removal_failed`). A container reaches this module only after the pool handed
//! it out (`take_*`), so nobody can lease it any more; this module never puts anything into
//! the pool and never reserves. What a container holds (its reservation) is kept until the
//! engine removed it, so a failed removal keeps its resources reserved.
//!
//! Broken containers are handled here too: a call to a ready task failed at the transport
//! level (timeout, reset, refused, garbage). The container is taken out of service, the
//! engine asked why it failed, and it is removed, so the next request starts a fresh one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;
use tokio::sync::Notify;
use tracing::Instrument;

use super::container::{Container, Lease};
use super::context::Context;
use super::pool::Pool;
use crate::engine::{EngineError, ExitState};
use crate::task_client::CallError;

/// How long the connections to a task in a sandbox get to close before the task is killed.
const CLOSE_GRACE: Duration = Duration::from_millis(10);

/// Closes the executor's connections to a task in a sandbox and lets their sockets close.
async fn close_before_kill(container: &Container) {
    if container.close_connections() {
        tokio::time::sleep(CLOSE_GRACE).await;
    }
}

/// The first and the longest wait between attempts to remove a container the engine failed
/// to remove.
const REMOVAL_RETRY_FIRST: Duration = Duration::from_secs(1);
const REMOVAL_RETRY_MAX: Duration = Duration::from_secs(30);

pub(super) struct Removals {
    ctx: Context,
    pool: Arc<Pool>,
    /// Containers out of the pool whose removal is in progress.
    retiring: Arc<AtomicUsize>,
    /// Woken when `retiring` drops to zero.
    retired: Arc<Notify>,
    /// Containers the engine failed to remove, still reserved, removal retried.
    removal_failed: Arc<AtomicUsize>,
}

/// One removal in flight, counted in `retiring` until dropped.
struct Retiring {
    count: Arc<AtomicUsize>,
    retired: Arc<Notify>,
}

impl Drop for Retiring {
    fn drop(&mut self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.retired.notify_waiters();
        }
    }
}

impl Removals {
    pub(super) fn new(ctx: Context, pool: Arc<Pool>) -> Removals {
        Removals {
            ctx,
            pool,
            retiring: Arc::new(AtomicUsize::new(0)),
            retired: Arc::new(Notify::new()),
            removal_failed: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts a removal from now until the returned guard is dropped.
    fn counted(&self) -> Retiring {
        self.retiring.fetch_add(1, Ordering::AcqRel);
        Retiring {
            count: Arc::clone(&self.retiring),
            retired: Arc::clone(&self.retired),
        }
    }

    /// Waits until no removal is in flight (the reaper's, the watcher's, evictions',
    /// discards' included); removals the engine failed and that are retried do not count.
    pub(super) async fn wait_retired(&self) {
        loop {
            let retired = self.retired.notified();
            tokio::pin!(retired);
            retired.as_mut().enable();
            if self.retiring() == 0 {
                return;
            }
            retired.await;
        }
    }

    /// Containers out of the pool whose removal is in progress.
    pub(super) fn retiring(&self) -> usize {
        self.retiring.load(Ordering::Acquire)
    }

    /// Containers the engine failed to remove (still reserved, removal retried).
    pub(super) fn removal_failed(&self) -> usize {
        self.removal_failed.load(Ordering::Acquire)
    }

    /// Removes a container that is out of the pool, after at most `drain` for its
    /// in-flight requests. Its reservation is released when the last reference goes: after
    /// the engine removed it. A removal that fails is retried in the background, the
    /// container (and so its reservation) kept until it succeeds.
    pub(super) async fn retire(&self, container: Arc<Container>, drain: Duration) {
        // Counted in /stats until it is gone: its resources stay reserved until then.
        let counted = self.counted();
        self.retire_counted(container, drain, counted).await;
    }

    async fn retire_counted(&self, container: Arc<Container>, drain: Duration, _counted: Retiring) {
        if !drain.is_zero() && !container.wait_drained(drain).await {
            tracing::warn!(container = %container.id, "requests still in flight; removing anyway");
        }
        let id = container.id.clone();
        close_before_kill(&container).await;
        if self.remove(&id).await {
            container.removed();
        } else {
            self.keep_trying(&id, Box::new(container));
        }
    }

    /// Evicts an idle container taken out of the pool to make room. With `in_background`
    /// (`background_eviction`), kills it, gives its room back once its processes are dead,
    /// and removes it in the background, so the start that needs the room does not wait for
    /// the removal; no two live containers hold the same room, as the killed one never runs
    /// again. Otherwise, or if the kill fails, removes it first (the room comes back after).
    pub(super) async fn evict(self: &Arc<Self>, victim: Arc<Container>, in_background: bool) {
        if in_background {
            close_before_kill(&victim).await;
            match self.ctx.engine.kill(&victim.id).await {
                Ok(()) => {
                    victim.release_reservation();
                    self.retire_later(victim);
                    return;
                }
                Err(e) => {
                    tracing::warn!(container = %victim.id, error = %e, "could not kill the evicted container; removing it before its room is reused")
                }
            }
        }
        self.retire(victim, Duration::ZERO).await;
    }

    /// Removes container `id`; if the engine fails to, keeps `hold` (what reserves the
    /// container's resources) and retries in the background until it is gone or the
    /// executor stops (whose final sweep removes it by label).
    pub(super) async fn remove_or_keep_trying(&self, id: &str, hold: Box<dyn Send>) {
        if !self.remove(id).await {
            self.keep_trying(id, hold);
        }
    }

    /// Asks the engine to remove container `id`; false when it failed to.
    pub(super) async fn remove(&self, id: &str) -> bool {
        match self.ctx.engine.remove(id).await {
            Ok(()) => {
                tracing::debug!(container = %id, "task container removed");
                true
            }
            Err(e) => {
                tracing::error!(container = %id, error = %e, "could not remove task container; its resources stay reserved, retrying");
                false
            }
        }
    }

    /// Retries removing container `id` in the background, keeping `hold` until it is gone.
    pub(super) fn keep_trying(&self, id: &str, hold: Box<dyn Send>) {
        let engine = Arc::clone(&self.ctx.engine);
        let closing = self.ctx.closing.clone();
        let failed = Arc::clone(&self.removal_failed);
        let id = id.to_string();
        failed.fetch_add(1, Ordering::AcqRel);
        self.ctx.work.spawn(async move {
            let _hold = hold;
            let mut delay = REMOVAL_RETRY_FIRST;
            loop {
                tokio::select! {
                    biased; // In the order written, not at random: a simulated run replays.
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
            failed.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// [`retire`](Self::retire) as a tracked task of its own, which shutdown waits for:
    /// the caller goes on at once, and its cancellation cannot cut the removal short.
    pub(super) fn retire_later(self: &Arc<Self>, container: Arc<Container>) {
        let counted = self.counted();
        self.retire_later_counted(container, counted);
    }

    fn retire_later_counted(self: &Arc<Self>, container: Arc<Container>, counted: Retiring) {
        let removals = Arc::clone(self);
        self.ctx.work.spawn(async move {
            removals
                .retire_counted(container, Duration::ZERO, counted)
                .await
        });
    }

    /// Removes several containers concurrently.
    pub(super) async fn retire_all(&self, containers: Vec<Arc<Container>>, drain: Duration) {
        futures_util::future::join_all(containers.into_iter().map(|c| self.retire(c, drain))).await;
    }

    /// Takes the container out of service at once (no new request gets it), then finds out
    /// why it failed and removes it. That work runs as a tracked task of its own, so it
    /// completes even if the caller goes away. Returns the message for the caller.
    pub(super) async fn discard_broken(self: &Arc<Self>, lease: Lease, error: CallError) -> String {
        let container = Arc::clone(lease.container());
        drop(lease);
        let ours = self.pool.take_if_current(&container);
        // Counted as a removal from now: pause waits for the diagnosis and the removal.
        let counted = ours.then(|| self.counted());
        let removals = Arc::clone(self);
        let diagnosis = self.ctx.work.spawn(async move {
            let message = if matches!(error, CallError::Timeout(_)) {
                format!("{error}; its container was removed and will not be reused")
            } else {
                match removals.exit_state_settled(&container.id).await {
                    Ok(Some(state)) => {
                        format!("task container {state} while handling the request")
                    }
                    Err(EngineError::NoSuchContainer(_)) => {
                        "task container was stopped or removed outside the executor while \
                         handling the request"
                            .to_string()
                    }
                    _ => format!("{error}; its container was removed"),
                }
            };
            tracing::warn!(container = %container.id, key = %container.key, reason = %message, "discarding task container");
            // Only one of the requests that saw it break removes it, in the background:
            // the answer does not wait for the removal.
            if let Some(counted) = counted {
                removals.retire_later_counted(container, counted);
            }
            message
        }
        // It logs as part of the request that found the container broken.
        .in_current_span());
        diagnosis
            .await
            .unwrap_or_else(|e| format!("the task container failed ({e})"))
    }

    /// The container's exit state, allowing Docker a moment to notice an exit that just broke
    /// a connection: its state lags the process by a few milliseconds, and the OOM flag can lag
    /// the exit itself.
    async fn exit_state_settled(&self, id: &str) -> Result<Option<ExitState>, EngineError> {
        let mut state = None;
        for _ in 0..10 {
            state = self.ctx.engine.exit_state(id).await?;
            match state {
                None => {}
                // Killed by SIGKILL without the OOM flag (yet): look once more shortly.
                Some(s) if s.code == 137 && !s.oom_killed => {}
                Some(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(state)
    }
}
