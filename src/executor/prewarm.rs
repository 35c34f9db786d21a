//! Prewarming: keeps the configured task keys started and ready ahead of demand, and (with
//! `keep_alive: adaptive`) starts the keys whose next request the policy predicts, at their
//! pre-warm time.
//!
//! A prewarmed container is counted against the budget like any other, is never reaped for
//! idleness, and is the first task container evicted under pressure (spares go before it).
//! A predicted pre-warm is counted the same way, and is reaped when its keep-alive window
//! passes unused. The keeper takes only room that is free or held by spare containers (it
//! evicts nothing else and never waits), yields while requests wait for room, and wakes on
//! budget releases and at the next predicted pre-warm time, not on a polling timer.
//!
//! Owns only when each prewarm key last failed. Its starts run through the [`Starter`] (so
//! pause cancels and waits for them) and pass the same [`Admission`] as a request; room it
//! takes directly from the budget, only if it is free now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::adaptive::Adaptive;
use super::admission::Admission;
use super::container::Container;
use super::context::Context;
use super::error::ExecError;
use super::pool::StartTicket;
use super::pulls::Pulls;
use super::removals::Removals;
use super::room::Room;
use super::start::{Phases, Starter};
use crate::task::TaskKey;

/// After a prewarm start fails for a reason other than room, wait this long before retrying.
const FAILURE_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct Prewarmer {
    ctx: Context,
    room: Arc<Room>,
    starter: Arc<Starter>,
    admission: Arc<Admission>,
    pulls: Arc<Pulls>,
    removals: Arc<Removals>,
    /// When each prewarm key last failed to start for a reason other than room.
    failures: Mutex<HashMap<TaskKey, Instant>>,
    /// Which keys to start ahead of their predicted request (none under `keep_alive:
    /// fixed`).
    adaptive: Arc<Adaptive>,
}

/// Why a container is prewarmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A `prewarm:` key of the config.
    Configured,
    /// The adaptive keep-alive predicts a request for the key.
    Predicted,
}

impl Prewarmer {
    pub(super) fn new(
        ctx: Context,
        room: Arc<Room>,
        starter: Arc<Starter>,
        admission: Arc<Admission>,
        pulls: Arc<Pulls>,
        removals: Arc<Removals>,
        adaptive: Arc<Adaptive>,
    ) -> Prewarmer {
        Prewarmer {
            ctx,
            room,
            starter,
            admission,
            pulls,
            removals,
            failures: Mutex::new(HashMap::new()),
            adaptive,
        }
    }

    pub(super) async fn keep_prewarmed(self: Arc<Self>) {
        loop {
            let released = self.room.budget().released();
            let woken = self.room.prewarm_woken();
            tokio::pin!(released, woken);
            released.as_mut().enable();
            woken.as_mut().enable();
            // While paused or while starts wait for room, nothing starts: unpause and the
            // end of the wait wake the keeper, and due keys are started then.
            let mut next_due = None;
            if !self.starter.is_paused() && self.room.waiting_for_room() == 0 {
                self.prewarm_missing();
                next_due = self.prewarm_predicted();
            }
            let backoff = tokio::time::sleep(FAILURE_BACKOFF);
            let due = super::background::sleep_until_or_forever(next_due);
            tokio::select! {
                biased; // In the order written, not at random: a simulated run replays.
                _ = self.ctx.closing.cancelled() => return,
                _ = released => {}
                _ = woken => {}
                _ = due => {}
                // Only matters after a failure: retry its key then.
                _ = backoff, if self.has_failures() => {}
            }
        }
    }

    /// Starts the keys whose predicted pre-warm time has come (each once per idle period);
    /// returns when the next one comes.
    fn prewarm_predicted(self: &Arc<Self>) -> Option<Instant> {
        let (keys, next) = self.adaptive.take_due(self.ctx.config().idle_timeout);
        for key in keys {
            // A key the pool has (a configured prewarm, a start in progress) needs none.
            if let Some(ticket) = self.room.pool().claim_if_absent(&key) {
                self.starter
                    .spawn_start(Arc::clone(self).prewarm_start(ticket, Why::Predicted));
            }
        }
        next
    }

    fn has_failures(&self) -> bool {
        !self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Claims every prewarm key the pool lacks and starts it in the background.
    fn prewarm_missing(self: &Arc<Self>) {
        let config = self.ctx.config();
        for entry in &config.prewarm {
            let failed_recently = self
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&entry.key)
                .is_some_and(|at| at.elapsed() < FAILURE_BACKOFF);
            if failed_recently {
                continue;
            }
            if let Some(ticket) = self.room.pool().claim_if_absent(&entry.key) {
                self.starter
                    .spawn_start(Arc::clone(self).prewarm_start(ticket, Why::Configured));
            }
        }
    }

    async fn prewarm_start(self: Arc<Self>, ticket: StartTicket, why: Why) {
        let key = ticket.key().clone();
        let cancel = self.starter.start_cancel();
        if self.starter.is_paused() {
            ticket.abandon();
            return;
        }
        // Pause and shutdown cancel `cancel`; the start then removes what it created.
        let started = self.prewarm_container(&key, &cancel).await;
        let failures = || self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match started {
            Ok(container) => {
                if why == Why::Predicted {
                    self.ctx.metrics.predicted_prewarms.inc();
                    tracing::info!(container = %container.id, key = %key, "task container pre-warmed for a predicted request");
                } else {
                    failures().remove(&key);
                    tracing::info!(container = %container.id, key = %key, "prewarmed task container ready");
                }
                // Nobody waits for it: its first lease ends at once, leaving it idle.
                if let Err(container) = ticket.ready(container) {
                    self.removals.retire(container, Duration::ZERO).await;
                }
            }
            // No free room right now: the next release wakes the keeper again. A request
            // that came for the key meanwhile starts its own container (abandon, not fail).
            Err(None) => {
                if why == Why::Predicted {
                    self.adaptive.unclaim(&key);
                }
                ticket.abandon();
            }
            // A predicted pre-warm is not retried: the key's next request starts its
            // container as usual. One cut short by pause or stop is no failure.
            Err(Some(ExecError::Paused | ExecError::ShuttingDown)) if why == Why::Predicted => {
                ticket.abandon();
            }
            Err(Some(e)) if why == Why::Predicted => {
                tracing::warn!(key = %key, error = %e, "pre-warming a predicted request failed");
                ticket.abandon();
            }
            Err(Some(e)) => {
                tracing::warn!(key = %key, error = %e, "prewarming failed; retrying in 30s");
                failures().insert(key, Instant::now());
                ticket.abandon();
                // The keeper arms its retry timer only while a failure is on record: wake it
                // so it does (else only a budget release would bring the retry).
                self.room.wake_prewarm();
            }
        }
    }

    /// Starts the container of a prewarm key in room that is free now: `Err(None)` when there
    /// is none. The key passes the same admission checks as a request (runtime, SGX), so a
    /// prewarmed container is never weaker than what a request for it would get.
    async fn prewarm_container(
        &self,
        key: &TaskKey,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Container>, Option<ExecError>> {
        self.starter.check_open().map_err(Some)?;
        let config = self.admission.admit(key).map_err(Some)?;
        // Free room, or room held by spares (prewarm keys come first).
        if !self.room.room_from_spares(key.demand).await {
            return Err(None);
        }
        let mut phases = Phases::new(&self.ctx.metrics);
        tokio::select! {
            biased; // In the order written, not at random: a simulated run replays.
            pulled = self.pulls.ensure_image(&key.image, config.pull_timeout) => pulled.map_err(|e| Some(e.into()))?,
            _ = cancel.cancelled() => return Err(Some(ExecError::Paused)),
        }
        phases.lap("image");
        // Reserved only after the image is here: a pull never holds room. A request that
        // began waiting for room during the pull goes first.
        if self.room.waiting_for_room() > 0 {
            return Err(None);
        }
        let reservation = self.room.budget().try_reserve(key.demand).ok_or(None)?;
        self.starter
            .launch(key, &config, reservation, phases, cancel)
            .await
            .map_err(Some)
    }
}
