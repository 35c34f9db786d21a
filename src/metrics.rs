//! Prometheus metrics (`GET /metrics`): request outcomes, latency split warm / cold, cold
//! start phases, pulls, evictions, queue waits; containers and budget are read at scrape time.
//!
//! Owns the registry and the text encoding. Recording is a few atomic operations, cheap
//! enough for the warm path; nothing here does I/O or takes a lock across an await.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~100 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 22))
}

/// Every metric of the executor.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<OutcomeLabel, Counter>,
    pub latency: Family<PathLabel, Histogram, fn() -> Histogram>,
    pub cold_start_phase: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    pub pulls: Family<OutcomeLabel, Counter>,
    pub pull_seconds: Histogram,
    pub evictions: Counter,
    /// Cold starts served by resizing a spare container.
    pub spares_claimed: Counter,
    pub reaped: Counter,
    pub queue_wait_seconds: Histogram,
    pub containers: Family<StateLabel, Gauge>,
    /// Pooled network sandboxes by state (`free`, `in_use`).
    pub sandboxes: Family<StateLabel, Gauge>,
    /// 1 for the `task_network` mode in force (`isolated`, `internet`).
    pub task_network: Family<ModeLabel, Gauge>,
    pub budget_cpu_cores: Family<KindLabel, Gauge<f64, AtomicU64>>,
    pub budget_memory_mb: Family<KindLabel, Gauge>,
    pub budget_gpus: Family<KindLabel, Gauge>,
    /// Pulls in progress, and their layers and bytes (`kind`: `done`, `total`), summed.
    pub pulls_in_flight: Gauge,
    pub pull_layers: Family<KindLabel, Gauge>,
    pub pull_bytes: Family<KindLabel, Gauge>,
    /// Passes of the image collector (`image_gc`), each a look at the images and the disk.
    pub image_gc_passes: Counter,
    /// Bytes the images this executor pulled or ran take (Docker's sizes), as of the image
    /// collector's last pass.
    pub image_bytes: Gauge,
    /// Images removed by the image collector, by reason (`disk`: the filesystem passed
    /// `high_percent`; `budget`: `max_bytes`; `pull`: room for a pull).
    pub images_removed: Family<ReasonLabel, Counter>,
    /// Bytes the removed images held alone (not shared with images that stay).
    pub image_bytes_reclaimed: Counter,
    /// How full the image filesystem is, in percent (measured when `high_percent` is set).
    pub image_disk_used_percent: Gauge<f64, AtomicU64>,
    /// Panics of supervised background tasks (each was restarted).
    pub background_panics: Family<TaskLabel, Counter>,
    /// `keep_alive: adaptive`: containers started ahead of a predicted request.
    pub predicted_prewarms: Counter,
    /// `keep_alive: adaptive`: predicted pre-warms reaped without serving a request.
    pub predicted_prewarms_unused: Counter,
    /// Client connections the HTTP front refused, by reason (`per_peer`: their address had
    /// `max_connections_per_peer` open).
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Handles of the warm-path series, so the hot path skips the family lookups.
    warm_success: Counter,
    warm_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Records the `task_network` mode in force.
    pub fn task_network(&self, mode: crate::config::TaskNetwork) {
        self.task_network.clear();
        self.task_network
            .get_or_create(&ModeLabel {
                mode: mode.to_string(),
            })
            .set(1);
    }

    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meca");
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register("requests", "Execute requests by outcome", requests.clone());
        let latency = Family::<PathLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Execute request latency; path=warm (a ready container) or cold (waited for a start)",
            latency.clone(),
        );
        let cold_start_phase =
            Family::<PhaseLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "cold_start_phase_seconds",
            "Cold start phases: image (check and pull), reserve (budget), create, start (start, ready line, address)",
            cold_start_phase.clone(),
        );
        let pulls = Family::<OutcomeLabel, Counter>::default();
        registry.register("pulls", "Image pulls by outcome", pulls.clone());
        let pull_seconds = latency_histogram();
        registry.register(
            "pull_duration_seconds",
            "Image pull duration",
            pull_seconds.clone(),
        );
        let spares_claimed = Counter::default();
        registry.register(
            "spares_claimed",
            "Cold starts served by a spare container of the image, resized to the key's limits",
            spares_claimed.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "evictions",
            "Idle containers removed to make room",
            evictions.clone(),
        );
        let reaped = Counter::default();
        registry.register(
            "idle_reaped",
            "Containers removed after the idle timeout",
            reaped.clone(),
        );
        let queue_wait_seconds = latency_histogram();
        registry.register(
            "queue_wait_seconds",
            "Time cold starts waited for the budget to have room",
            queue_wait_seconds.clone(),
        );
        let containers = Family::<StateLabel, Gauge>::default();
        registry.register("containers", "Task containers by state", containers.clone());
        let sandboxes = Family::<StateLabel, Gauge>::default();
        registry.register(
            "sandboxes",
            "Pooled network sandboxes (holder containers) by state",
            sandboxes.clone(),
        );
        let task_network = Family::<ModeLabel, Gauge>::default();
        registry.register(
            "task_network",
            "What a task's network reaches (task_network): 1 for the mode in force",
            task_network.clone(),
        );
        let budget_cpu_cores = Family::<KindLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "budget_cpu_cores",
            "Task CPU budget: total and reserved",
            budget_cpu_cores.clone(),
        );
        let budget_memory_mb = Family::<KindLabel, Gauge>::default();
        registry.register(
            "budget_memory_mb",
            "Task memory budget: total and reserved",
            budget_memory_mb.clone(),
        );
        let pulls_in_flight = Gauge::default();
        registry.register(
            "pulls_in_flight",
            "Image pulls in progress",
            pulls_in_flight.clone(),
        );
        let pull_layers = Family::<KindLabel, Gauge>::default();
        registry.register(
            "pull_layers",
            "Layers of the pulls in progress: done and total",
            pull_layers.clone(),
        );
        let pull_bytes = Family::<KindLabel, Gauge>::default();
        registry.register(
            "pull_bytes",
            "Bytes of the pulls in progress: downloaded, and the size of the layers known",
            pull_bytes.clone(),
        );
        let budget_gpus = Family::<KindLabel, Gauge>::default();
        registry.register(
            "budget_gpus",
            "GPUs usable by tasks: total and reserved",
            budget_gpus.clone(),
        );
        let background_panics = Family::<TaskLabel, Counter>::default();
        registry.register(
            "background_panics",
            "Panics of background tasks (idle reaper, container watcher, prewarm keeper); each was restarted",
            background_panics.clone(),
        );
        let predicted_prewarms = Counter::default();
        registry.register(
            "predicted_prewarms",
            "Containers started ahead of a request the adaptive keep-alive predicted",
            predicted_prewarms.clone(),
        );
        let predicted_prewarms_unused = Counter::default();
        registry.register(
            "predicted_prewarms_unused",
            "Predicted pre-warms removed after their keep-alive window without serving a request",
            predicted_prewarms_unused.clone(),
        );
        let image_gc_passes = Counter::default();
        registry.register(
            "image_gc_passes",
            "Passes of image_gc: a look at the images and the disk, removing what is due",
            image_gc_passes.clone(),
        );
        let image_bytes = Gauge::default();
        registry.register(
            "image_bytes",
            "Bytes the task images this executor pulled or ran take on disk (Docker's sizes)",
            image_bytes.clone(),
        );
        let images_removed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "images_removed",
            "Task images removed by image_gc, by reason (disk, budget, pull)",
            images_removed.clone(),
        );
        let image_bytes_reclaimed = Counter::default();
        registry.register(
            "image_bytes_reclaimed",
            "Bytes freed by image_gc's removals (layers no remaining image shares)",
            image_bytes_reclaimed.clone(),
        );
        let image_disk_used_percent = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "image_disk_used_percent",
            "How full the filesystem of Docker's root directory is, in percent",
            image_disk_used_percent.clone(),
        );
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections refused by the HTTP front; reason=per_peer: their address had max_connections_per_peer open",
            connections_refused.clone(),
        );
        let warm_success = requests.get_or_create_owned(&OutcomeLabel { outcome: "success" });
        let warm_latency = latency.get_or_create_owned(&PathLabel { path: "warm" });
        Metrics {
            warm_success,
            warm_latency,
            registry,
            requests,
            latency,
            cold_start_phase,
            pulls,
            pull_seconds,
            evictions,
            spares_claimed,
            reaped,
            queue_wait_seconds,
            containers,
            sandboxes,
            task_network,
            budget_cpu_cores,
            budget_memory_mb,
            budget_gpus,
            pulls_in_flight,
            pull_layers,
            pull_bytes,
            background_panics,
            predicted_prewarms,
            predicted_prewarms_unused,
            connections_refused,
            image_gc_passes,
            image_bytes,
            images_removed,
            image_bytes_reclaimed,
            image_disk_used_percent,
        }
    }

    pub fn request(&self, outcome: &'static str, path: &'static str, elapsed: Duration) {
        if outcome == "success" && path == "warm" {
            self.warm_success.inc();
            self.warm_latency.observe(elapsed.as_secs_f64());
            return;
        }
        self.requests.get_or_create(&OutcomeLabel { outcome }).inc();
        self.latency
            .get_or_create(&PathLabel { path })
            .observe(elapsed.as_secs_f64());
    }

    pub fn phase(&self, phase: &'static str, elapsed: Duration) {
        self.cold_start_phase
            .get_or_create(&PhaseLabel { phase })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_show_in_the_text_format() {
        let m = Metrics::new();
        m.request("success", "warm", Duration::from_micros(300));
        m.request("success", "warm", Duration::from_micros(300));
        m.evictions.inc();
        m.budget_cpu_cores
            .get_or_create(&KindLabel { kind: "total" })
            .set(1.5);
        let text = m.encode();
        assert!(
            text.contains("meca_requests_total{outcome=\"success\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("meca_request_duration_seconds_count{path=\"warm\"} 2"),
            "{text}"
        );
        assert!(text.contains("meca_evictions_total 1"), "{text}");
        assert!(
            text.contains("meca_budget_cpu_cores{kind=\"total\"} 1.5"),
            "{text}"
        );
    }
}
