//! How the requests waiting for a cold start learn how it ended: a [`StartOutcome`] sent
//! once by the start's ticket (`super::pool::StartTicket`) to every waiter, in the order
//! they began to wait.
//!
//! Owns the channel only; what an outcome means for a request is `super::request`'s
//! business. It must not touch the pool.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::error::ExecError;

/// How a cold start ended, as seen by the requests waiting for it.
#[derive(Debug, Clone)]
pub enum StartOutcome {
    Pending,
    Ready,
    /// Why the start failed, shared by every request that waited for it.
    Failed(Arc<ExecError>),
    /// Given up without a verdict (a prewarm attempt): waiters look again themselves.
    Abandoned,
    /// The start was dropped half-way (its task ended without a verdict).
    Cancelled,
    /// The container became ready after the pool was emptied (pause, stop).
    Refused,
}

/// One start's outcome, as the requests waiting for it see it: a watch channel whose
/// waiters wake in the order they began to wait. (`tokio::sync::watch` parks each waiter on
/// one of eight notifiers drawn at random: waiters woke in a random order, and so a
/// simulated run depended on the draw.)
#[derive(Clone)]
pub struct OutcomeReceiver(Arc<OutcomeShared>);

/// The sending half, held by the [`StartTicket`]; dropping it closes the channel.
pub(super) struct OutcomeSender(Arc<OutcomeShared>);

/// The channel has closed with no outcome the waiter wanted.
#[derive(Debug)]
pub struct OutcomeClosed;

struct OutcomeShared {
    /// The outcome now, and whether the sender is gone.
    state: Mutex<(StartOutcome, bool)>,
    changed: Notify,
}

pub(super) fn outcome_channel() -> (OutcomeSender, OutcomeReceiver) {
    let shared = Arc::new(OutcomeShared {
        state: Mutex::new((StartOutcome::Pending, false)),
        changed: Notify::new(),
    });
    (OutcomeSender(Arc::clone(&shared)), OutcomeReceiver(shared))
}

impl OutcomeShared {
    fn lock(&self) -> MutexGuard<'_, (StartOutcome, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl OutcomeSender {
    pub(super) fn send(&self, outcome: StartOutcome) {
        self.0.lock().0 = outcome;
        self.0.changed.notify_waiters();
    }
}

impl Drop for OutcomeSender {
    fn drop(&mut self) {
        self.0.lock().1 = true;
        self.0.changed.notify_waiters();
    }
}

impl OutcomeReceiver {
    /// The outcome now.
    #[cfg(test)]
    pub fn current(&self) -> StartOutcome {
        self.0.lock().0.clone()
    }

    /// Waits until the outcome is one that `wanted` accepts (at once if it is now), and
    /// returns it; `Err` when the sender is gone without one.
    pub async fn wait_for(
        &mut self,
        wanted: impl Fn(&StartOutcome) -> bool,
    ) -> Result<StartOutcome, OutcomeClosed> {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.0.lock();
                if wanted(&state.0) {
                    return Ok(state.0.clone());
                }
                if state.1 {
                    return Err(OutcomeClosed);
                }
            }
            changed.await;
        }
    }
}
