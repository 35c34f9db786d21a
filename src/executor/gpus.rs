//! The GPUs tasks may use: opened through the loader when `has_gpu` turns on, dropped when
//! it turns off.
//!
//! Owns the [`GpuLoader`] and the current [`GpuMonitor`] (none while GPUs are off or none
//! were found). It tells the budget which GPUs exist (`Budget::set_gpus`) and nothing else:
//! who gets which GPU is the budget's business, when to wait for one is the room's.

use std::sync::{Arc, RwLock};

use crate::gpu::{GpuError, GpuInventory, GpuMonitor};
use crate::resources::Budget;

/// Opens the host's GPU inventory (NVML in production); called when `has_gpu` turns on.
pub type GpuLoader = Box<dyn Fn() -> Result<Arc<dyn GpuInventory>, GpuError> + Send + Sync>;

pub(super) struct Gpus {
    loader: GpuLoader,
    /// The GPUs in use while `has_gpu` is on and GPUs were found.
    monitor: RwLock<Option<Arc<GpuMonitor>>>,
}

impl Gpus {
    pub(super) fn new(loader: GpuLoader) -> Gpus {
        Gpus {
            loader,
            monitor: RwLock::new(None),
        }
    }

    /// Turns GPU scheduling on (detecting the GPUs) or off, and gives `budget` the GPUs
    /// found.
    pub(super) fn set_enabled(&self, on: bool, budget: &Budget) {
        let monitor = if on {
            match (self.loader)().and_then(GpuMonitor::start) {
                Ok(monitor) => {
                    tracing::info!(count = monitor.devices().len(), model = %monitor.model(), "GPUs available to tasks");
                    Some(monitor)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "has_gpu is set but GPUs are off");
                    None
                }
            }
        } else {
            None
        };
        let uuids = monitor
            .as_ref()
            .map(|m| m.devices().iter().map(|g| g.uuid.clone()).collect())
            .unwrap_or_default();
        budget.set_gpus(uuids);
        *self.monitor.write().unwrap_or_else(|e| e.into_inner()) = monitor;
    }

    /// The GPUs in use, if any.
    pub(super) fn monitor(&self) -> Option<Arc<GpuMonitor>> {
        self.monitor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
