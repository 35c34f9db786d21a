//! Reporting: `/stats` and the gauges of `/metrics`, read from the components at the
//! moment of asking.
//!
//! Owns how the executor's state is counted for its callers (tasks apart from the
//! executor's own stock of spares and holders). It must not change any state.

use super::{Executor, Stats};

impl Executor {
    /// The `/metrics` text, with the container and budget gauges read now.
    pub fn metrics_text(&self) -> String {
        use crate::metrics::{KindLabel, StateLabel};
        let counts = self.pool.counts();
        let m = &self.ctx.metrics;
        for (state, n) in [
            ("starting", counts.starting),
            ("idle", counts.ready - counts.busy),
            ("busy", counts.busy),
            ("removing", self.removals.retiring()),
            ("removal_failed", self.removals.removal_failed()),
            ("spare", self.spares.count()),
        ] {
            m.containers
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        let (free, in_use) = self.sandboxes.counts();
        for (state, n) in [("free", free), ("in_use", in_use)] {
            m.sandboxes
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        let pulls = self.pulls.in_flight();
        m.pulls_in_flight.set(pulls.len() as i64);
        let (mut layers, mut layers_done, mut bytes, mut bytes_done) = (0, 0, 0, 0);
        for (_, pull) in &pulls {
            layers += pull.layers;
            layers_done += pull.layers_done;
            bytes += pull.bytes_total;
            bytes_done += pull.bytes_done;
        }
        for (kind, layers, bytes) in [("done", layers_done, bytes_done), ("total", layers, bytes)] {
            let kind = KindLabel { kind };
            m.pull_layers.get_or_create(&kind).set(layers as i64);
            m.pull_bytes.get_or_create(&kind).set(bytes as i64);
        }
        let budget = self.budget.snapshot();
        let spares = self.spares.stock().demand;
        let tasks = budget.used.saturating_sub(spares);
        for (kind, cpu, mem, gpus) in [
            (
                "total",
                budget.total.cores(),
                budget.total.mem_mb,
                budget.gpus_total,
            ),
            (
                "reserved",
                budget.used.cores(),
                budget.used.mem_mb,
                budget.gpus_used,
            ),
            ("tasks", tasks.cores(), tasks.mem_mb, budget.gpus_used),
            ("spares", spares.cores(), spares.mem_mb, 0),
        ] {
            let kind = KindLabel { kind };
            m.budget_cpu_cores.get_or_create(&kind).set(cpu);
            m.budget_memory_mb.get_or_create(&kind).set(mem as i64);
            m.budget_gpus.get_or_create(&kind).set(gpus as i64);
        }
        m.encode()
    }

    /// `/stats`; `None` while paused.
    pub fn stats(&self) -> Option<Stats> {
        if self.is_paused() {
            return None;
        }
        let usage = self.host.usage();
        let budget = self.budget.snapshot();
        let percent = |used: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                used as f64 * 100.0 / total as f64
            }
        };
        let counts = self.pool.counts();
        let spares = self.spares.stock();
        let tasks = budget.used.saturating_sub(spares.demand);
        Some(Stats {
            host: self.host.capacity(),
            host_cpu_percent: usage.cpu_percent,
            host_mem_percent: usage.mem_percent,
            task_cpu: budget.total.cores(),
            task_mem_mb: budget.total.mem_mb,
            task_used_cpu_percent: percent(tasks.milli_cpu, budget.total.milli_cpu),
            task_used_mem_percent: percent(tasks.mem_mb, budget.total.mem_mb),
            gpu_model: self.gpus.monitor().map(|m| m.model()).unwrap_or_default(),
            task_gpu: budget.gpus_total as u32,
            task_used_gpu: budget.gpus_used as u32,
            containers: counts.ready
                + counts.starting
                + self.removals.retiring()
                + self.removals.removal_failed(),
            spare_containers: spares.count,
            spare_used_cpu_percent: percent(spares.demand.milli_cpu, budget.total.milli_cpu),
            spare_used_mem_percent: percent(spares.demand.mem_mb, budget.total.mem_mb),
            free_sandboxes: self.sandboxes.counts().0,
            pulls: self.pulls.in_flight(),
            runtimes: if self.admission.microvm_runtime(&self.config()).is_ok() {
                vec!["container", "microVM"]
            } else {
                vec!["container"]
            },
        })
    }
}
