//! NVIDIA GPUs: what the host has ([`GpuInventory`], NVML in [`nvml`]) and how busy each
//! GPU is right now ([`GpuMonitor`], sampled in the background).
//!
//! Owns GPU discovery and utilisation readings. It does not reserve GPUs (the budget in
//! `resources` does, by UUID) and never talks to Docker.

pub mod nvml;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// A GPU is free for a new task only when both its compute and its memory utilisation are
/// at most this many percent.
pub const IDLE_PERCENT: u32 = 10;
/// How often the monitor samples utilisation.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(2);

/// One GPU as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// NVML's index (inside the executor's own container it may differ from the host's).
    pub index: u32,
    /// Stable identity, used in device requests.
    pub uuid: String,
    pub model: String,
    pub memory_total_mb: u64,
}

/// How busy one GPU is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuLoad {
    pub compute_percent: u32,
    pub memory_percent: u32,
    pub memory_used_mb: u64,
}

impl GpuLoad {
    pub fn is_idle(&self) -> bool {
        self.compute_percent <= IDLE_PERCENT && self.memory_percent <= IDLE_PERCENT
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct GpuError(pub String);

/// The GPUs of the host.
pub trait GpuInventory: Send + Sync + 'static {
    fn devices(&self) -> Result<Vec<GpuInfo>, GpuError>;
    fn load(&self, uuid: &str) -> Result<GpuLoad, GpuError>;
}

/// The GPUs usable by tasks and their latest utilisation.
pub struct GpuMonitor {
    inventory: Arc<dyn GpuInventory>,
    devices: Vec<GpuInfo>,
    loads: RwLock<HashMap<String, GpuLoad>>,
}

impl GpuMonitor {
    /// Lists the GPUs and takes a first sample; then samples every [`SAMPLE_PERIOD`] on a
    /// background task that ends when the monitor is dropped.
    pub fn start(inventory: Arc<dyn GpuInventory>) -> Result<Arc<GpuMonitor>, GpuError> {
        let devices = inventory.devices()?;
        let monitor = Arc::new(GpuMonitor {
            inventory,
            devices,
            loads: RwLock::new(HashMap::new()),
        });
        monitor.sample();
        let weak: Weak<GpuMonitor> = Arc::downgrade(&monitor);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_PERIOD);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(monitor) = weak.upgrade() else {
                    return;
                };
                monitor.sample();
            }
        });
        Ok(monitor)
    }

    fn sample(&self) {
        let mut loads = HashMap::with_capacity(self.devices.len());
        for gpu in &self.devices {
            match self.inventory.load(&gpu.uuid) {
                Ok(load) => {
                    loads.insert(gpu.uuid.clone(), load);
                }
                Err(e) => {
                    tracing::warn!(gpu = %gpu.uuid, error = %e, "cannot read GPU utilisation")
                }
            }
        }
        *self.loads.write().unwrap_or_else(|e| e.into_inner()) = loads;
    }

    pub fn devices(&self) -> &[GpuInfo] {
        &self.devices
    }

    /// Whether `uuid` was idle at the last sample (an unreadable GPU counts as busy).
    pub fn is_idle(&self, uuid: &str) -> bool {
        self.loads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(uuid)
            .is_some_and(GpuLoad::is_idle)
    }

    /// The model name reported in `/stats` (the first GPU's).
    pub fn model(&self) -> String {
        self.devices
            .first()
            .map(|g| g.model.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two GPUs; the second is busy.
    struct Fake;

    impl GpuInventory for Fake {
        fn devices(&self) -> Result<Vec<GpuInfo>, GpuError> {
            Ok((0..2)
                .map(|index| GpuInfo {
                    index,
                    uuid: format!("GPU-{index}"),
                    model: "Fake H200".into(),
                    memory_total_mb: 141_000,
                })
                .collect())
        }

        fn load(&self, uuid: &str) -> Result<GpuLoad, GpuError> {
            let busy = uuid == "GPU-1";
            Ok(GpuLoad {
                compute_percent: if busy { 90 } else { 0 },
                memory_percent: if busy { 40 } else { 10 },
                memory_used_mb: 0,
            })
        }
    }

    #[test]
    fn idle_means_both_rates_at_most_ten_percent() {
        let load = |c, m| GpuLoad {
            compute_percent: c,
            memory_percent: m,
            memory_used_mb: 0,
        };
        assert!(load(10, 10).is_idle());
        assert!(!load(11, 0).is_idle());
        assert!(!load(0, 11).is_idle());
    }

    #[tokio::test]
    async fn monitor_samples_utilisation_per_uuid() {
        let monitor = GpuMonitor::start(Arc::new(Fake)).unwrap();
        assert_eq!(monitor.devices().len(), 2);
        assert_eq!(monitor.model(), "Fake H200");
        assert!(monitor.is_idle("GPU-0"));
        assert!(!monitor.is_idle("GPU-1"));
        assert!(
            !monitor.is_idle("GPU-unknown"),
            "unknown GPUs count as busy"
        );
    }
}
