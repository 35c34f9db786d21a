//! Spare containers of recently used images: when a new task key of an image that ran
//! recently arrives, it takes a started spare of that image, resized by the engine to the
//! key's CPU, memory and swap (tens of milliseconds), instead of waiting for a fresh start.
//!
//! Owns the list of spares (ready containers that serve no key yet), which images have a
//! spare starting, and the reaper that removes a spare `idle_timeout` after it was started.
//! At most one spare per image; in all at most `spare_containers`, holding at most
//! `spare_memory_mb`. A spare is started only after a key of its image started (so there are
//! never spares of images the host has not run), with that key's limits, from free room only
//! (never evicting, never waiting, never while a start waits for room); it counts in the
//! budget like an idle container and is the first to be evicted. Claiming and resizing is
//! the starter's job (`Starter::claim_spare`), which holds the room of the larger of the two
//! sizes while the engine resizes, so the budget is never below what runs. Only keys whose
//! limits the engine can change in place take this path: plain containers without GPUs or
//! SGX (device requests and micro-VM runtimes are not resized).
//! This module never touches the pool and removes spares only through [`Removals`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::context::Context;
use super::removals::Removals;
use crate::pool::Container;
use crate::resources::Demand;
use crate::task::TaskKey;

#[derive(Default)]
struct State {
    spares: Vec<Spare>,
    /// Images with a spare starting, and the memory of each.
    starting: HashMap<String, u64>,
    /// False while paused or stopping.
    disabled: bool,
}

struct Spare {
    container: Arc<Container>,
    started: Instant,
}

pub(super) struct Spares {
    ctx: Context,
    removals: Arc<Removals>,
    state: Mutex<State>,
    /// Wakes the reaper: a spare was added.
    added: Notify,
}

impl Spares {
    pub(super) fn new(ctx: Context, removals: Arc<Removals>) -> Spares {
        Spares {
            ctx,
            removals,
            state: Mutex::new(State::default()),
            added: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section below can panic half-way.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a container of `key` started: whether a spare of its image should be started
    /// (none there or starting, within the count and memory bounds). If so, the image is
    /// marked as starting one; the caller must call [`start_ended`](Self::start_ended).
    pub(super) fn wants(&self, key: &TaskKey) -> bool {
        let config = self.ctx.config();
        if !key.is_plain_container() || config.spare_containers == 0 {
            return false;
        }
        let mut state = self.lock();
        let image = &key.image;
        let count = state.spares.len() + state.starting.len();
        let mem: u64 = state
            .spares
            .iter()
            .map(|s| s.container.key.demand.mem_mb)
            .sum::<u64>()
            + state.starting.values().sum::<u64>();
        let wanted = !state.disabled
            && count < config.spare_containers as usize
            && mem + key.demand.mem_mb <= config.spare_memory_mb
            && !state.starting.contains_key(image)
            && !state.spares.iter().any(|s| &s.container.key.image == image);
        if wanted {
            state.starting.insert(image.clone(), key.demand.mem_mb);
        }
        wanted
    }

    /// The spare start of `key` (see [`wants`](Self::wants)) ended.
    pub(super) fn start_ended(&self, key: &TaskKey) {
        self.lock().starting.remove(&key.image);
    }

    /// Adds a started spare; gives it back if spares are off now (pause, stop).
    pub(super) fn put(&self, container: Arc<Container>) -> Result<(), Arc<Container>> {
        let mut state = self.lock();
        if state.disabled {
            return Err(container);
        }
        tracing::info!(container = %container.id, image = %container.key.image, "spare container ready");
        state.spares.push(Spare {
            container,
            started: Instant::now(),
        });
        drop(state);
        self.added.notify_one();
        Ok(())
    }

    /// Gives a spare back that could not be resized now (no free room to grow).
    pub(super) fn put_back(&self, container: Arc<Container>, started: Instant) {
        let mut state = self.lock();
        if state.disabled {
            drop(state);
            self.removals.retire_later(container);
            return;
        }
        state.spares.push(Spare { container, started });
    }

    /// Takes the spare of `image`, if there is one, with when it was started.
    pub(super) fn take(&self, image: &str) -> Option<(Arc<Container>, Instant)> {
        let mut state = self.lock();
        let at = state
            .spares
            .iter()
            .position(|s| s.container.key.image == image)?;
        let spare = state.spares.swap_remove(at);
        Some((spare.container, spare.started))
    }

    /// Takes the oldest spare (eviction: spares go first).
    pub(super) fn take_oldest(&self) -> Option<Arc<Container>> {
        let mut state = self.lock();
        let at = (0..state.spares.len()).min_by_key(|&i| state.spares[i].started)?;
        Some(state.spares.swap_remove(at).container)
    }

    /// What the spares hold (eviction could free it).
    pub(super) fn demand(&self) -> Demand {
        self.lock().spares.iter().fold(
            Demand {
                milli_cpu: 0,
                mem_mb: 0,
            },
            |d, s| Demand {
                milli_cpu: d.milli_cpu + s.container.key.demand.milli_cpu,
                mem_mb: d.mem_mb + s.container.key.demand.mem_mb,
            },
        )
    }

    pub(super) fn count(&self) -> usize {
        self.lock().spares.len()
    }

    /// The engine says container `id` stopped or left: if it is a spare, it is removed.
    pub(super) fn forget(&self, id: &str) -> bool {
        let mut state = self.lock();
        let Some(at) = state.spares.iter().position(|s| s.container.id == id) else {
            return false;
        };
        let spare = state.spares.swap_remove(at);
        drop(state);
        tracing::warn!(container = %id, "spare container stopped outside the executor; dropping it");
        self.removals.retire_later(spare.container);
        true
    }

    /// Ids of the spares now (reconciliation candidates).
    pub(super) fn ids(&self) -> HashSet<String> {
        self.lock()
            .spares
            .iter()
            .map(|s| s.container.id.clone())
            .collect()
    }

    /// Pause and stop: no spare is added any more; every spare is handed out for removal.
    pub(super) fn disable_and_take_all(&self) -> Vec<Arc<Container>> {
        let mut state = self.lock();
        state.disabled = true;
        state.spares.drain(..).map(|s| s.container).collect()
    }

    /// Unpause.
    pub(super) fn enable(&self) {
        self.lock().disabled = false;
    }

    /// The reaper: removes each spare `idle_timeout` after it was started (its image is no
    /// longer recently used). Sleeps until the next expiry or a new spare.
    pub(super) async fn reap(self: Arc<Self>) {
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            let idle_timeout = self.ctx.config().idle_timeout;
            let now = Instant::now();
            let (expired, next) = {
                let mut state = self.lock();
                let (expired, kept): (Vec<Spare>, Vec<Spare>) = state
                    .spares
                    .drain(..)
                    .partition(|s| s.started + idle_timeout <= now);
                state.spares = kept;
                let next = state.spares.iter().map(|s| s.started + idle_timeout).min();
                (expired, next)
            };
            for spare in expired {
                tracing::info!(container = %spare.container.id, image = %spare.container.key.image, "removing unused spare container");
                self.removals.retire_later(spare.container);
            }
            let sleep = super::sleep_until_or_forever(next);
            tokio::select! {
                _ = self.ctx.closing.cancelled() => return,
                _ = added => {}
                _ = sleep => {}
            }
        }
    }
}
