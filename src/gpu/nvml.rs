//! [`GpuInventory`] through NVML (`libnvidia-ml.so`), loaded at run time: a host without the
//! library or the driver gets an error to log, not a failed start.

use nvml_wrapper::Nvml;

use super::{GpuError, GpuInfo, GpuInventory, GpuLoad};

pub struct NvmlInventory {
    nvml: Nvml,
}

fn err(e: nvml_wrapper::error::NvmlError) -> GpuError {
    GpuError(e.to_string())
}

impl NvmlInventory {
    /// Loads NVML; fails (with NVML's reason) where there is no NVIDIA driver.
    pub fn load() -> Result<NvmlInventory, GpuError> {
        let nvml = Nvml::init().map_err(|e| GpuError(format!("NVML unavailable: {e}")))?;
        Ok(NvmlInventory { nvml })
    }
}

impl GpuInventory for NvmlInventory {
    fn devices(&self) -> Result<Vec<GpuInfo>, GpuError> {
        let count = self.nvml.device_count().map_err(err)?;
        (0..count)
            .map(|index| {
                let device = self.nvml.device_by_index(index).map_err(err)?;
                Ok(GpuInfo {
                    index,
                    uuid: device.uuid().map_err(err)?,
                    model: device.name().map_err(err)?,
                    memory_total_mb: device.memory_info().map_err(err)?.total / (1024 * 1024),
                })
            })
            .collect()
    }

    fn load(&self, uuid: &str) -> Result<GpuLoad, GpuError> {
        let device = self.nvml.device_by_uuid(uuid).map_err(err)?;
        let rates = device.utilization_rates().map_err(err)?;
        let memory = device.memory_info().map_err(err)?;
        Ok(GpuLoad {
            compute_percent: rates.gpu,
            memory_percent: rates.memory,
            memory_used_mb: memory.used / (1024 * 1024),
        })
    }
}
