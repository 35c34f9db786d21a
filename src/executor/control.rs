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
use crate::config::{Config, ImageGc};

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

    /// A reload (SIGHUP, `systemctl reload`) with `new`, the config file read again: what
    /// `/update-config` can change is applied (a running executor is paused for it, as
    /// `/update-config` needs, which removes its warm containers, and unpaused after); the
    /// keys that only a restart applies are named in the log and left as they are.
    pub async fn reload(self: &Arc<Self>, new: Config) -> Result<(), ExecError> {
        let old = self.config();
        let (image_gc, gc_later) = reloaded_image_gc(&old.image_gc, &new.image_gc);
        let mut later = restart_only_changes(&old, &new);
        later.extend(gc_later);
        if !later.is_empty() {
            tracing::warn!(
                keys = %later.join(", "),
                "config keys changed that take effect only when the executor is restarted"
            );
        }
        if image_gc != old.image_gc {
            // Read afresh by every pass of the collector.
            self.ctx.update_config(|config| config.image_gc = image_gc);
            tracing::info!(image_gc = ?self.config().image_gc, "image_gc changed");
            // A pass now, under the new settings (and the next after their interval).
            self.collector.kick();
        }
        let update = ConfigUpdate::between(&old, &new);
        if update.is_empty() {
            tracing::info!("config reloaded: nothing to change while running");
            return Ok(());
        }
        let was_paused = self.is_paused();
        if !was_paused {
            self.pause().await;
        }
        let result = self.update_config(update).await;
        if !was_paused {
            self.unpause();
        }
        result
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
        // A pass in progress may be measuring the disk with a holder of its own.
        self.collector.wait_passes(Duration::from_secs(10)).await;
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

/// The `image_gc` a reload puts in force, and what of `new` only a restart applies: the
/// state file, switching image GC on (its record is read at start), and the filesystem
/// thresholds when there were none (how the filesystem is measured is found at start).
fn reloaded_image_gc(old: &ImageGc, new: &ImageGc) -> (ImageGc, Vec<&'static str>) {
    let mut later = Vec::new();
    if new.state_file != old.state_file {
        later.push("image_gc.state_file");
    }
    if new.enabled && !old.enabled {
        later.push("image_gc (switched on)");
        return (old.clone(), later);
    }
    let mut gc = ImageGc {
        state_file: old.state_file.clone(),
        ..new.clone()
    };
    if gc.by_percent() && !old.by_percent() {
        later.push("image_gc.high_percent (from 0)");
        gc.high_percent = 0;
    }
    (gc, later)
}

/// Config keys that only take effect when the executor starts again.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    // The fields named here are compared; the `Config` pattern has no `..`, so a key added
    // to `Config` must be sorted here, as changeable by a reload (`_`, applied through
    // `ConfigUpdate::between` or `reloaded_image_gc`) or not.
    macro_rules! changed {
        ($($key:ident),* $(,)?) => {{
            let Config {
                idle_timeout: _,
                cpu: _,
                mem_mb: _,
                has_gpu: _,
                microvm_runtime: _,
                keep_alive: _,
                retired: _,
                image_gc: _,
                $($key),*
            } = new;
            let mut changed = Vec::new();
            $(
                if *$key != old.$key {
                    changed.push(stringify!($key));
                }
            )*
            changed
        }};
    }
    changed!(
        engine,
        start_timeout,
        request_timeout,
        queue_timeout,
        sgx,
        task_network,
        network,
        socket_dir,
        name,
        pull_timeout,
        pull_stall_timeout,
        max_concurrent_pulls,
        max_request_bytes,
        max_answer_bytes,
        hardening,
        task_tty,
        auth_token,
        prewarm,
        listen,
        max_connections,
        max_connections_per_peer,
        max_requests_in_flight,
        header_read_timeout,
        idle_connection_timeout,
        body_read_timeout,
        log_format,
        background_eviction,
        refills_wait_for_requests,
        sandbox_pool,
        sandbox_memory_mb,
        spare_containers,
        spare_memory_mb,
    )
}

impl ConfigUpdate {
    /// What a reload from `old` to `new` changes of what `/update-config` can change.
    fn between(old: &Config, new: &Config) -> ConfigUpdate {
        fn changed<T: PartialEq + Clone>(old: &T, new: &T) -> Option<T> {
            (old != new).then(|| new.clone())
        }
        ConfigUpdate {
            idle_timeout: changed(&old.idle_timeout, &new.idle_timeout),
            cpu: changed(&old.cpu, &new.cpu),
            mem_mb: changed(&old.mem_mb, &new.mem_mb),
            has_gpu: changed(&old.has_gpu, &new.has_gpu),
            microvm_runtime: changed(&old.microvm_runtime, &new.microvm_runtime),
            keep_alive: changed(&old.keep_alive, &new.keep_alive),
        }
    }

    fn is_empty(&self) -> bool {
        *self == ConfigUpdate::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_applies_what_image_gc_can_change_while_running() {
        let on = ImageGc::default();
        let bytes_only = ImageGc {
            high_percent: 0,
            max_bytes: Some(1_000_000_000),
            ..ImageGc::default()
        };
        // Thresholds and budgets change at once; off takes effect at once.
        let tighter = ImageGc {
            high_percent: 70,
            low_percent: 60,
            ..on.clone()
        };
        assert_eq!(reloaded_image_gc(&on, &tighter), (tighter.clone(), vec![]));
        assert_eq!(reloaded_image_gc(&on, &ImageGc::off()).0, ImageGc::off());
        assert_eq!(
            reloaded_image_gc(&on, &bytes_only),
            (bytes_only.clone(), vec![])
        );
        // What start-up sets up needs a restart.
        let (gc, later) = reloaded_image_gc(&ImageGc::off(), &on);
        assert_eq!(
            (gc, later),
            (ImageGc::off(), vec!["image_gc (switched on)"])
        );
        let (gc, later) = reloaded_image_gc(&bytes_only, &on);
        assert_eq!(gc.high_percent, 0);
        assert_eq!(later, vec!["image_gc.high_percent (from 0)"]);
        let moved = ImageGc {
            state_file: Some("/elsewhere.json".into()),
            ..on.clone()
        };
        let (gc, later) = reloaded_image_gc(&on, &moved);
        assert_eq!((gc.state_file, later), (None, vec!["image_gc.state_file"]));
    }
}
