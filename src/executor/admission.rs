//! Admission: whether this host and its configuration can run a task key at all — its
//! demand within the budget's maximum, the GPUs it asks for, the microVM runtime, SGX.
//!
//! Owns the OCI runtimes the engine reported (at start and at each config update). It
//! decides from the budget's totals and the configuration only, never from sampled host
//! load, and reserves nothing: whether there is room *now* is the room's business. Whether
//! the executor is open (paused, stopping) is not decided here either. Nothing is silently
//! downgraded: a key this host cannot serve as asked is refused.

use std::path::Path;
use std::sync::{Arc, RwLock};

use super::context::Context;
use super::error::ExecError;
use crate::config::Config;
use crate::engine::EngineError;
use crate::resources::Budget;
use crate::task::{Runtime, TaskKey};

pub(super) struct Admission {
    ctx: Context,
    budget: Arc<Budget>,
    /// OCI runtimes the engine reported at start or at the last config update.
    runtimes: RwLock<Vec<String>>,
}

impl Admission {
    pub(super) fn new(ctx: Context, budget: Arc<Budget>, runtimes: Vec<String>) -> Admission {
        Admission {
            ctx,
            budget,
            runtimes: RwLock::new(runtimes),
        }
    }

    /// Asks the engine for its runtimes again: they may have been registered since.
    pub(super) async fn refresh_runtimes(&self) -> Result<(), EngineError> {
        let runtimes = self.ctx.engine.runtimes().await?;
        *self.runtimes.write().unwrap_or_else(|e| e.into_inner()) = runtimes;
        Ok(())
    }

    /// The Docker runtime serving `runtime: "microVM"`, or why there is none.
    pub(super) fn microvm_runtime(&self, config: &Config) -> Result<String, ExecError> {
        let Some(name) = config.microvm_runtime.as_deref() else {
            return Err(ExecError::RuntimeUnavailable(
                "runtime microVM is not available on this host: no microVM_runtime is configured \
                 (the task is not run under a weaker runtime instead)"
                    .into(),
            ));
        };
        let known = self.runtimes.read().unwrap_or_else(|e| e.into_inner());
        if !known.iter().any(|r| r == name) {
            return Err(ExecError::RuntimeUnavailable(format!(
                "runtime microVM is not available on this host: the configured runtime {name:?} \
                 is not registered with Docker (registered: {})",
                known.join(", ")
            )));
        }
        Ok(name.to_string())
    }

    /// Logs which runtime serves microVM requests, or why none does when one is configured.
    pub(super) fn check_microvm_runtime(&self) {
        let config = self.ctx.config();
        match self.microvm_runtime(&config) {
            Ok(name) => tracing::info!(runtime = %name, "microVM requests run under this runtime"),
            Err(e) if config.microvm_runtime.is_some() => tracing::warn!("{e}"),
            Err(_) => {}
        }
    }

    /// Checks what depends on this host and its configuration; returns the config to use.
    pub(super) fn admit(&self, key: &TaskKey) -> Result<Arc<Config>, ExecError> {
        let config = self.ctx.config();
        let budget = self.budget.snapshot();
        let total = budget.total;
        if key.demand.milli_cpu > total.milli_cpu || key.demand.mem_mb > total.mem_mb {
            return Err(ExecError::ExceedsMaximum(format!(
                "the task asks for {} cores and {} MB; this executor's task budget is {} cores and {} MB",
                key.demand.cores(),
                key.demand.mem_mb,
                total.cores(),
                total.mem_mb
            )));
        }
        if key.gpu_count as usize > budget.gpus_total {
            let why = if budget.gpus_total > 0 {
                ""
            } else if config.has_gpu {
                " (has_gpu is set, but no usable GPU was found: see the executor's log)"
            } else {
                " (has_gpu is off)"
            };
            return Err(ExecError::NoGpu(format!(
                "the task asks for {} GPUs; this host offers {} GPUs to tasks{why}",
                key.gpu_count, budget.gpus_total
            )));
        }
        if key.runtime == Runtime::MicroVm {
            self.microvm_runtime(&config)?;
        }
        if key.use_sgx {
            if !config.sgx.enable {
                return Err(ExecError::SgxUnavailable(
                    "SGX is not enabled on this host (sgx.enable is false)".into(),
                ));
            }
            let device = config.sgx.sgx_device.as_deref().unwrap_or_default();
            if !Path::new(device).exists() {
                return Err(ExecError::SgxUnavailable(format!(
                    "SGX device {device} does not exist on this host"
                )));
            }
            let aesmd = config.sgx.aesmd_path.as_deref().unwrap_or_default();
            if !Path::new(aesmd).is_dir() {
                return Err(ExecError::SgxUnavailable(format!(
                    "SGX AESM directory {aesmd} does not exist on this host"
                )));
            }
        }
        Ok(config)
    }
}
