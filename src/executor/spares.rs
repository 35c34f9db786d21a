//! Spare containers of recently used images: when a new task key of an image that ran
//! recently arrives, it takes a started spare of that image, grown by the engine to the key's
//! CPU, memory and swap (tens of milliseconds), instead of waiting for a fresh start.
//!
//! Owns the list of spares (ready containers that serve no key yet), which images have a
//! spare starting, the limits of each image's recent keys, and the reaper that removes a
//! spare `idle_timeout` after it was started. At most one spare per image; in all at most
//! `spare_containers`, holding at most `spare_memory_mb`: at those bounds, the ready spare
//! of the image used least recently makes way for one of the image that just ran. A spare
//! is started only after a key of its image started (so there are never spares of images
//! the host has not run), from free room only (never evicting, never waiting, never while a
//! start waits for room);
//! it counts in the budget as the executor's own stock (reported apart from tasks in
//! /stats), and is the first to be evicted.
//!
//! **A spare never shows a task more than its key's limits.** A task reads its limits when
//! its process starts, which for a spare is before any key claims it: runtimes that size
//! themselves once (the JVM, Node, Go's automemlimit, ML batch sizes) trust that first
//! figure. So a spare is started at the smallest CPU and memory among its image's keys of
//! the last `idle_timeout`, and serves only a key whose limits are at least those: claiming
//! only ever grows it. A spare above a newly seen smaller key is replaced by one at the new
//! floor. Claiming and resizing is the starter's job (`Starter::claim_spare`), which holds
//! the room of the key while the engine resizes. Only keys whose limits the engine can
//! change in place take this path: plain containers without GPUs or SGX (device requests
//! and micro-VM runtimes are not resized).
//! This module never touches the pool and removes spares only through [`Removals`].

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::container::Container;
use super::context::Context;
use super::removals::Removals;
use crate::resources::Demand;
use crate::task::TaskKey;

#[derive(Default)]
struct State {
    spares: Vec<Spare>,
    /// Images with a spare starting: its limits, and whether its room is reserved yet.
    starting: HashMap<String, Starting>,
    /// Per image, the limits of its keys started lately, with when each was last seen.
    recent: HashMap<String, Vec<(Demand, Instant)>>,
    /// False while paused or stopping.
    disabled: bool,
}

struct Starting {
    demand: Demand,
    reserved: bool,
}

/// Distinct limits remembered per image (the oldest is forgotten first).
const RECENT_LIMITS: usize = 8;

/// Whether `small` fits in `large` in every dimension.
fn fits(small: Demand, large: Demand) -> bool {
    small.milli_cpu <= large.milli_cpu && small.mem_mb <= large.mem_mb
}

/// What the spares hold in the budget, and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpareStock {
    /// Ready spares.
    pub count: usize,
    /// The room reserved by ready spares and by spares starting.
    pub demand: Demand,
}

struct Spare {
    container: Arc<Container>,
    started: Instant,
}

impl State {
    /// The memory of the ready spares and of those starting.
    fn held_mem_mb(&self) -> u64 {
        let ready = self.spares.iter().map(|s| s.container.key.demand.mem_mb);
        let starting = self.starting.values().map(|s| s.demand.mem_mb);
        ready.chain(starting).sum()
    }

    /// The ready spare whose image had a key started least recently (a spare's own start
    /// stands in for an image no longer remembered).
    fn least_recently_used(&self) -> Option<usize> {
        let last_used = |spare: &Spare| {
            self.recent
                .get(&spare.container.key.image)
                .and_then(|seen| seen.iter().map(|(_, at)| *at).max())
                .unwrap_or(spare.started)
        };
        (0..self.spares.len()).min_by_key(|&i| last_used(&self.spares[i]))
    }

    /// Remembers that a key of `key`'s image started with its limits; returns the image's
    /// floor: the smallest CPU and the smallest memory among its keys seen within `window`.
    fn record(&mut self, key: &TaskKey, now: Instant, window: std::time::Duration) -> Demand {
        let seen = self.recent.entry(key.image.clone()).or_default();
        seen.retain(|(d, at)| *d != key.demand && now.saturating_duration_since(*at) < window);
        seen.push((key.demand, now));
        if seen.len() > RECENT_LIMITS {
            seen.remove(0);
        }
        let floor = Demand {
            milli_cpu: seen.iter().map(|(d, _)| d.milli_cpu).min().unwrap_or(0),
            mem_mb: seen.iter().map(|(d, _)| d.mem_mb).min().unwrap_or(0),
        };
        // Images whose keys were all seen long ago are forgotten.
        self.recent.retain(|_, seen| {
            seen.iter()
                .any(|(_, at)| now.saturating_duration_since(*at) < window)
        });
        floor
    }
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

    /// After a container of `key` started: records its limits, and says which spare of its
    /// image should be started, if one should (none there or starting at the image's
    /// floor, within the count and memory bounds): the key of the spare, with the smallest
    /// limits of the image's recent keys. A spare of the image above that floor is removed.
    /// If one is wanted, the image is marked as starting one; the caller must call
    /// [`start_ended`](Self::start_ended).
    pub(super) fn wants(&self, key: &TaskKey) -> Option<TaskKey> {
        let config = self.ctx.config();
        if !key.is_plain_container() || config.spare_containers == 0 {
            return None;
        }
        let now = Instant::now();
        let mut state = self.lock();
        let floor = state.record(key, now, config.idle_timeout);
        let image = &key.image;
        if let Some(at) = state
            .spares
            .iter()
            .position(|s| &s.container.key.image == image && !fits(s.container.key.demand, floor))
        {
            let above = state.spares.swap_remove(at).container;
            tracing::info!(container = %above.id, image = %image, "removing a spare above the limits of a newer key of its image");
            self.removals.retire_later(above);
        }
        let has_one = state.starting.contains_key(image)
            || state.spares.iter().any(|s| &s.container.key.image == image);
        if state.disabled || has_one || floor.mem_mb > config.spare_memory_mb {
            return None;
        }
        // The spares are for the images used most recently: at the bounds, the spares of the
        // images used least recently make way (spares starting are left to finish).
        loop {
            let count = state.spares.len() + state.starting.len();
            let mem = state.held_mem_mb();
            if count < config.spare_containers as usize
                && mem + floor.mem_mb <= config.spare_memory_mb
            {
                break;
            }
            let at = state.least_recently_used()?;
            let old = state.spares.swap_remove(at).container;
            tracing::info!(container = %old.id, image = %old.key.image, for_image = %image, "replacing the spare of an image used less recently");
            self.removals.retire_later(old);
        }
        state.starting.insert(
            image.clone(),
            Starting {
                demand: floor,
                reserved: false,
            },
        );
        Some(TaskKey {
            demand: floor,
            ..key.clone()
        })
    }

    /// The spare of `key`'s image being started now holds its room in the budget.
    pub(super) fn start_reserved(&self, key: &TaskKey) {
        if let Some(starting) = self.lock().starting.get_mut(&key.image) {
            starting.reserved = true;
        }
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
        state.starting.remove(&container.key.image);
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

    /// Takes the spare of `key`'s image, if there is one within `key`'s limits (claiming
    /// may only grow it), with when it was started.
    pub(super) fn take_fitting(&self, key: &TaskKey) -> Option<(Arc<Container>, Instant)> {
        let mut state = self.lock();
        let at = state.spares.iter().position(|s| {
            s.container.key.image == key.image && fits(s.container.key.demand, key.demand)
        })?;
        let spare = state.spares.swap_remove(at);
        Some((spare.container, spare.started))
    }

    /// Takes the oldest spare (eviction: spares go first).
    pub(super) fn take_oldest(&self) -> Option<Arc<Container>> {
        let mut state = self.lock();
        let at = (0..state.spares.len()).min_by_key(|&i| state.spares[i].started)?;
        Some(state.spares.swap_remove(at).container)
    }

    /// What the ready spares hold (eviction could free it).
    pub(super) fn demand(&self) -> Demand {
        self.lock()
            .spares
            .iter()
            .map(|s| s.container.key.demand)
            .sum()
    }

    pub(super) fn count(&self) -> usize {
        self.lock().spares.len()
    }

    /// The spares' stock: ready ones, and the room of those starting too.
    pub(super) fn stock(&self) -> SpareStock {
        let state = self.lock();
        let ready = state.spares.iter().map(|s| s.container.key.demand);
        let starting = state
            .starting
            .values()
            .filter(|s| s.reserved)
            .map(|s| s.demand);
        SpareStock {
            count: state.spares.len(),
            demand: ready.chain(starting).sum(),
        }
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

    /// The images of the spares now, ready or starting.
    pub(super) fn images(&self) -> BTreeSet<String> {
        let state = self.lock();
        state
            .spares
            .iter()
            .map(|s| s.container.key.image.clone())
            .chain(state.starting.keys().cloned())
            .collect()
    }

    /// Ids of the spares now (reconciliation candidates).
    pub(super) fn ids(&self) -> BTreeSet<String> {
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
            let sleep = super::background::sleep_until_or_forever(next);
            tokio::select! {
                biased; // In the order written, not at random: a simulated run replays.
                _ = self.ctx.closing.cancelled() => return,
                _ = added => {}
                _ = sleep => {}
            }
        }
    }
}
