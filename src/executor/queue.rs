//! The order in which starts waiting for room get it: first come, first served.
//!
//! Owns only the order. A start joins the queue when it asks for room and leaves it when it
//! got room or gave up (its [`Place`] dropped). While an earlier start waits for CPU or
//! memory, a later one takes none, even if it would fit: otherwise a stream of small starts,
//! each fitting the room the one before freed, could starve a large one forever. A start
//! that waits only for GPUs (its CPU and memory would fit) holds nobody up.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Default)]
pub(super) struct RoomQueue {
    inner: Mutex<Inner>,
    /// Woken when a place leaves or stops holding others up.
    changed: Notify,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Waiting starts by arrival, each with whether it holds later ones up.
    waiting: BTreeMap<u64, bool>,
}

/// One start's place in the queue; dropping it leaves the queue.
pub(super) struct Place<'a> {
    queue: &'a RoomQueue,
    ticket: u64,
}

impl RoomQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the queue at its end.
    pub(super) fn join(&self) -> Place<'_> {
        let mut inner = self.lock();
        inner.next += 1;
        let ticket = inner.next;
        inner.waiting.insert(ticket, true);
        Place {
            queue: self,
            ticket,
        }
    }

    /// A future that completes when the queue next changes. Enable it before looking.
    pub(super) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

impl Place<'_> {
    /// Whether an earlier start still waits for CPU or memory: then this one takes no room.
    pub(super) fn behind_someone(&self) -> bool {
        self.queue
            .lock()
            .waiting
            .range(..self.ticket)
            .any(|(_, holds_up)| *holds_up)
    }

    /// Says whether this start holds later ones up (it waits for CPU or memory), or not
    /// (it waits only for GPUs).
    pub(super) fn holds_up(&self, holds_up: bool) {
        let was = self
            .queue
            .lock()
            .waiting
            .insert(self.ticket, holds_up)
            .unwrap_or(true);
        if was && !holds_up {
            self.queue.changed.notify_waiters();
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.lock().waiting.remove(&self.ticket);
        self.queue.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_starts_wait_behind_earlier_ones_that_wait_for_room() {
        let queue = RoomQueue::default();
        let first = queue.join();
        let second = queue.join();
        assert!(!first.behind_someone());
        assert!(second.behind_someone());
        // Waiting only for GPUs, the first holds nobody up.
        first.holds_up(false);
        assert!(!second.behind_someone());
        first.holds_up(true);
        assert!(second.behind_someone());
        drop(first);
        assert!(!second.behind_someone());
        let third = queue.join();
        assert!(third.behind_someone());
        drop(second);
        assert!(!third.behind_someone());
    }
}
