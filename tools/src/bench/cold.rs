//! Cold starts through the executor (a new key, its phases from `/metrics`), row 3 (against
//! the Docker baseline, alternating) and row 3b (each evicting an idle container first).

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::args::Args;
use crate::baseline::{engine_cold, remove_baseline};
use crate::conn::{execute_answer, execute_body_of, Conn};
use crate::fixture::{COLD_CPU, COLD_SETTLE, IMAGE, INPUT};
use crate::host::{host_busy_ms_since, host_busy_ticks};
use crate::metrics::{phase_diff, reset_executor, scrape, wait_gauge, FREE_SANDBOXES};
use crate::session::Session;
use crate::stats::{median, median_phases};
use crate::table::{ms, phases_text, row, signed_ms, verdict, Row, ENGINE_PHASES, EXECUTOR_PHASES};

/// Keys of rows 3 and 4 (new keys by memory).
pub const COLD_MEM_BASE: u64 = 40;
/// Cold starts that each evict the previous one's idle container (row 3b), and their memory.
const EVICT_RUNS: usize = 7;
const EVICT_MEM_BASE: u64 = 60;
/// Target from the issue.
const COLD_TARGET_MS: f64 = 15.0;

#[derive(Clone, Default)]
pub struct ExecCold {
    pub total_ms: f64,
    /// CPU the whole host spent meanwhile (executor, dockerd, containerd, runc, kernel), ms.
    pub host_cpu_ms: f64,
    /// image, reserve, create, start, first_call (ms).
    pub phases: BTreeMap<String, f64>,
}

/// One cold start through the executor: a new key, its breakdown from /metrics.
pub async fn executor_cold(
    ctl: &mut Conn,
    conn: &mut Conn,
    cpu: f64,
    mem: u64,
    input: &str,
) -> Result<ExecCold, String> {
    executor_cold_of(ctl, conn, IMAGE, cpu, mem, input).await
}

/// [`executor_cold`] of a key of `image`.
pub async fn executor_cold_of(
    ctl: &mut Conn,
    conn: &mut Conn,
    image: &str,
    cpu: f64,
    mem: u64,
    input: &str,
) -> Result<ExecCold, String> {
    let body = execute_body_of(image, Some(cpu), Some(mem), input);
    let expect = execute_answer(input);
    let before = scrape(ctl).await?;
    let busy0 = host_busy_ticks();
    let started = Instant::now();
    let (status, answer) = conn.send(Method::POST, "/", body).await?;
    let total = started.elapsed().as_secs_f64() * 1000.0;
    let host_cpu_ms = host_busy_ms_since(busy0);
    if status != StatusCode::OK || answer != expect {
        return Err(format!(
            "cold start (cpu {cpu}, mem {mem}) failed: HTTP {status}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    let after = scrape(ctl).await?;
    let diff = phase_diff(&before, &after);
    let mut phases = BTreeMap::new();
    let mut accounted = 0.0;
    for (phase, (seconds, count)) in diff {
        if count != 1.0 {
            eprintln!("bench: note: phase {phase} recorded {count} times during one cold start");
        }
        accounted += seconds * 1000.0;
        phases.insert(phase, seconds * 1000.0);
    }
    phases.insert("first_call".into(), total - accounted);
    Ok(ExecCold {
        total_ms: total,
        host_cpu_ms,
        phases,
    })
}

/// Row 3: cold starts of new keys, executor against the Docker baseline.
pub struct ColdStarts {
    runs: usize,
    exec_totals: Vec<f64>,
    engine_totals: Vec<f64>,
    /// Medians of the totals, ms.
    pub exec_median: f64,
    pub engine_median: f64,
    exec_phases: BTreeMap<String, f64>,
    engine_phases: BTreeMap<String, f64>,
    paired_median: f64,
    exec_cpu: f64,
    /// The baseline's median host CPU per start, ms.
    pub engine_cpu: f64,
}

impl ColdStarts {
    /// `--cold-runs` starts per side; who goes first alternates.
    pub async fn measure(
        ctl: &mut Conn,
        conn: &mut Conn,
        s: &Session,
        args: &Args,
    ) -> Result<ColdStarts, String> {
        let pool = args.pool();
        let input = Bytes::from_static(INPUT.as_bytes());
        wait_gauge(ctl, FREE_SANDBOXES, pool).await?;
        // Warm-up of the baseline's Docker connection (the executor's is warm already).
        let (_, id) =
            engine_cold(&s.docker, &s.bench_label, COLD_CPU, COLD_MEM_BASE, &input).await?;
        remove_baseline(&s.docker, &id).await?;
        let mut exec_runs = Vec::new();
        let mut engine_runs = Vec::new();
        for i in 0..args.cold_runs {
            let mem = COLD_MEM_BASE + i as u64;
            // Alternate who goes first, so that each side follows a baseline removal (dockerd
            // and the kernel tear down a container's network after `rm` returns) equally often.
            for executor_turn in [i % 2 == 0, i % 2 == 1] {
                tokio::time::sleep(COLD_SETTLE).await;
                if executor_turn {
                    exec_runs.push(executor_cold(ctl, conn, COLD_CPU, mem, INPUT).await?);
                    // Remove it again (the baseline removes its own), so that every run starts
                    // from the same host: only the prewarmed container running.
                    reset_executor(ctl, pool).await?;
                } else {
                    let (run, id) =
                        engine_cold(&s.docker, &s.bench_label, COLD_CPU, mem, &input).await?;
                    remove_baseline(&s.docker, &id).await?;
                    engine_runs.push(run);
                }
            }
        }
        let exec_totals: Vec<f64> = exec_runs.iter().map(|r| r.total_ms).collect();
        let engine_totals: Vec<f64> = engine_runs.iter().map(|r| r.total_ms).collect();
        let paired: Vec<f64> = exec_totals
            .iter()
            .zip(&engine_totals)
            .map(|(e, g)| e - g)
            .collect();
        let cold = ColdStarts {
            runs: args.cold_runs,
            exec_median: median(&exec_totals),
            engine_median: median(&engine_totals),
            exec_phases: median_phases(exec_runs.iter().map(|r| &r.phases)),
            engine_phases: median_phases(engine_runs.iter().map(|r| &r.phases)),
            paired_median: median(&paired),
            exec_cpu: median(&exec_runs.iter().map(|r| r.host_cpu_ms).collect::<Vec<_>>()),
            engine_cpu: median(
                &engine_runs
                    .iter()
                    .map(|r| r.host_cpu_ms)
                    .collect::<Vec<_>>(),
            ),
            exec_totals,
            engine_totals,
        };
        println!(
            "bench: cold starts (ms): executor {:?}, engine {:?}",
            cold.exec_totals
                .iter()
                .map(|x| (x * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            cold.engine_totals
                .iter()
                .map(|x| (x * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        );
        Ok(cold)
    }

    fn diff(&self) -> f64 {
        self.exec_median - self.engine_median
    }

    fn met(&self) -> bool {
        self.diff() <= COLD_TARGET_MS
    }

    pub fn rows(&self) -> Vec<Row> {
        vec![
            row(
                "3",
                format!("cold start, median of {}", self.runs),
                ms(self.exec_median),
                format!("{} engine", ms(self.engine_median)),
                signed_ms(self.diff()),
                format!("≤ +{COLD_TARGET_MS:.0} ms: {}", verdict(self.met())),
            ),
            row(
                "",
                "  paired difference (median of executor − engine per run)",
                "",
                "",
                signed_ms(self.paired_median),
                "",
            ),
            row(
                "",
                "  host CPU per cold start (all processes, median)",
                ms(self.exec_cpu),
                format!("{} engine", ms(self.engine_cpu)),
                signed_ms(self.exec_cpu - self.engine_cpu),
                "",
            ),
            row(
                "",
                "  executor phases: image/reserve/create/start/first call (ms)",
                phases_text(&self.exec_phases, &EXECUTOR_PHASES),
                "",
                "",
                "",
            ),
            row(
                "",
                "  engine phases: create/start/ready/inspect/first call (ms)",
                "",
                phases_text(&self.engine_phases, &ENGINE_PHASES),
                "",
                "",
            ),
        ]
    }

    /// The JSON's `cold_start`.
    pub fn json(&self) -> Value {
        json!({
            "runs": self.runs,
            "executor_ms": self.exec_totals,
            "engine_ms": self.engine_totals,
            "executor_median_ms": self.exec_median,
            "engine_median_ms": self.engine_median,
            "difference_ms": self.diff(),
            "paired_difference_median_ms": self.paired_median,
            "executor_host_cpu_median_ms": self.exec_cpu,
            "engine_host_cpu_median_ms": self.engine_cpu,
            "executor_phases_median_ms": self.exec_phases,
            "engine_phases_median_ms": self.engine_phases,
        })
    }

    pub fn target(&self) -> Value {
        json!({"name": "cold_start_vs_engine", "target": format!("executor median <= engine median + {COLD_TARGET_MS} ms"), "value_ms": self.diff(), "met": self.met()})
    }
}

/// Row 3b: cold starts that must evict an idle container first.
pub struct Eviction {
    totals: Vec<f64>,
    median: f64,
    phases: BTreeMap<String, f64>,
}

impl Eviction {
    /// Keys as large as the whole CPU budget: each run's container stays idle, and the next
    /// run's new key can only start after evicting it (the prewarmed one goes on the first).
    pub async fn measure(
        ctl: &mut Conn,
        conn: &mut Conn,
        s: &Session,
        args: &Args,
    ) -> Result<Eviction, String> {
        let whole = s.cores as f64;
        executor_cold(ctl, conn, whole, EVICT_MEM_BASE, INPUT).await?;
        let mut runs = Vec::new();
        for i in 1..=EVICT_RUNS {
            tokio::time::sleep(COLD_SETTLE).await;
            runs.push(executor_cold(ctl, conn, whole, EVICT_MEM_BASE + i as u64, INPUT).await?);
        }
        let totals: Vec<f64> = runs.iter().map(|r| r.total_ms).collect();
        let eviction = Eviction {
            median: median(&totals),
            phases: median_phases(runs.iter().map(|r| &r.phases)),
            totals,
        };
        println!(
            "bench: cold starts with an eviction (ms): {:?}",
            eviction.totals
        );
        reset_executor(ctl, args.pool()).await?;
        Ok(eviction)
    }

    /// Against row 3's engine median.
    pub fn rows(&self, cold: &ColdStarts) -> Vec<Row> {
        vec![
            row(
                "3b",
                format!("cold start evicting an idle container first, median of {EVICT_RUNS}"),
                ms(self.median),
                format!("{} row-3 engine", ms(cold.engine_median)),
                signed_ms(self.median - cold.engine_median),
                "",
            ),
            row(
                "",
                "  executor phases: image/reserve (eviction)/create/start/first call (ms)",
                phases_text(&self.phases, &EXECUTOR_PHASES),
                "",
                "",
                "",
            ),
        ]
    }

    /// The JSON's `cold_start_with_eviction`.
    pub fn json(&self, cold: &ColdStarts) -> Value {
        json!({
            "runs": EVICT_RUNS,
            "executor_ms": self.totals,
            "executor_median_ms": self.median,
            "engine_median_ms": cold.engine_median,
            "executor_phases_median_ms": self.phases,
        })
    }
}
