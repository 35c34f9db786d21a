//! One policy's replay: the real `Executor` on the in-memory engine, under tokio's paused
//! clock, fed the trace; what it did, from its metrics (read through
//! `mecanywhere_executor::metrics_text`) and from the engine's containers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mecanywhere_executor::config::{Config, KeepAlivePolicy};
use mecanywhere_executor::engine::memory::{ImageScript, MemoryEngine, StartScript};
use mecanywhere_executor::engine::LABEL_TASK_KEY;
use mecanywhere_executor::executor::{Executor, TaskRequest};
use mecanywhere_executor::host::{Host, HostCapacity};
use mecanywhere_executor::keepalive::Params;
use mecanywhere_executor::metrics_text::Scrape;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::policy::Policy;
use crate::trace::{Function, Trace, PATTERNS};

const MINUTE: Duration = Duration::from_secs(60);
/// MB·s in one GB·h.
pub const MB_S_PER_GB_H: f64 = 1024.0 * 3600.0;

/// What one policy did with the trace.
pub struct Outcome {
    pub policy: Policy,
    pub requests: u64,
    pub cold: u64,
    /// Per pattern: requests, cold ones, idle MB·s.
    pub by_pattern: [(u64, u64, f64); 3],
    pub idle_mb_s: f64,
    pub predicted: u64,
    pub unused: u64,
    pub evictions: u64,
    pub failed: u64,
    /// Per key: requests, cold ones, idle MB·s.
    pub by_key: Vec<(u64, u64, f64)>,
}

impl Outcome {
    pub fn cold_percent(&self) -> f64 {
        self.cold as f64 * 100.0 / self.requests.max(1) as f64
    }

    pub fn idle_gb_h(&self) -> f64 {
        self.idle_mb_s / MB_S_PER_GB_H
    }
}

/// One request's end, for the busy time of its key.
struct Done {
    function: usize,
    /// When the task started working on it, and when it answered.
    busy: (Instant, Instant),
    cold: bool,
    ok: bool,
}

/// Replays `trace` under `policy` on a runtime of its own, its clock paused.
pub fn replay(trace: &Trace, policy: Policy) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(replay_on_paused_clock(trace, policy))
}

async fn replay_on_paused_clock(trace: &Trace, policy: Policy) -> Outcome {
    let engine = MemoryEngine::new();
    let executor = start_executor(trace, policy, &engine).await;
    let t0 = Instant::now();
    let done = feed(trace, &executor, t0).await;
    let horizon = t0 + trace.horizon;
    let metrics = Scrape::parse(&executor.metrics_text());
    let alive = alive_times(trace, &engine, horizon);
    let outcome = account(trace, policy, &metrics, &done, &alive, horizon);
    executor.shutdown().await;
    outcome
}

/// The executor on the in-memory engine, every key's image present, under `policy` and a
/// budget that holds every key at once.
async fn start_executor(trace: &Trace, policy: Policy, engine: &MemoryEngine) -> Arc<Executor> {
    for f in &trace.functions {
        engine.add_image(
            &f.key.image,
            ImageScript {
                present: true,
                pull: Some(Duration::from_secs(1)),
                start: StartScript::Ready(f.start),
            },
        );
    }
    let (idle_timeout, keep_alive) = match policy {
        Policy::Fixed(m) => (MINUTE * m as u32, KeepAlivePolicy::Fixed),
        Policy::Adaptive(m) => (
            MINUTE * m as u32,
            KeepAlivePolicy::Adaptive(Params::default()),
        ),
        Policy::Priced(m, price) => (
            MINUTE * m as u32,
            KeepAlivePolicy::Priced {
                params: Params::priced(),
                price: price as f64,
            },
        ),
    };
    let config = Config {
        name: "replay".into(),
        cpu: 4096.0,
        mem_mb: 1024 * 1024,
        idle_timeout,
        keep_alive,
        queue_timeout: Duration::from_secs(600),
        start_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        pull_timeout: Duration::from_secs(60),
        // The keep-alive policy alone: no spares (they would serve new keys of an image
        // resized, and hold memory of their own) and no sandbox holders.
        spare_containers: 0,
        sandbox_pool: 0,
        // Images stay: the replay weighs keep-alive alone (and writes no state file).
        image_gc: mecanywhere_executor::config::ImageGc::off(),
        ..Config::default()
    };
    let host = Host::fixed(HostCapacity {
        cores: 4096,
        mem_mb: 2 * 1024 * 1024,
    });
    Executor::start_on(
        host,
        config,
        Arc::new(engine.clone()),
        Box::new(|| {
            Err(mecanywhere_executor::gpu::GpuError(
                "no GPUs in the replay".into(),
            ))
        }),
    )
    .await
    .expect("the executor starts on the in-memory engine")
}

/// Sends each invocation at its time (from `t0`) and waits for every answer; their ends.
async fn feed(trace: &Trace, executor: &Arc<Executor>, t0: Instant) -> Vec<Done> {
    let done: Arc<Mutex<Vec<Done>>> =
        Arc::new(Mutex::new(Vec::with_capacity(trace.invocations.len())));
    let requests = TaskTracker::new();
    for inv in &trace.invocations {
        let at = t0 + inv.at;
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        let executor = Arc::clone(executor);
        let done = Arc::clone(&done);
        let request = TaskRequest {
            key: trace.functions[inv.function].key.clone(),
            input: Bytes::from(format!("slow:{}", inv.exec_ms)),
        };
        let (function, exec) = (inv.function, Duration::from_millis(inv.exec_ms));
        requests.spawn(async move {
            let started = Instant::now();
            let ok = executor.execute(request).await.is_ok();
            let ended = Instant::now();
            // On the paused clock a warm request takes exactly its run time.
            let cold = ended - started > exec;
            done.lock().expect("no panic holding it").push(Done {
                function,
                busy: (ended - exec, ended),
                cold,
                ok,
            });
        });
    }
    requests.close();
    requests.wait().await;
    let done = std::mem::take(&mut *done.lock().expect("no panic holding it"));
    done
}

/// Alive time of each key's containers (removed or not), up to the horizon.
fn alive_times(trace: &Trace, engine: &MemoryEngine, horizon: Instant) -> Vec<Duration> {
    let index: std::collections::HashMap<String, usize> = trace
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| (f.key.to_string(), i))
        .collect();
    let mut alive = vec![Duration::ZERO; trace.functions.len()];
    let containers = engine
        .removed()
        .into_iter()
        .map(|r| (r.container, Some(r.removed_at)))
        .chain(engine.containers().into_iter().map(|c| (c, None)));
    for (c, removed_at) in containers {
        let Some(&i) = c.labels.get(LABEL_TASK_KEY).and_then(|k| index.get(k)) else {
            continue;
        };
        let until = removed_at.map_or(horizon, |r| r.min(horizon));
        alive[i] += until.saturating_duration_since(c.created_at);
    }
    alive
}

/// Busy time of one key: the union of its requests' run times, up to the horizon.
fn busy_time(mut runs: Vec<(Instant, Instant)>, horizon: Instant) -> Duration {
    runs.sort_by_key(|r| r.0);
    let mut busy = Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for (from, to) in runs {
        let (from, to) = (from.min(horizon), to.min(horizon));
        current = match current {
            Some((a, b)) if from <= b => Some((a, b.max(to))),
            Some((a, b)) => {
                busy += b - a;
                Some((from, to))
            }
            None => Some((from, to)),
        };
    }
    if let Some((a, b)) = current {
        busy += b - a;
    }
    busy
}

/// What the policy did: requests and cold starts (checked against the executor's count),
/// by pattern and by key, and the idle memory-time (alive but not busy, × memory).
fn account(
    trace: &Trace,
    policy: Policy,
    metrics: &Scrape,
    done: &[Done],
    alive: &[Duration],
    horizon: Instant,
) -> Outcome {
    let counter = |series: &str| metrics.value(series) as u64;
    let mut runs: Vec<Vec<(Instant, Instant)>> = vec![Vec::new(); trace.functions.len()];
    let mut outcome = Outcome {
        policy,
        requests: done.len() as u64,
        cold: counter("meca_request_duration_seconds_count{path=\"cold\"}"),
        by_pattern: [(0, 0, 0.0); 3],
        idle_mb_s: 0.0,
        predicted: counter("meca_predicted_prewarms_total"),
        unused: counter("meca_predicted_prewarms_unused_total"),
        evictions: counter("meca_evictions_total"),
        failed: 0,
        by_key: vec![(0, 0, 0.0); trace.functions.len()],
    };
    let slot = |f: &Function| PATTERNS.iter().position(|p| *p == f.pattern).unwrap_or(0);
    let mut own_cold = 0;
    let mut per_key_requests = vec![0u64; trace.functions.len()];
    for d in done {
        per_key_requests[d.function] += 1;
        let p = slot(&trace.functions[d.function]);
        outcome.by_pattern[p].0 += 1;
        if d.cold {
            outcome.by_pattern[p].1 += 1;
            outcome.by_key[d.function].1 += 1;
            own_cold += 1;
        }
        if !d.ok {
            outcome.failed += 1;
        }
        runs[d.function].push(d.busy);
    }
    assert_eq!(
        own_cold, outcome.cold,
        "the executor's cold starts and the requests that took longer than their run differ"
    );
    for (i, runs) in runs.into_iter().enumerate() {
        let busy = busy_time(runs, horizon);
        let f = &trace.functions[i];
        let idle = alive[i].saturating_sub(busy).as_secs_f64() * f.key.demand.mem_mb as f64;
        outcome.idle_mb_s += idle;
        outcome.by_pattern[slot(f)].2 += idle;
        outcome.by_key[i].0 = per_key_requests[i];
        outcome.by_key[i].2 = idle;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_is_the_union_of_runs_up_to_the_horizon() {
        let t = Instant::now();
        let s = |a: u64, b: u64| (t + Duration::from_secs(a), t + Duration::from_secs(b));
        let runs = vec![s(5, 7), s(0, 2), s(1, 3), s(9, 20)];
        assert_eq!(
            busy_time(runs, t + Duration::from_secs(10)),
            Duration::from_secs(3 + 2 + 1)
        );
        assert_eq!(busy_time(Vec::new(), t), Duration::ZERO);
    }
}
