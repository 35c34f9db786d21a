//! Keeps the pool true to what really runs: follows the engine's stream of container exits
//! (a task killed or removed from outside, `docker rm -f`), and after every (re)connection to
//! the engine reconciles the pool with the containers that are running. A dropped container
//! leaves the pool at once, its budget is released, and the next request starts a fresh one.
//!
//! Owns no state but its loop. It only takes containers out of the pool (those the engine
//! says are gone) and hands them to [`Removals`]; it never starts, leases or reserves.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::context::Context;
use super::pool::Pool;
use super::removals::Removals;
use super::sandboxes::Sandboxes;
use super::spares::Spares;
use crate::engine::LABEL_INSTANCE;

/// Wait between attempts to reconnect to an unreachable engine.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

pub(super) struct Watcher {
    ctx: Context,
    pool: Arc<Pool>,
    removals: Arc<Removals>,
    sandboxes: Arc<Sandboxes>,
    spares: Arc<Spares>,
}

impl Watcher {
    pub(super) fn new(
        ctx: Context,
        pool: Arc<Pool>,
        removals: Arc<Removals>,
        sandboxes: Arc<Sandboxes>,
        spares: Arc<Spares>,
    ) -> Watcher {
        Watcher {
            ctx,
            pool,
            removals,
            sandboxes,
            spares,
        }
    }

    pub(super) async fn watch_containers(self: Arc<Self>) {
        let engine = &self.ctx.engine;
        let instance = &*self.ctx.instance;
        let mut connected = true;
        loop {
            let mut exits = engine.container_exits(LABEL_INSTANCE, instance);
            // Whatever happened while the stream was down, reconcile now. Only containers
            // ready before the engine is asked are candidates: one that becomes ready while
            // the answer travels is not in it, yet runs.
            let candidates = self.pool.ready_ids();
            let free_holders = self.sandboxes.free_ids();
            let spares = self.spares.ids();
            match engine.running_labelled(LABEL_INSTANCE, instance).await {
                Ok(running) => {
                    if !connected {
                        tracing::info!("container engine reachable again");
                        connected = true;
                    }
                    let running: BTreeSet<String> = running.into_iter().collect();
                    for container in self.pool.take_unless_running(&candidates, &running) {
                        tracing::warn!(container = %container.id, key = %container.key, "task container is gone; dropping it from the pool");
                        self.removals.retire_later(container);
                    }
                    self.sandboxes.drop_unless_running(&free_holders, &running);
                    for id in spares.difference(&running) {
                        self.spares.forget(id);
                    }
                    loop {
                        tokio::select! {
                            biased; // In the order written, not at random: a simulated run replays.
                            _ = self.ctx.closing.cancelled() => return,
                            event = exits.next() => match event {
                                Some(Ok(id)) => self.forget(&id).await,
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "lost the engine's event stream");
                                    break;
                                }
                                None => break,
                            },
                        }
                    }
                }
                Err(e) => {
                    if connected {
                        tracing::warn!(error = %e, "container engine unreachable; retrying");
                        connected = false;
                    }
                }
            }
            tokio::select! {
                biased; // In the order written, not at random: a simulated run replays.
                _ = self.ctx.closing.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
        }
    }

    /// A container stopped or was removed: if it is in the pool, drop it from there; if it
    /// is a sandbox holder, from the sandbox pool.
    async fn forget(&self, id: &str) {
        if let Some(container) = self.pool.take_by_id(id) {
            tracing::warn!(container = %id, key = %container.key, "task container stopped outside the executor; dropping it from the pool");
            self.removals.retire_later(container);
        } else if !self.spares.forget(id) {
            self.sandboxes.holder_gone(id);
        }
    }
}
