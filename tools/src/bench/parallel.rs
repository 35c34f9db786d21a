//! Row 4: [`PARALLEL`] cold starts at once through the executor, against row 3's single
//! start, the same through the engine alone, and the host's CPU meanwhile.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::args::Args;
use crate::baseline::{engine_cold, remove_baseline};
use crate::cold::ColdStarts;
use crate::conn::{execute_answer, execute_body, open_conns, Conn};
use crate::error::err;
use crate::fixture::{COLD_CPU, COLD_SETTLE, INPUT, PARALLEL};
use crate::host::{host_busy_ms_since, host_busy_ticks};
use crate::metrics::{phase_diff, reset_executor, scrape, PHASE_ORDER};
use crate::session::Session;
use crate::table::{ms, phases_text, row, verdict, Row, ENGINE_PHASES};

const PARALLEL_MEM_BASE: u64 = 80;
/// Target from the issue.
const PARALLEL_TARGET_RATIO: f64 = 2.0;

pub struct Parallel {
    cores: usize,
    wall: f64,
    each: Vec<f64>,
    /// Row 3's executor median.
    single_median: f64,
    cpu_ms: f64,
    busy_percent: f64,
    /// If starts were CPU-bound, [`PARALLEL`] at once could not take less than this.
    cpu_floor: f64,
    phase_means: BTreeMap<String, f64>,
    engine_wall: f64,
    engine_phase_means: BTreeMap<String, f64>,
}

impl Parallel {
    pub async fn measure(
        ctl: &mut Conn,
        s: &Session,
        args: &Args,
        cold: &ColdStarts,
    ) -> Result<Parallel, String> {
        let pool = args.pool();
        let cores = s.cores;
        let answer = execute_answer(INPUT);
        reset_executor(ctl, pool).await?;
        let conns = open_conns(s.addr, PARALLEL).await?;
        let before = scrape(ctl).await?;
        let busy0 = host_busy_ticks();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for (i, mut c) in conns.into_iter().enumerate() {
            let body = execute_body(Some(COLD_CPU), Some(PARALLEL_MEM_BASE + i as u64), INPUT);
            let answer = answer.clone();
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let (status, got) = c.send(Method::POST, "/", body).await?;
                if status != StatusCode::OK || got != answer {
                    return Err(format!(
                        "parallel cold start {i}: HTTP {status}: {}",
                        String::from_utf8_lossy(&got)
                    ));
                }
                Ok::<f64, String>(started.elapsed().as_secs_f64() * 1000.0)
            }));
        }
        let mut each = Vec::new();
        for task in tasks {
            each.push(task.await.map_err(err("parallel client"))??);
        }
        let wall = t.elapsed().as_secs_f64() * 1000.0;
        let cpu_ms = host_busy_ms_since(busy0);
        let busy_percent = cpu_ms / wall / cores as f64 * 100.0;
        // If starts were CPU-bound, 8 at once could not take less than this on these cores.
        let cpu_floor = PARALLEL as f64 * cold.engine_cpu / cores as f64;
        let after = scrape(ctl).await?;
        let phase_means: BTreeMap<String, f64> = phase_diff(&before, &after)
            .into_iter()
            .map(|(p, (s, n))| (p, s * 1000.0 / n))
            .collect();
        // The same through the engine alone: how much of it is Docker serialising.
        let (engine_wall, engine_phase_means) = engine_parallel(s).await?;
        reset_executor(ctl, pool).await?;
        Ok(Parallel {
            cores,
            wall,
            each,
            single_median: cold.exec_median,
            cpu_ms,
            busy_percent,
            cpu_floor,
            phase_means,
            engine_wall,
            engine_phase_means,
        })
    }

    fn ratio(&self) -> f64 {
        self.wall / self.single_median
    }

    fn met(&self) -> bool {
        self.ratio() <= PARALLEL_TARGET_RATIO
    }

    pub fn rows(&self) -> Vec<Row> {
        vec![
            row(
                "4",
                format!("{PARALLEL} cold starts at once, wall"),
                ms(self.wall),
                format!("{} row-3 median", ms(self.single_median)),
                format!("{:.2}×", self.ratio()),
                format!("≤ {PARALLEL_TARGET_RATIO:.0}×: {}", verdict(self.met())),
            ),
            row(
                "",
                format!("  same {PARALLEL} at once through the engine alone, wall"),
                ms(self.wall),
                format!("{} engine", ms(self.engine_wall)),
                format!("{:.2}×", self.wall / self.engine_wall),
                "",
            ),
            row(
                "",
                format!("  host CPU busy during the {PARALLEL} starts / CPU-bound floor"),
                format!("{:.0}% of {} cores", self.busy_percent, self.cores),
                format!("{} floor", ms(self.cpu_floor)),
                format!("{:.2}×", self.wall / self.cpu_floor),
                "",
            ),
            row(
                "",
                "  executor phase means: image/reserve/create/start (ms)",
                phases_text(&self.phase_means, &PHASE_ORDER),
                "",
                "",
                "",
            ),
            row(
                "",
                "  engine phase means: create/start/ready/inspect/first call (ms)",
                "",
                phases_text(&self.engine_phase_means, &ENGINE_PHASES),
                "",
                "",
            ),
        ]
    }

    /// The JSON's `parallel_cold_start`.
    pub fn json(&self) -> Value {
        json!({
            "count": PARALLEL,
            "wall_ms": self.wall,
            "each_ms": self.each,
            "single_median_ms": self.single_median,
            "ratio": self.ratio(),
            "host_cpu_ms": self.cpu_ms,
            "host_busy_percent": self.busy_percent,
            "cpu_bound_floor_ms": self.cpu_floor,
            "executor_phase_means_ms": self.phase_means,
            "engine_wall_ms": self.engine_wall,
            "engine_phase_means_ms": self.engine_phase_means,
        })
    }

    pub fn target(&self) -> Value {
        json!({"name": "parallel_cold_starts", "target": format!("{PARALLEL} at once <= {PARALLEL_TARGET_RATIO} x single median"), "value_ratio": self.ratio(), "met": self.met()})
    }
}

/// [`PARALLEL`] baseline starts at once: the wall time to the last answer and the phase
/// means, ms. The containers are removed only once all answered.
async fn engine_parallel(s: &Session) -> Result<(f64, BTreeMap<String, f64>), String> {
    let input = Bytes::from_static(INPUT.as_bytes());
    let mut leftover_ids = Vec::new();
    tokio::time::sleep(COLD_SETTLE).await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..PARALLEL {
        let docker = s.docker.clone();
        let label = s.bench_label.clone();
        let input = input.clone();
        tasks.push(tokio::spawn(async move {
            engine_cold(
                &docker,
                &label,
                COLD_CPU,
                PARALLEL_MEM_BASE + i as u64,
                &input,
            )
            .await
        }));
    }
    let mut engine_parallel = Vec::new();
    let mut failure = None;
    for task in tasks {
        match task.await.map_err(err("parallel baseline")).and_then(|r| r) {
            Ok((run, id)) => {
                engine_parallel.push(run);
                leftover_ids.push(id);
            }
            Err(e) => failure = Some(e),
        }
    }
    // Removed only once all answered, so no removal slows the others down.
    for id in leftover_ids.drain(..) {
        remove_baseline(&s.docker, &id).await?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let wall = engine_parallel
        .iter()
        .map(|r| (r.answered_at - t).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    let mut phase_means: BTreeMap<String, f64> = BTreeMap::new();
    for r in &engine_parallel {
        for (p, v) in &r.phases {
            *phase_means.entry(p.clone()).or_default() += v / PARALLEL as f64;
        }
    }
    Ok((wall, phase_means))
}
