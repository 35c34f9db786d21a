//! Priority of requests' starts over the executor's own refills (sandbox holders, spares).
//!
//! On a small host the refills' container starts take the CPU a request's start needs
//! (Docker's create and start are CPU work in dockerd, containerd and runc, not in the
//! container). So a refill waits for its turn: one refill at a time, begun only when no
//! request start is in flight and none has ended for [`QUIET`]. A refill already running
//! when a request arrives is not stopped; it is one at most. With
//! `refills_wait_for_requests: false` a refill starts at once (several at a time).
//!
//! Owns the count of request starts in flight and the single refill turn; knows nothing of
//! what is started.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// How long after the last request start ended a refill may begin: the next request of a
/// burst usually arrives sooner.
pub(super) const QUIET: Duration = Duration::from_millis(100);

pub(super) struct Refills {
    in_flight: AtomicUsize,
    /// When the last request start ended.
    last_end: Mutex<Option<Instant>>,
    /// Woken when the last request start in flight ends.
    idle: Notify,
    turn: Semaphore,
    /// False: refills take no turn.
    wait: bool,
}

impl Default for Refills {
    fn default() -> Self {
        Refills::new(true)
    }
}

/// A request start in flight (see [`Refills::request_start`]); ends when dropped.
pub(super) struct RequestStart<'a>(&'a Refills);

impl Drop for RequestStart<'_> {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Refills {
    /// `wait`: refills wait for their turn (`refills_wait_for_requests`).
    pub(super) fn new(wait: bool) -> Refills {
        Refills {
            in_flight: AtomicUsize::new(0),
            last_end: Mutex::new(None),
            idle: Notify::new(),
            turn: Semaphore::new(1),
            wait,
        }
    }

    /// A request's start begins; refills wait until it (and every other) ended.
    pub(super) fn request_start(&self) -> RequestStart<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestStart(self)
    }

    /// Request starts in flight now.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits for the refill turn: no other refill running, no request start in flight and
    /// none ended within [`QUIET`]. Holding the permit is the turn; `None` (at once) when
    /// refills take no turn.
    pub(super) async fn turn(&self) -> Option<SemaphorePermit<'_>> {
        if !self.wait {
            return None;
        }
        let permit = self
            .turn
            .acquire()
            .await
            .expect("the refill semaphore is never closed");
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight() > 0 {
                idle.await;
                continue;
            }
            let last_end = *self.last_end.lock().unwrap_or_else(|e| e.into_inner());
            match last_end.map(|t| t + QUIET) {
                Some(quiet_at) if quiet_at > Instant::now() => {
                    tokio::time::sleep_until(quiet_at).await
                }
                _ => return Some(permit),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_refill_waits_until_request_starts_ended_and_were_quiet() {
        let refills = Refills::default();
        let started = Instant::now();
        let first = refills.request_start();
        let second = refills.request_start();
        let turn = async {
            let _permit = refills.turn().await;
            started.elapsed()
        };
        let ends = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(first);
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(second);
        };
        let (waited, ()) = tokio::join!(turn, ends);
        assert_eq!(waited, Duration::from_millis(500) + QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn one_refill_at_a_time() {
        let refills = Refills::default();
        let permit = refills.turn().await;
        let second = tokio::time::timeout(Duration::from_secs(5), refills.turn()).await;
        assert!(
            second.is_err(),
            "a second refill got a turn beside the first"
        );
        drop(permit);
        let _again = refills.turn().await;
    }

    #[tokio::test(start_paused = true)]
    async fn switched_off_a_refill_goes_at_once() {
        let refills = Refills::new(false);
        let _start = refills.request_start();
        let first = refills.turn().await;
        let second = tokio::time::timeout(Duration::ZERO, refills.turn()).await;
        assert!(first.is_none() && second.is_ok());
    }
}
