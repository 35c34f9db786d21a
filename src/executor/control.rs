//! The control operations: `/pause`, `/unpause`, `/update-config`, and stopping.
//!
//! Owns the order in which they take the executor down and up (refuse new work, stop starts,
//! remove containers, wait for removals, drain sandboxes). It must not serve requests or
//! read the engine's containers other than by label at shutdown.

use std::sync::Arc;
use std::time::Duration;

use super::adaptive::Adaptive;
use super::error::ExecError;
use super::{task_budget, ConfigUpdate, Executor};
use crate::config::Config;

/// How long pause lets in-flight requests finish before removing their container.
const PAUSE_DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// The same at shutdown: short, as `docker stop` kills the executor after 10 s.
const SHUTDOWN_DRAIN_LIMIT: Duration = Duration::from_secs(5);

impl Executor {
    /// `/pause`: refuse new tasks, stop the starts in progress, and remove every container.
    /// When it returns, nothing is reserved but containers the engine failed to remove.
    pub async fn pause(self: &Arc<Self>) {
        self.starter.pause_starts();
        self.sandboxes.disable();
        let mut containers = self.pool.take_all();
        containers.extend(self.spares.disable_and_take_all());
        tracing::info!(removing = containers.len(), "paused");
        // A tracked task of its own: the removals finish even if the caller goes away.
        let removals = Arc::clone(&self.removals);
        let starter = Arc::clone(&self.starter);
        let sandboxes = Arc::clone(&self.sandboxes);
        let removal = self.ctx.work.spawn(async move {
            removals.retire_all(containers, PAUSE_DRAIN_LIMIT).await;
            starter.wait_for_starts().await;
            // Removals the executor began before (the reaper's, the watcher's, evictions',
            // discards'): none may still hold room when `/update-config` checks the budget.
            if tokio::time::timeout(PAUSE_DRAIN_LIMIT, removals.wait_retired())
                .await
                .is_err()
            {
                tracing::warn!(
                    retiring = removals.retiring(),
                    "removals still in flight after pausing"
                );
            }
            // Last: the starts and removals above gave their sandboxes back.
            sandboxes.drain().await;
        });
        let _ = removal.await;
    }

    /// `/unpause`: accept tasks again.
    pub fn unpause(&self) {
        self.starter.unpause();
        self.sandboxes.enable();
        self.spares.enable();
        self.room.wake_prewarm();
        tracing::info!("unpaused");
    }

    /// `/update-config`: only while paused.
    pub async fn update_config(&self, update: ConfigUpdate) -> Result<(), ExecError> {
        if !self.is_paused() {
            return Err(ExecError::Running);
        }
        // What containers the engine failed to remove still hold must fit the new budget.
        let held = self.budget.snapshot().used;
        let wanted = task_budget(
            &Config {
                cpu: update.cpu.unwrap_or(self.config().cpu),
                mem_mb: update.mem_mb.unwrap_or(self.config().mem_mb),
                ..Config::clone(&self.config())
            },
            self.host.capacity(),
        );
        if held.milli_cpu > wanted.milli_cpu || held.mem_mb > wanted.mem_mb {
            return Err(ExecError::StillHeld(format!(
                "{} cores and {} MB are still held by task containers the engine has not removed yet \
                 (see /metrics, meca_containers{{state=\"removal_failed\"}}); the new budget of {} cores \
                 and {} MB cannot hold them: retry when they are gone",
                held.cores(),
                held.mem_mb,
                wanted.cores(),
                wanted.mem_mb
            )));
        }
        // Runtimes may have been registered with Docker since: check against what it has now.
        self.admission.refresh_runtimes().await?;
        // A keep-alive policy other than the one in force replaces it (nothing is idle
        // while paused); the same one keeps what it learned.
        let keep_alive = match update.keep_alive {
            Some(policy) if policy != self.config().keep_alive => {
                Some((policy, Adaptive::build(&policy)?))
            }
            _ => None,
        };
        let new_total = self.ctx.update_config(|config| {
            if let Some(t) = update.idle_timeout {
                config.idle_timeout = t;
            }
            if let Some(cpu) = update.cpu {
                config.cpu = cpu;
            }
            if let Some(mem) = update.mem_mb {
                config.mem_mb = mem;
            }
            if let Some(gpu) = update.has_gpu {
                config.has_gpu = gpu;
            }
            if let Some(runtime) = update.microvm_runtime {
                config.microvm_runtime = runtime;
            }
            if let Some((policy, _)) = &keep_alive {
                config.keep_alive = *policy;
            }
            task_budget(config, self.host.capacity())
        });
        if let Some((_, built)) = keep_alive {
            self.adaptive.install(built);
            self.room.wake_prewarm();
        }
        self.budget.set_total(new_total);
        if let Some(on) = update.has_gpu {
            self.gpus.set_enabled(on, &self.budget);
        }
        self.admission.check_microvm_runtime();
        self.pool.changed.notify_one();
        tracing::info!(
            cpu = new_total.cores(),
            mem_mb = new_total.mem_mb,
            "config updated"
        );
        Ok(())
    }

    /// Stop: refuse new work, cancel cold starts, remove every container this instance
    /// created (found by label, so nothing escapes), and return.
    pub async fn shutdown(&self) {
        self.ctx.closing.cancel();
        // Starts in progress end as on pause: each removes what it created.
        self.starter.pause_starts();
        self.sandboxes.disable();
        let mut containers = self.pool.take_all();
        containers.extend(self.spares.disable_and_take_all());
        self.removals
            .retire_all(containers, SHUTDOWN_DRAIN_LIMIT)
            .await;
        self.ctx.work.close();
        // Starts end at once on `closing`; removals and diagnoses finish.
        let ended = async {
            self.starter.wait_for_starts().await;
            self.ctx.work.wait().await;
        };
        let ended = async {
            ended.await;
            self.sandboxes.drain().await;
        };
        if tokio::time::timeout(Duration::from_secs(30), ended)
            .await
            .is_err()
        {
            tracing::warn!(
                "starts and removals did not end within 30s; removing their containers anyway"
            );
        }
        let engine = &self.ctx.engine;
        match engine
            .list_labelled(crate::engine::LABEL_INSTANCE, &self.ctx.instance)
            .await
        {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = engine.remove(&id).await {
                        tracing::error!(container = %id, error = %e, "could not remove task container");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not list task containers to remove"),
        }
        self.sandboxes.remove_dir();
        tracing::info!("all task containers removed");
    }
}
