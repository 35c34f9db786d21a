//! Pooled network sandboxes: small holder containers, started ahead on the task network,
//! whose network namespaces task containers join (`container:<holder>`), so a cold start
//! skips Docker's network setup, the largest part of a default start. The Kubernetes
//! pod-sandbox pattern, with the sandbox reused by the next task once its task is removed.
//!
//! Owns the free holders, which holders are in use, and the keeper that refills the pool
//! in the background (one holder at a time, up to `sandbox_pool`) and removes holders that
//! are discarded. A holder is handed out as a [`SandboxLease`] that the task's container
//! keeps; it goes back to the pool only when the engine removed that task container
//! ([`SandboxLease::mark_reusable`]), so a holder never serves two live tasks at once. A
//! holder whose state is unknown (its task failed to start, its removal failed or was
//! retried, the holder itself died) is removed instead. Holders are outside the task
//! budget: each is limited to `sandbox_memory_mb` and never runs. They carry the executor's
//! labels, so the stop sweep and the start-up orphan cleanup remove them like tasks.
//!
//! Only keys whose isolation is proven with a shared network namespace take this path:
//! plain containers without GPUs or SGX. Micro-VM runtimes, GPU and SGX keys keep their own
//! network. This module never touches the pool or the budget.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::context::Context;
use crate::engine::{
    HolderSpec, SandboxRef, LABEL_EXECUTOR, LABEL_INSTANCE, LABEL_ROLE, ROLE_SANDBOX,
};
use crate::task::TaskKey;

/// After the holder image or a holder fails to start, wait before trying again: 1 s,
/// doubling with each failure in a row, at most 30 s.
const FAILURE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long after a holder was taken the pool is refilled: the starts of a burst get the
/// CPU first, and holders whose tasks leave meanwhile are reused instead of replaced.
const REFILL_DELAY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    free: Vec<SandboxRef>,
    in_use: HashSet<String>,
    /// Holders in use that the engine reported gone: discarded when their task leaves.
    gone: HashSet<String>,
    /// Holders to remove (the keeper does).
    discard: Vec<String>,
    /// Holder starts in progress.
    starting: usize,
    /// False while paused or stopping: nothing is handed out or started, returns are removed.
    enabled: bool,
    /// When a holder was last taken.
    last_take: Option<tokio::time::Instant>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the keeper: a holder was taken or discarded, or the pool was re-enabled.
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section below can panic half-way.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A holder lent to one task container. Dropping it gives the holder back to the pool if
/// [`mark_reusable`](Self::mark_reusable) was called (the task container is gone), and has
/// it removed otherwise.
#[derive(Debug)]
pub struct SandboxLease {
    holder: SandboxRef,
    home: Arc<Shared>,
    reusable: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sandboxes")
    }
}

impl SandboxLease {
    pub fn holder(&self) -> &SandboxRef {
        &self.holder
    }

    /// The engine removed the task container that used this holder: its namespace holds
    /// no process and no socket of that task any more.
    pub fn mark_reusable(&self) {
        self.reusable.store(true, Ordering::Release);
    }
}

impl Drop for SandboxLease {
    fn drop(&mut self) {
        let mut state = self.home.lock();
        let id = &self.holder.id;
        state.in_use.remove(id);
        let gone = state.gone.remove(id);
        if self.reusable.load(Ordering::Acquire) && state.enabled && !gone {
            state.free.push(self.holder.clone());
        } else {
            state.discard.push(id.clone());
        }
        drop(state);
        self.home.wake.notify_one();
    }
}

pub(super) struct Sandboxes {
    ctx: Context,
    shared: Arc<Shared>,
    /// Holder starts in progress; pause and stop wait for them.
    starts: TaskTracker,
    /// The holder image is present (imported once).
    image_ready: AtomicBool,
}

/// The holder image's name: its tag is derived from the holder program, so a changed
/// program is imported afresh.
fn holder_image() -> Option<String> {
    let program = crate::engine::holder::holder_program()?;
    // FNV-1a: a stable fingerprint, not a security measure.
    let hash = program.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Some(format!("mecanywhere-executor-sandbox:{hash:016x}"))
}

impl Sandboxes {
    pub(super) fn new(ctx: Context) -> Sandboxes {
        Sandboxes {
            ctx,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    enabled: true,
                    ..State::default()
                }),
                wake: Notify::new(),
            }),
            starts: TaskTracker::new(),
            image_ready: AtomicBool::new(false),
        }
    }

    /// A free holder for a container of `key`, if the key may use one and one is free.
    pub(super) fn take(&self, key: &TaskKey) -> Option<SandboxLease> {
        if !key.is_plain_container() {
            return None;
        }
        let mut state = self.shared.lock();
        if !state.enabled {
            return None;
        }
        let holder = state.free.pop()?;
        state.in_use.insert(holder.id.clone());
        state.last_take = Some(tokio::time::Instant::now());
        drop(state);
        // Refill.
        self.shared.wake.notify_one();
        Some(SandboxLease {
            holder,
            home: Arc::clone(&self.shared),
            reusable: AtomicBool::new(false),
        })
    }

    /// Free holders and holders in use, for `/metrics`.
    pub(super) fn counts(&self) -> (usize, usize) {
        let state = self.shared.lock();
        (state.free.len(), state.in_use.len())
    }

    /// The engine says container `id` stopped or left: if it is a holder, it is dropped
    /// from the pool (free) or discarded when its task leaves (in use).
    pub(super) fn holder_gone(&self, id: &str) {
        let mut state = self.shared.lock();
        if let Some(at) = state.free.iter().position(|h| h.id == id) {
            tracing::warn!(container = %id, "sandbox holder stopped outside the executor; dropping it");
            state.free.swap_remove(at);
            state.discard.push(id.to_string());
            drop(state);
            self.shared.wake.notify_one();
        } else if state.in_use.contains(id) {
            tracing::warn!(container = %id, "sandbox holder stopped outside the executor while its task runs");
            state.gone.insert(id.to_string());
        }
    }

    /// Ids of the free holders now (reconciliation candidates).
    pub(super) fn free_ids(&self) -> HashSet<String> {
        self.shared
            .lock()
            .free
            .iter()
            .map(|h| h.id.clone())
            .collect()
    }

    /// Reconciliation: drops the free holders among `candidates` that are not `running`.
    pub(super) fn drop_unless_running(
        &self,
        candidates: &HashSet<String>,
        running: &HashSet<String>,
    ) {
        for id in candidates.difference(running) {
            self.holder_gone(id);
        }
    }

    /// Pause and stop, first half: nothing is handed out or started any more, and holders
    /// given back are discarded.
    pub(super) fn disable(&self) {
        self.shared.lock().enabled = false;
    }

    /// Pause and stop, second half: waits for holder starts in progress, and removes every
    /// free and discarded holder. Holders in use are removed after their task container.
    pub(super) async fn drain(&self) {
        self.starts.close();
        self.starts.wait().await;
        self.starts.reopen();
        let ids: Vec<String> = {
            let mut state = self.shared.lock();
            let free = std::mem::take(&mut state.free);
            let mut ids = std::mem::take(&mut state.discard);
            ids.extend(free.into_iter().map(|h| h.id));
            ids
        };
        self.remove_all(ids).await;
    }

    /// Unpause: the pool is refilled.
    pub(super) fn enable(&self) {
        self.shared.lock().enabled = true;
        self.shared.wake.notify_one();
    }

    /// Removes holders one at a time: in one run, dockerd 20.10 stopped answering for two
    /// minutes when eight holders were removed at once right after their tasks.
    async fn remove_all(&self, ids: Vec<String>) {
        for id in ids {
            match self.ctx.engine.remove(&id).await {
                Ok(()) => tracing::debug!(container = %id, "sandbox holder removed"),
                // The stop sweep (by label) removes it at the latest.
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "could not remove sandbox holder")
                }
            }
        }
    }

    fn holder_spec(&self, image: String) -> HolderSpec {
        let config = self.ctx.config();
        HolderSpec {
            image,
            labels: HashMap::from([
                (LABEL_EXECUTOR.to_string(), config.name.clone()),
                (LABEL_INSTANCE.to_string(), self.ctx.instance.to_string()),
                (LABEL_ROLE.to_string(), ROLE_SANDBOX.to_string()),
            ]),
            network: config.network.clone(),
            publish_port: config.publish_task_ports,
            memory_bytes: config.sandbox_memory_mb as i64 * 1024 * 1024,
        }
    }

    /// The keeper: removes discarded holders (and free ones beyond `sandbox_pool`) and keeps
    /// `sandbox_pool` holders free, one start at a time. Sleeps until woken (a holder taken, returned or discarded; unpause);
    /// after a failure, retries after a backoff.
    pub(super) async fn keep_filled(self: Arc<Self>) {
        let Some(image) = holder_image() else {
            if self.ctx.config().sandbox_pool > 0 {
                tracing::warn!(
                    arch = std::env::consts::ARCH,
                    "no sandbox holder program for this architecture: every task gets a network of its own"
                );
            }
            return;
        };
        let mut failed = false;
        let mut backoff_delay = FAILURE_BACKOFF_FIRST;
        loop {
            let woken = self.shared.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.ctx.closing.is_cancelled() {
                return;
            }
            let target = self.ctx.config().sandbox_pool as usize;
            let discard = {
                let mut state = self.shared.lock();
                // Holders given back beyond the pool's size (their tasks left after the
                // refill) go, oldest first: at most `sandbox_pool` are kept free.
                let surplus = state.free.len().saturating_sub(target);
                let trimmed: Vec<String> = state.free.drain(..surplus).map(|h| h.id).collect();
                let mut discard = std::mem::take(&mut state.discard);
                discard.extend(trimmed);
                discard
            };
            self.remove_all(discard).await;
            if target > 0 && !failed && !self.image_ready.load(Ordering::Acquire) {
                match self.ctx.engine.ensure_holder_image(&image).await {
                    Ok(()) => self.image_ready.store(true, Ordering::Release),
                    Err(e) => {
                        tracing::warn!(error = %e, "sandbox holder image unavailable; tasks get networks of their own until it is");
                        failed = true;
                    }
                }
            }
            let mut refill_at = None;
            if !failed && self.image_ready.load(Ordering::Acquire) {
                // Checked and spawned under the lock, so `drain` either waits for this start
                // or keeps it from beginning.
                let start = {
                    let mut state = self.shared.lock();
                    let wanted = state.enabled
                        && !self.ctx.closing.is_cancelled()
                        && state.free.len() + state.starting < target;
                    let now = tokio::time::Instant::now();
                    let due = state.last_take.map_or(now, |t| t + REFILL_DELAY);
                    if wanted && due > now {
                        refill_at = Some(due);
                    }
                    (wanted && due <= now).then(|| {
                        state.starting += 1;
                        let engine = Arc::clone(&self.ctx.engine);
                        let spec = self.holder_spec(image.clone());
                        self.starts
                            .spawn(async move { engine.start_holder(&spec).await })
                    })
                };
                if let Some(start) = start {
                    let result = start.await;
                    let mut state = self.shared.lock();
                    state.starting -= 1;
                    match result {
                        Ok(Ok(holder)) if state.enabled && state.free.len() < target => {
                            tracing::debug!(container = %holder.id, addr = %holder.addr, "sandbox holder ready");
                            state.free.push(holder);
                            backoff_delay = FAILURE_BACKOFF_FIRST;
                        }
                        Ok(Ok(holder)) => state.discard.push(holder.id),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not start a sandbox holder; retrying later");
                            failed = true;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "sandbox holder start ended abnormally");
                            failed = true;
                        }
                    }
                    continue;
                }
            }
            let wake_at = if failed {
                Some(tokio::time::Instant::now() + backoff_delay)
            } else {
                refill_at
            };
            let backoff = super::sleep_until_or_forever(wake_at);
            tokio::select! {
                _ = self.ctx.closing.cancelled() => return,
                _ = woken => {}
                _ = backoff => {
                    if failed {
                        backoff_delay = (backoff_delay * 2).min(FAILURE_BACKOFF_MAX);
                    }
                    failed = false;
                }
            }
        }
    }
}
