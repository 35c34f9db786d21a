//! Keeps the budget true to the engine's machines when they are not the executor's own (a
//! cluster): reads the engine's capacity every few seconds and, when nodes came, went down
//! or were drained, sets the host's capacity and the budget's total from it.
//!
//! Owns no state but its loop. It only moves the budget's total (what the configured
//! `cpu`/`mem` allow on the capacity now); it never starts, removes or leases containers:
//! tasks on a node that went down are found lost by the watcher.

use std::sync::Arc;
use std::time::Duration;

use super::context::Context;
use super::pool::Pool;
use crate::config::Config;
use crate::host::{Host, HostCapacity};
use crate::resources::{Budget, Demand};

/// How often the engine's capacity is read.
const INTERVAL: Duration = Duration::from_secs(5);

pub(super) struct CapacityFollower {
    ctx: Context,
    host: Arc<Host>,
    budget: Arc<Budget>,
    pool: Arc<Pool>,
    /// The budget the config allows on a capacity (`task_budget`).
    budget_of: fn(&Config, HostCapacity) -> Demand,
}

impl CapacityFollower {
    pub(super) fn new(
        ctx: Context,
        host: Arc<Host>,
        budget: Arc<Budget>,
        pool: Arc<Pool>,
        budget_of: fn(&Config, HostCapacity) -> Demand,
    ) -> CapacityFollower {
        CapacityFollower {
            ctx,
            host,
            budget,
            pool,
            budget_of,
        }
    }

    /// Follows the capacity until the executor stops.
    pub(super) async fn follow(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.ctx.closing.cancelled() => return,
                () = tokio::time::sleep(INTERVAL) => {}
            }
            match self.ctx.engine.capacity().await {
                Ok(Some(capacity)) if capacity != self.host.capacity() => self.moved(capacity),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not read the engine's capacity"),
            }
        }
    }

    fn moved(&self, capacity: HostCapacity) {
        let before = self.host.capacity();
        self.host.set_capacity(capacity);
        let total = (self.budget_of)(&self.ctx.config(), capacity);
        self.budget.set_total(total);
        self.pool.changed.notify_one();
        tracing::info!(
            cores = capacity.cores,
            mem_mb = capacity.mem_mb,
            was_cores = before.cores,
            was_mem_mb = before.mem_mb,
            budget_cpu = total.cores(),
            budget_mem_mb = total.mem_mb,
            "the engine's machines changed: budget follows"
        );
    }
}
