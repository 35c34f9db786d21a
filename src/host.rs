//! The host's own resources: core count, memory, and current usage for `/stats`; the size
//! of a filesystem. On a cluster the capacity is the cluster's (set from the engine).
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

/// A filesystem's size and what of it is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filesystem {
    pub total_bytes: u64,
    /// What is not in use (root's reserve included).
    pub free_bytes: u64,
    /// What unprivileged writers may still use (`df`'s "Avail").
    pub available_bytes: u64,
    /// Its id (`statvfs`'s `f_fsid`): the same filesystem seen from elsewhere has the same
    /// id and size.
    pub fsid: u64,
}

impl Filesystem {
    /// How much of it is used, in percent, as `df` shows it: used / (used + available),
    /// so a disk whose root reserve is all that is left reads 100%.
    pub fn used_percent(&self) -> f64 {
        let used = self.total_bytes.saturating_sub(self.free_bytes);
        let usable = used + self.available_bytes;
        if usable == 0 {
            return 0.0;
        }
        100.0 * used as f64 / usable as f64
    }

    /// The filesystem holding `path`, as this process sees it.
    pub fn of(path: &std::path::Path) -> std::io::Result<Filesystem> {
        let stat = rustix::fs::statvfs(path)?;
        Ok(Filesystem {
            total_bytes: stat.f_blocks * stat.f_frsize,
            free_bytes: stat.f_bfree * stat.f_frsize,
            available_bytes: stat.f_bavail * stat.f_frsize,
            fsid: stat.f_fsid,
        })
    }
}

pub struct Host {
    /// `None` for a host of fixed figures (simulations), whose usage reads as 0%.
    system: Option<Mutex<System>>,
    /// This machine's, or the machines' of the engine when they are others (a cluster's
    /// ready nodes, which change: [`Host::set_capacity`]).
    capacity: Mutex<HostCapacity>,
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
            capacity: Mutex::new(HostCapacity { cores, mem_mb }),
        }
    }

    /// A host with the given capacity and no readings (for the in-memory engine).
    pub fn fixed(capacity: HostCapacity) -> Host {
        Host {
            system: None,
            capacity: Mutex::new(capacity),
        }
    }

    pub fn capacity(&self) -> HostCapacity {
        *self.capacity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The capacity tasks run on is `capacity` from now on (the engine's machines are not
    /// this one, and they changed).
    pub fn set_capacity(&self, capacity: HostCapacity) {
        *self.capacity.lock().unwrap_or_else(|e| e.into_inner()) = capacity;
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
