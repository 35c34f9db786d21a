//! Row 5: the executor's memory (RSS idle, peak after the throughput rows) and its CPU
//! while idle.

use std::time::{Duration, Instant};

use mecanywhere_tools::procfs;
use serde_json::{json, Value};

use crate::host::{cpu_ns_schedstat, cpu_ticks, ticks_per_second};
use crate::table::{row, verdict, Row};

const IDLE_SECONDS: u64 = 10;
const IDLE_CPU_TARGET_PERCENT: f64 = 0.1;
const RSS_IDLE_TARGET_MB: f64 = 20.0;
const RSS_LOAD_TARGET_MB: f64 = 64.0;

/// The executor at rest, measured first.
pub struct Idle {
    rss_idle_kb: u64,
    ticks: u64,
    wall: Duration,
    idle_ticks: u64,
    cpu_percent: f64,
    cpu_percent_ns: f64,
}

impl Idle {
    /// RSS now, then the CPU the executor uses over [`IDLE_SECONDS`] of rest.
    pub async fn measure(exec_pid: u32) -> Idle {
        let rss_idle_kb = procfs::status_kb(exec_pid, "VmRSS:");
        let ticks = ticks_per_second();
        let (t0, ns0, w0) = (
            cpu_ticks(exec_pid),
            cpu_ns_schedstat(exec_pid),
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(IDLE_SECONDS)).await;
        let (t1, ns1, wall) = (
            cpu_ticks(exec_pid),
            cpu_ns_schedstat(exec_pid),
            w0.elapsed(),
        );
        let idle_ticks = t1.saturating_sub(t0);
        let cpu_percent = idle_ticks as f64 / ticks as f64 / wall.as_secs_f64() * 100.0;
        let cpu_percent_ns = ns1.saturating_sub(ns0) as f64 / 1e9 / wall.as_secs_f64() * 100.0;
        println!(
            "bench: idle: RSS {:.1} MB, CPU {cpu_percent:.3}% of a core over {IDLE_SECONDS} s \
             ({idle_ticks} ticks; schedstat {cpu_percent_ns:.4}%)",
            rss_idle_kb as f64 / 1024.0
        );
        Idle {
            rss_idle_kb,
            ticks,
            wall,
            idle_ticks,
            cpu_percent,
            cpu_percent_ns,
        }
    }

    fn cpu_met(&self) -> bool {
        self.cpu_percent <= IDLE_CPU_TARGET_PERCENT
    }

    /// The JSON's `idle_cpu`.
    pub fn json(&self) -> Value {
        json!({
            "seconds": self.wall.as_secs_f64(),
            "ticks": self.idle_ticks,
            "clock_ticks_per_second": self.ticks,
            "percent_of_core": self.cpu_percent,
            "percent_of_core_schedstat": self.cpu_percent_ns,
        })
    }

    pub fn target(&self) -> Value {
        json!({"name": "idle_cpu", "target": format!("<= {IDLE_CPU_TARGET_PERCENT}% of a core"), "value_percent": self.cpu_percent, "met": self.cpu_met()})
    }
}

/// Row 5: [`Idle`] and the peak RSS (`VmHWM`) once the throughput rows ran.
pub struct Footprint<'a> {
    pub idle: &'a Idle,
    pub rss_peak_kb: u64,
    /// The largest RSS sampled during the throughput rows.
    pub rss_during_max: u64,
}

impl Footprint<'_> {
    fn rss_met(&self) -> bool {
        self.idle.rss_idle_kb as f64 / 1024.0 <= RSS_IDLE_TARGET_MB
            && self.rss_peak_kb as f64 / 1024.0 <= RSS_LOAD_TARGET_MB
    }

    pub fn rows(&self) -> Vec<Row> {
        let idle = self.idle;
        vec![
            row(
                "5",
                "executor RSS idle / peak (VmHWM after 64 clients)",
                format!(
                    "{:.1} / {:.1} MB",
                    idle.rss_idle_kb as f64 / 1024.0,
                    self.rss_peak_kb as f64 / 1024.0
                ),
                "",
                "",
                format!(
                    "≤ {RSS_IDLE_TARGET_MB:.0} / {RSS_LOAD_TARGET_MB:.0} MB: {}",
                    verdict(self.rss_met())
                ),
            ),
            row(
                "",
                format!("executor idle CPU over {IDLE_SECONDS} s (utime+stime)"),
                format!("{:.2}% ({} ticks)", idle.cpu_percent, idle.idle_ticks),
                format!("schedstat {:.3}%", idle.cpu_percent_ns),
                "",
                format!("≤ {IDLE_CPU_TARGET_PERCENT}%: {}", verdict(idle.cpu_met())),
            ),
        ]
    }

    /// The JSON's `memory`.
    pub fn json(&self) -> Value {
        json!({
            "rss_idle_kb": self.idle.rss_idle_kb,
            "rss_peak_kb": self.rss_peak_kb,
            "rss_max_sampled_under_load_kb": self.rss_during_max,
        })
    }

    pub fn target(&self) -> Value {
        json!({"name": "rss", "target": format!("idle <= {RSS_IDLE_TARGET_MB} MB, under load <= {RSS_LOAD_TARGET_MB} MB"), "idle_kb": self.idle.rss_idle_kb, "peak_kb": self.rss_peak_kb, "met": self.rss_met()})
    }
}
