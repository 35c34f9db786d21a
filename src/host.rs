//! The host's own resources: core count, memory, and current usage for `/stats`.
//!
//! Owns the `sysinfo` handle. Readings are taken on demand (when `/stats` is asked), never
//! by a background poller. Admission never depends on sampled CPU idleness: it is decided by
//! the budget alone.

use std::sync::Mutex;

use sysinfo::{MemoryRefreshKind, RefreshKind, System};

/// Fixed facts about the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostCapacity {
    pub cores: u32,
    pub mem_mb: u64,
}

/// Current host usage, in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostUsage {
    pub cpu_percent: f64,
    pub mem_percent: f64,
}

pub struct Host {
    /// `None` for a host of fixed figures (simulations), whose usage reads as 0%.
    system: Option<Mutex<System>>,
    capacity: HostCapacity,
}

impl Host {
    pub fn new() -> Host {
        let mut system = System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        system.refresh_cpu_all();
        let cores = system.cpus().len().max(1) as u32;
        let mem_mb = system.total_memory() / (1024 * 1024);
        Host {
            system: Some(Mutex::new(system)),
            capacity: HostCapacity { cores, mem_mb },
        }
    }

    /// A host with the given capacity and no readings (for the in-memory engine).
    pub fn fixed(capacity: HostCapacity) -> Host {
        Host {
            system: None,
            capacity,
        }
    }

    pub fn capacity(&self) -> HostCapacity {
        self.capacity
    }

    /// CPU busy since the previous reading (or start) and memory in use now.
    pub fn usage(&self) -> HostUsage {
        let Some(system) = &self.system else {
            return HostUsage {
                cpu_percent: 0.0,
                mem_percent: 0.0,
            };
        };
        let mut system = system.lock().unwrap_or_else(|e| e.into_inner());
        system.refresh_cpu_usage();
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let total = system.total_memory().max(1) as f64;
        HostUsage {
            cpu_percent: f64::from(system.global_cpu_usage()),
            mem_percent: system.used_memory() as f64 * 100.0 / total,
        }
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}
