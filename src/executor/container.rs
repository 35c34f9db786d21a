//! A task container as the executor holds it: its connections, its reservation, the
//! sandbox it joined, and its use by requests ([`Lease`]).
//!
//! Owns a container's in-flight count and last use, and hands its reservation and sandbox
//! back when it is gone. The pool ([`super::pool`]) holds containers by key and is the only
//! one that leases them; removals (`super::removals`) take them down. It must not call the
//! engine or lock the pool.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::sandboxes::SandboxLease;
use crate::resources::Reservation;
use crate::task::TaskKey;
use crate::task_client::{TaskAddr, TaskCall};

/// A ready task container. Holding its [`Reservation`], it keeps its resources reserved
/// until the last reference to it is gone (after the engine removed it), or until its
/// processes are known dead ([`Container::release_reservation`], eviction).
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub key: TaskKey,
    /// Connections to the task; they close when the container is dropped.
    pub client: Arc<dyn TaskCall>,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` at the last lease's end (or readiness).
    last_used_ms: AtomicU64,
    epoch: Instant,
    /// The pool's signal that a container became idle (shared by all its containers).
    idle: Arc<Notify>,
    /// Kept ready ahead of demand: never reaped when idle, evicted first under pressure.
    pub prewarmed: bool,
    reservation: std::sync::Mutex<Option<Reservation>>,
    /// The pooled network sandbox it joined, if any: lent until the container is gone.
    sandbox: Option<SandboxLease>,
}

impl Container {
    pub fn new(
        id: String,
        key: TaskKey,
        client: Arc<dyn TaskCall>,
        reservation: Reservation,
        prewarmed: bool,
        idle: Arc<Notify>,
        sandbox: Option<SandboxLease>,
    ) -> Container {
        Container {
            id,
            key,
            client,
            in_flight: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            idle,
            prewarmed,
            reservation: std::sync::Mutex::new(Some(reservation)),
            sandbox,
        }
    }

    /// Takes the container's reservation out (to resize it); the caller owns the room
    /// until it puts it back ([`Container::rekeyed`]) or the container is gone.
    pub fn take_reservation(&self) -> Option<Reservation> {
        self.reservation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Puts a reservation (back) into the container.
    pub fn put_reservation(&self, reservation: Reservation) {
        *self.reservation.lock().unwrap_or_else(|e| e.into_inner()) = Some(reservation);
    }

    /// The same engine container (connections and sandbox included) serving `key` with
    /// `reservation`: a spare whose limits the engine changed to the key's.
    pub fn rekeyed(self, key: TaskKey, reservation: Reservation, prewarmed: bool) -> Container {
        self.put_reservation(reservation);
        Container {
            key,
            prewarmed,
            ..self
        }
    }

    /// Before the task is killed: when it runs in a pooled sandbox, closes the executor's
    /// connections to it, so that the executor's side closes them first. The task's side
    /// then does not linger in `TIME_WAIT` in the namespace, where it would keep a next task
    /// that binds port 8080 without `SO_REUSEADDR` from starting. True if it closed any.
    pub fn close_connections(&self) -> bool {
        if self.sandbox.is_some() {
            self.client.close();
            true
        } else {
            false
        }
    }

    /// The engine removed this container: the sandbox it joined may serve another task.
    pub fn removed(&self) {
        if let Some(sandbox) = &self.sandbox {
            sandbox.mark_reusable();
        }
    }

    /// Gives the container's resources back before it is removed. Only for a container out
    /// of the pool whose processes the engine killed: it holds no resources any more and
    /// never runs again.
    pub fn release_reservation(&self) {
        let released = self
            .reservation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(released);
    }

    pub fn addr(&self) -> &TaskAddr {
        self.client.addr()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Begins one request's use of the container (the pool leases it).
    pub(super) fn lease(container: &Arc<Container>) -> Lease {
        container.in_flight.fetch_add(1, Ordering::AcqRel);
        Lease {
            container: Arc::clone(container),
        }
    }

    /// Marks the container used now.
    pub(super) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.store(ms, Ordering::Release);
    }

    /// When this container was last used.
    pub fn last_used(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_used_ms.load(Ordering::Acquire))
    }

    /// Waits until no request is in flight, at most `limit`. True when drained.
    pub async fn wait_drained(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let drained = self.idle.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

/// One request's use of a container. Dropping it ends the use.
#[derive(Debug)]
pub struct Lease {
    container: Arc<Container>,
}

impl Lease {
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.container.touch();
        if self.container.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Wakes cold starts waiting for room (it can be evicted now) and drains.
            self.container.idle.notify_waiters();
        }
    }
}
