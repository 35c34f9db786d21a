//! The executor's policy on virtual time: seeded random workloads (keys of various sizes,
//! concurrent requests, start failures, never-ready tasks, crashes mid-request, OOM, removal
//! from outside, an unreachable engine, failed removals, pause / unpause / update-config,
//! stop) run against the real executor on the in-memory engine, under tokio's paused clock.
//! After every step the invariants below are checked; a failing seed prints the command that
//! replays it. This proves the policy, not Docker (that is what the other tests are for).
//!
//! - **Budget**: the resources of the live containers (not killed or exited) ≤ reserved ≤ the
//!   budget, so no two live containers hold the same room; 0 at rest.
//! - **Answers**: every request is answered exactly once, within the sum of pull_timeout,
//!   queue_timeout, start_timeout, request_timeout and a slack, also when the container it
//!   waited for broke before it could use it (another request crashed it, say).
//! - **Starter served**: a container that became ready served a request before the executor
//!   removed it, unless the executor was paused or stopped meanwhile, or it was started ahead
//!   of any request: a sandbox holder, a spare, or a predicted pre-warm (`keep_alive:
//!   adaptive`), or started by a request that then gave up (it looked again for a container
//!   and ran out of time); those unserved are at most the predicted pre-warms and the
//!   requests that gave up.
//! - **Nothing left** after stop (sandbox holders and spares included), and no task was
//!   ever created in a sandbox another task still occupied.
//! - **Metrics** count every answer once, by outcome.
//!
//! One seed in three runs with `keep_alive: adaptive`, its histogram scaled to the
//! scenario's seconds (bins of 0.1 to 2 s), and often a timer-like key of its own, so that
//! predicted pre-warms and early removals meet every fault above.
//!
//! The order in which waiting starts get room (a large request is not starved by small ones)
//! is checked by scripted scenarios in `tests/policy.rs`, not here.
//!
//! `SIM_SEEDS=N` runs N seeds (default 10000), `SIM_SEED=S` replays seed S alone, logging.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use tokio::time::Instant;

use mecanywhere_executor::config::{Config, KeepAlivePolicy};
use mecanywhere_executor::engine::memory::{ImageScript, MemoryEngine, StartScript};
use mecanywhere_executor::engine::{LABEL_ROLE, LABEL_TASK_KEY, ROLE_SPARE};
use mecanywhere_executor::executor::{ConfigUpdate, ExecError, Executor, TaskRequest};
use mecanywhere_executor::host::{Host, HostCapacity};
use mecanywhere_executor::keepalive::Params;
use mecanywhere_executor::resources::{cores_to_milli, Demand};
use mecanywhere_executor::task::{Runtime, TaskKey};

/// Extra time an answer may take beyond the sum of the configured timeouts.
const SLACK: Duration = Duration::from_secs(5);
/// How often the budget invariant is checked between events.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// One generated scenario.
#[derive(Debug)]
struct Scenario {
    config: Config,
    /// How long the engine takes to remove and to kill a container.
    remove_delay: Duration,
    kill_delay: Duration,
    images: Vec<(String, ImageScript)>,
    keys: Vec<TaskKey>,
    /// (arrival, key index, input)
    requests: Vec<(Duration, usize, String)>,
    faults: Vec<(Duration, Fault)>,
}

#[derive(Debug, Clone)]
enum Fault {
    /// `docker rm -f` of the n-th container (modulo how many exist).
    Kill(usize),
    /// The engine is unreachable for this long.
    Unreachable(Duration),
    /// The next n removals fail.
    FailRemovals(u32),
    /// Pause for this long, maybe updating the config, then unpause.
    Pause(Duration, Option<ConfigUpdate>),
}

fn secs(rng: &mut XorShiftRng, lo_ms: u64, hi_ms: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo_ms..=hi_ms))
}

fn generate(seed: u64) -> Scenario {
    let mut rng = XorShiftRng::seed_from_u64(seed);
    let config = Config {
        name: "sim".into(),
        cpu: f64::from(rng.random_range(2u32..=8)) / 2.0,
        mem_mb: rng.random_range(4u64..=32) * 128,
        idle_timeout: secs(&mut rng, 500, 30_000),
        queue_timeout: secs(&mut rng, 500, 20_000),
        start_timeout: secs(&mut rng, 500, 10_000),
        request_timeout: secs(&mut rng, 500, 10_000),
        pull_timeout: secs(&mut rng, 1_000, 10_000),
        background_eviction: rng.random_bool(0.7),
        refills_wait_for_requests: rng.random_bool(0.7),
        ..Config::default()
    };
    let remove_delay = secs(&mut rng, 0, 2_000);
    let kill_delay = secs(&mut rng, 0, 200);
    let images: Vec<(String, ImageScript)> = (0..rng.random_range(2..=5))
        .map(|i| {
            let start = match rng.random_range(0..10) {
                0 => StartScript::Exit(secs(&mut rng, 10, 1_000), 2),
                1 => StartScript::NeverReady,
                _ => StartScript::Ready(secs(&mut rng, 10, 2_000)),
            };
            let script = ImageScript {
                present: rng.random_bool(0.8),
                pull: (!rng.random_bool(0.1)).then(|| secs(&mut rng, 50, 3_000)),
                start,
            };
            (format!("sim/task-{i}:v1"), script)
        })
        .collect();
    let mut keys: Vec<TaskKey> = (0..rng.random_range(2..=6))
        .map(|_| TaskKey {
            image: images[rng.random_range(0..images.len())].0.clone(),
            runtime: Runtime::Container,
            demand: Demand {
                milli_cpu: cores_to_milli(f64::from(rng.random_range(1u32..=8)) / 4.0),
                mem_mb: rng.random_range(1u64..=16) * 64,
            },
            gpu_count: 0,
            use_sgx: false,
        })
        .collect();
    let horizon = rng.random_range(5_000u64..=60_000);
    let mut requests: Vec<(Duration, usize, String)> = (0..rng.random_range(5..=60))
        .map(|_| {
            let input = match rng.random_range(0..100) {
                0..=69 => "ok".to_string(),
                70..=84 => format!("slow:{}", rng.random_range(0..3_000)),
                85..=89 => "crash".to_string(),
                90..=92 => "oom".to_string(),
                _ => "hang".to_string(),
            };
            (
                secs(&mut rng, 0, horizon),
                rng.random_range(0..keys.len()),
                input,
            )
        })
        .collect();
    requests.sort_by_key(|r| r.0);
    let faults = (0..rng.random_range(0..=4))
        .map(|_| {
            let at = secs(&mut rng, 0, horizon);
            let fault = match rng.random_range(0..4) {
                0 => Fault::Kill(rng.random_range(0..8)),
                1 => Fault::Unreachable(secs(&mut rng, 100, 5_000)),
                2 => Fault::FailRemovals(rng.random_range(1..=3)),
                _ => {
                    let update = rng.random_bool(0.5).then(|| ConfigUpdate {
                        cpu: Some(f64::from(rng.random_range(2u32..=8)) / 2.0),
                        mem_mb: Some(rng.random_range(4u64..=32) * 128),
                        idle_timeout: Some(secs(&mut rng, 500, 30_000)),
                        ..ConfigUpdate::default()
                    });
                    Fault::Pause(secs(&mut rng, 10, 5_000), update)
                }
            };
            (at, fault)
        })
        .collect();
    // Adaptive seeds draw from a generator of their own: the rest of the scenario is the
    // same as it would be under the fixed policy.
    let mut config = config;
    if seed.is_multiple_of(3) {
        let mut rng = XorShiftRng::seed_from_u64(seed ^ 0x6b65_6570_616c_6976);
        let min_samples = rng.random_range(2..=6);
        config.keep_alive = KeepAlivePolicy::Adaptive(Params {
            bin: secs(&mut rng, 100, 2_000),
            bins: rng.random_range(5..=60),
            min_samples,
            max_samples: rng.random_range(min_samples * 2..=64),
            max_keys: rng.random_range(1..=8),
            ..Params::default()
        });
        if rng.random_bool(0.7) {
            // A timer-like key of its own (well-behaved calls only): a period of 0.5 to 5 s,
            // up to 10% jitter.
            let key = keys.len();
            keys.push(TaskKey {
                image: images[rng.random_range(0..images.len())].0.clone(),
                runtime: Runtime::Container,
                demand: Demand {
                    milli_cpu: cores_to_milli(f64::from(rng.random_range(1u32..=4)) / 4.0),
                    mem_mb: rng.random_range(1u64..=4) * 64 + 1,
                },
                gpu_count: 0,
                use_sgx: false,
            });
            let period = rng.random_range(500u64..=5_000);
            let mut at = rng.random_range(0..=period);
            while at <= horizon {
                let jitter = rng.random_range(0..=period / 10);
                let input = if rng.random_bool(0.8) {
                    "ok".to_string()
                } else {
                    format!("slow:{}", rng.random_range(0..period))
                };
                requests.push((Duration::from_millis(at + jitter), key, input));
                at += period;
            }
            requests.sort_by_key(|r| r.0);
        }
    }
    Scenario {
        config,
        remove_delay,
        kill_delay,
        images,
        keys,
        requests,
        faults,
    }
}

/// One answered request.
#[derive(Debug)]
struct Answered {
    index: usize,
    took: Duration,
    result: Result<Bytes, ExecError>,
}

/// What happens at one point of virtual time.
enum Step {
    Request(usize),
    Fault(Fault),
    Unpause,
    Reachable,
    Check,
}

/// Runs one seed; `Err` says which invariant broke.
fn run_seed(seed: u64) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(simulate(generate(seed)))
}

async fn simulate(scenario: Scenario) -> Result<(), String> {
    let engine = MemoryEngine::new();
    engine.set_delays(scenario.remove_delay, scenario.kill_delay);
    for (image, script) in &scenario.images {
        engine.add_image(image, script.clone());
    }
    let host = Host::fixed(HostCapacity {
        cores: 8,
        mem_mb: 16 * 1024,
    });
    let executor = Executor::start_on(
        host,
        scenario.config.clone(),
        Arc::new(engine.clone()),
        Box::new(|| {
            Err(mecanywhere_executor::gpu::GpuError(
                "no GPUs in the simulation".into(),
            ))
        }),
    )
    .await
    .map_err(|e| format!("executor did not start: {e}"))?;
    let t0 = Instant::now();

    // The timeline: requests, faults, the ends of pauses and outages, periodic checks.
    let mut steps: Vec<(Duration, Step)> = Vec::new();
    for (i, (at, _, _)) in scenario.requests.iter().enumerate() {
        steps.push((*at, Step::Request(i)));
    }
    let mut pauses: Vec<(Duration, Duration)> = Vec::new();
    for (at, fault) in &scenario.faults {
        match fault {
            Fault::Pause(d, _) => {
                steps.push((*at + *d, Step::Unpause));
                pauses.push((*at, *at + *d));
            }
            Fault::Unreachable(d) => steps.push((*at + *d, Step::Reachable)),
            _ => {}
        }
        steps.push((*at, Step::Fault(fault.clone())));
    }
    let end = steps.iter().map(|s| s.0).max().unwrap_or_default();
    let mut t = Duration::ZERO;
    while t <= end {
        steps.push((t, Step::Check));
        t += CHECK_EVERY;
    }
    steps.sort_by_key(|s| s.0);

    let c = &scenario.config;
    let bound = c.pull_timeout + c.queue_timeout + c.start_timeout + c.request_timeout + SLACK;
    let mut requests = tokio::task::JoinSet::new();
    let mut paused_depth = 0u32;
    for (at, step) in steps {
        tokio::time::sleep_until(t0 + at).await;
        match step {
            Step::Request(i) => {
                let (_, key, input) = &scenario.requests[i];
                let request = TaskRequest {
                    key: scenario.keys[*key].clone(),
                    input: Bytes::from(input.clone()),
                };
                let executor = Arc::clone(&executor);
                requests.spawn(async move {
                    let started = Instant::now();
                    let result = executor.execute(request).await;
                    Answered {
                        index: i,
                        took: started.elapsed(),
                        result,
                    }
                });
            }
            Step::Fault(Fault::Kill(n)) => {
                let list = engine.containers();
                if !list.is_empty() {
                    engine.kill_from_outside(&list[n % list.len()].id);
                }
            }
            Step::Fault(Fault::Unreachable(_)) => engine.set_unreachable(true),
            Step::Reachable => engine.set_unreachable(false),
            Step::Fault(Fault::FailRemovals(n)) => engine.fail_removals(n),
            Step::Fault(Fault::Pause(_, update)) => {
                paused_depth += 1;
                executor.pause().await;
                if let Some(update) = update {
                    // May fail while the engine is unreachable: then nothing changes.
                    let _ = executor.update_config(update).await;
                }
            }
            Step::Unpause => {
                paused_depth -= 1;
                if paused_depth == 0 {
                    executor.unpause();
                }
            }
            Step::Check => {}
        }
        tokio::task::yield_now().await;
        check_budget(&executor, &engine)?;
    }

    // Every request is answered, once, in time.
    let mut answers: Vec<Answered> = Vec::new();
    let all = async {
        while let Some(joined) = requests.join_next().await {
            match joined {
                Ok(answer) => answers.push(answer),
                Err(e) => return Err(format!("a request task failed: {e}")),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(bound + SLACK, all).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(format!(
                "{} of {} requests unanswered {:?} after the last step",
                scenario.requests.len() - answers.len(),
                scenario.requests.len(),
                bound + SLACK
            ))
        }
    }
    if answers.len() != scenario.requests.len() {
        return Err(format!(
            "{} answers to {} requests",
            answers.len(),
            scenario.requests.len()
        ));
    }
    for a in &answers {
        if a.took > bound {
            return Err(format!(
                "request {} ({:?}) answered after {:?}, beyond {bound:?}: {:?}",
                a.index, scenario.requests[a.index], a.took, a.result
            ));
        }
    }

    // The metrics count each answer once, by outcome.
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &answers {
        let outcome = match &a.result {
            Ok(_) => "success",
            Err(e) => e.outcome(),
        };
        *expected.entry(outcome).or_default() += 1;
    }
    let text = executor.metrics_text();
    let mut counted: BTreeMap<&str, u64> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("meca_requests_total{outcome=\"") {
            let (outcome, n) = rest.split_once("\"} ").unwrap();
            let n: u64 = n.parse().unwrap();
            if n > 0 {
                let outcome = expected
                    .keys()
                    .find(|k| **k == outcome)
                    .copied()
                    .unwrap_or("(unexpected)");
                *counted.entry(outcome).or_default() += n;
            }
        }
    }
    if counted != expected {
        return Err(format!(
            "metrics {counted:?} differ from the answers {expected:?}"
        ));
    }

    // Stop leaves nothing, and nothing is reserved at rest.
    engine.set_unreachable(false);
    engine.fail_removals(0);
    let stopped_at = Instant::now();
    executor.shutdown().await;
    if !engine.containers().is_empty() {
        return Err(format!("left after stop: {:?}", engine.containers()));
    }
    // A sandbox holder never served two live tasks at once.
    if engine.sandbox_conflicts() > 0 {
        return Err(format!(
            "{} tasks were created in a sandbox another task still occupied",
            engine.sandbox_conflicts()
        ));
    }
    let budget = executor.budget();
    if budget.used.milli_cpu != 0 || budget.used.mem_mb != 0 {
        return Err(format!("reserved at rest after stop: {:?}", budget.used));
    }

    // Every container that became ready served a request before the executor removed it,
    // unless a pause or the stop came in between, or it was a predicted pre-warm.
    let paused_during = |from: Instant, to: Instant| {
        to >= stopped_at || pauses.iter().any(|(p, u)| from <= t0 + *u && t0 + *p <= to)
    };
    let text = executor.metrics_text();
    let predicted = metric(&text, "meca_predicted_prewarms_total");
    PREDICTED_PREWARMS.fetch_add(predicted, Ordering::Relaxed);
    UNUSED_PREWARMS.fetch_add(
        metric(&text, "meca_predicted_prewarms_unused_total"),
        Ordering::Relaxed,
    );
    let mut unserved = Vec::new();
    for gone in engine.removed() {
        let c = &gone.container;
        // Sandbox holders and spares are started ahead of any request.
        let ahead = c.holder || c.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_SPARE);
        if c.became_ready
            && c.calls == 0
            && !ahead
            && !gone.from_outside
            && !paused_during(c.created_at, gone.removed_at)
        {
            unserved.push(format!(
                "container {} ({}) became ready and was removed at {:?} without serving a request",
                c.id,
                c.labels.get(LABEL_TASK_KEY).cloned().unwrap_or_default(),
                gone.removed_at - t0
            ));
        }
    }
    // A request that looked again for a container and ran out of time gives up on the start
    // it claimed; that container becomes ready with no request waiting for it.
    let gave_up = answers
        .iter()
        .filter(|a| matches!(a.result, Err(ExecError::NoContainer(_))))
        .count() as u64;
    if unserved.len() as u64 > predicted + gave_up {
        return Err(format!(
            "{} containers removed unserved, {predicted} of them could be predicted pre-warms \
             and {gave_up} started for requests that gave up: {}",
            unserved.len(),
            unserved.join("; ")
        ));
    }
    Ok(())
}

/// Predicted pre-warms over all seeds, and those reaped unused: the adaptive seeds must
/// exercise both.
static PREDICTED_PREWARMS: AtomicU64 = AtomicU64::new(0);
static UNUSED_PREWARMS: AtomicU64 = AtomicU64::new(0);

/// The value of a counter in the `/metrics` text, 0 when absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// The containers that exist hold no more than is reserved, and no more is reserved than
/// the budget has.
fn check_budget(executor: &Executor, engine: &MemoryEngine) -> Result<(), String> {
    let budget = executor.budget();
    let (live_cpu, live_mem) = engine.live_demand();
    if live_cpu > budget.used.milli_cpu || live_mem > budget.used.mem_mb {
        return Err(format!(
            "containers hold {live_cpu} milli-cores and {live_mem} MB, but only {:?} is reserved: {:?}",
            budget.used,
            engine.containers()
        ));
    }
    if budget.used.milli_cpu > budget.total.milli_cpu || budget.used.mem_mb > budget.total.mem_mb {
        return Err(format!(
            "reserved {:?} exceeds the budget {:?}",
            budget.used, budget.total
        ));
    }
    Ok(())
}

/// Log lines carry the virtual time since the first line, which is what a replay needs.
#[derive(Default)]
struct VirtualTime(std::sync::OnceLock<Instant>);

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let now = Instant::now();
        let since = now - *self.0.get_or_init(|| now);
        write!(w, "{:>9.3}s", since.as_secs_f64())
    }
}

fn replay_hint(seed: u64) -> String {
    format!("replay: SIM_SEED={seed} cargo test --test simulator -- --nocapture")
}

#[test]
fn simulated_workloads_keep_the_invariants() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.parse().expect("SIM_SEED is a number");
        let _ = tracing_subscriber::fmt()
            .with_env_filter("mecanywhere_executor=debug")
            .with_timer(VirtualTime::default())
            .with_test_writer()
            .try_init();
        println!("{:#?}", generate(seed));
        if let Err(e) = run_seed(seed) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    (w..seeds)
                        .step_by(workers as usize)
                        .filter_map(|seed| {
                            run_seed(seed)
                                .err()
                                .map(|e| format!("seed {seed}: {e}\n  {}", replay_hint(seed)))
                        })
                        .take(5)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} seeds broke an invariant (first ones):\n{}",
        failures.len(),
        failures.join("\n")
    );
    if seeds >= 1_000 {
        let predicted = PREDICTED_PREWARMS.load(Ordering::Relaxed);
        let unused = UNUSED_PREWARMS.load(Ordering::Relaxed);
        assert!(
            predicted > 0 && unused > 0,
            "the adaptive seeds made {predicted} predicted pre-warms, {unused} unused"
        );
        println!("adaptive seeds: {predicted} predicted pre-warms, {unused} reaped unused");
    }
}
