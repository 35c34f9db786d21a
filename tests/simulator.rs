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
//! `SIM_SEEDS=N` runs N seeds (default 10000), `SIM_SEED=S` replays seed S alone and prints
//! its transcript: the scenario, every step and every line the executor logged (in virtual
//! time), each container the engine had with when it was created and removed, each answer,
//! the metrics and the verdict. One seed is one run, byte for byte: the executor decides
//! nothing by a map's iteration order or a random draw, and the runtime is one thread on a
//! paused clock (`a_seed_is_one_run_byte_for_byte` runs seeds twice and compares their
//! transcripts). The one random thing left, the executor's instance id (unique per process
//! by design: the stop sweep finds its containers by it), is masked in the transcript.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use tokio::time::Instant;

use common::memory::{self, check_budget, describe, describe_all};
use mecanywhere_executor::config::{Config, KeepAlivePolicy};
use mecanywhere_executor::engine::memory::{ImageScript, MemoryEngine, StartScript};
use mecanywhere_executor::engine::{LABEL_INSTANCE, LABEL_TASK_KEY};
use mecanywhere_executor::executor::{ConfigUpdate, ExecError, Executor, TaskRequest};
use mecanywhere_executor::host::HostCapacity;
use mecanywhere_executor::keepalive::Params;
use mecanywhere_executor::metrics_text::Scrape;
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

/// The host every scenario runs on.
const SIM_HOST: HostCapacity = HostCapacity {
    cores: 8,
    mem_mb: 16 * 1024,
};

/// Runs one seed; `Err` says which invariant broke.
fn run_seed(seed: u64) -> Result<(), String> {
    memory::run_paused(simulate(generate(seed), false)).0
}

/// One seed's run, recorded.
struct Run {
    /// Everything the run did, in order: the scenario, each step and every line the
    /// executor logged (virtual time), the engine's containers, the answers, the metrics,
    /// the verdict. The same for the same seed, byte for byte.
    transcript: String,
    /// The end of the transcript, after the log (see [`summarise`]).
    summary: String,
    verdict: Result<(), String>,
}

/// Runs one seed as [`run_seed`] does, recording its transcript: the executor's log (debug)
/// and the simulation's steps go to the log of this run (see [`RECORDING`]), in the virtual
/// time since its runtime started.
fn record_seed(seed: u64) -> Run {
    install_recorder();
    let scenario = generate(seed);
    let mut transcript = format!("seed {seed}\n{scenario:#?}\n");
    let log = Log::default();
    let (verdict, summary) = memory::run_paused(async {
        RECORDING.with(|r| *r.borrow_mut() = Some((log.clone(), Instant::now())));
        let ran = simulate(scenario, true).await;
        RECORDING.with(|r| *r.borrow_mut() = None);
        ran
    });
    transcript.push_str(&log.text());
    transcript.push_str(&summary.text);
    let summary_text = summary.text;
    let _ = writeln!(
        transcript,
        "verdict: {}",
        match &verdict {
            Ok(()) => "every invariant held".to_string(),
            Err(e) => format!("broken: {e}"),
        }
    );
    // The instance id is a fresh UUID in every process by design; it shows in the log.
    if let Some(instance) = summary.instance {
        transcript = transcript
            .replace(&instance, "<instance>")
            .replace(&instance[..8], "<instance>");
    }
    Run {
        transcript,
        summary: summary_text,
        verdict,
    }
}

thread_local! {
    /// The run this thread records, if it records one: its log, and when (virtual time) its
    /// runtime started. A run's runtime has one thread, so every task of the run logs here.
    static RECORDING: RefCell<Option<(Log, Instant)>> = const { RefCell::new(None) };
}

fn recording() -> bool {
    RECORDING.with(|r| r.borrow().is_some())
}

/// Installs (once) the process's subscriber: debug events of the executor and of the
/// simulation, on a thread that records a run, go to that run's log; all else is off. The
/// check is made at each event, not cached per call site, so seeds run unrecorded on other
/// threads meanwhile log nothing (and cost no formatting), and a recorded run misses no
/// line. (A subscriber per run, set as the thread's default, missed lines: a call site
/// first reached on another thread while none was set could be cached as off.)
fn install_recorder() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::layer::{Layer, SubscriberExt};
        use tracing_subscriber::util::SubscriberInitExt;
        let ours = |meta: &tracing::Metadata<'_>| {
            *meta.level() <= tracing::Level::DEBUG
                && ["mecanywhere_executor", "simulator"]
                    .iter()
                    .any(|t| meta.target().starts_with(t))
        };
        let filter =
            tracing_subscriber::filter::DynFilterFn::new(move |meta, _| ours(meta) && recording())
                .with_callsite_filter(move |meta| {
                    if ours(meta) {
                        tracing::subscriber::Interest::sometimes()
                    } else {
                        tracing::subscriber::Interest::never()
                    }
                });
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_timer(VirtualTime)
            .with_writer(|| ThreadLog)
            .with_filter(filter);
        tracing_subscriber::registry()
            .with(layer)
            .try_init()
            .expect("the simulator's subscriber is the process's first");
    });
}

/// The log of one recorded run.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Writes to the log of the run this thread records (nowhere if none).
struct ThreadLog;

impl std::io::Write for ThreadLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        RECORDING.with(|r| {
            if let Some((log, _)) = &*r.borrow() {
                log.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a recorded run ends with, after its log.
#[derive(Default)]
struct Summary {
    text: String,
    /// The executor's instance id (masked in the transcript).
    instance: Option<String>,
}

/// The end of a recorded run: every container the engine had (when created, when removed,
/// by whom, what it did), the answers in request order, and every series of `/metrics`.
fn summarise(
    scenario: &Scenario,
    engine: &MemoryEngine,
    executor: &Executor,
    t0: Instant,
    answers: &[Answered],
) -> Summary {
    let at = |t: Instant| format!("{:.3}s", t.saturating_duration_since(t0).as_secs_f64());
    let mut text = String::from("containers removed:\n");
    let removed = engine.removed();
    for gone in &removed {
        let _ = writeln!(
            text,
            "  {} created {} removed {}{}",
            describe(&gone.container),
            at(gone.container.created_at),
            at(gone.removed_at),
            if gone.from_outside {
                " (from outside)"
            } else {
                ""
            }
        );
    }
    let live = engine.containers();
    let _ = writeln!(text, "containers left: {}", describe_all(&live));
    let _ = writeln!(text, "answers:");
    let mut answers: Vec<&Answered> = answers.iter().collect();
    answers.sort_by_key(|a| a.index);
    for a in answers {
        let (arrival, key, input) = &scenario.requests[a.index];
        let result = match &a.result {
            Ok(body) => format!("ok {:?}", String::from_utf8_lossy(body)),
            Err(e) => format!("{}: {e}", e.outcome()),
        };
        let _ = writeln!(
            text,
            "  request {} (key {key}, {input}) at {:.3}s took {:.3}s: {result}",
            a.index,
            arrival.as_secs_f64(),
            a.took.as_secs_f64()
        );
    }
    let _ = writeln!(text, "metrics:");
    for (series, value) in Scrape::parse(&executor.metrics_text()).series() {
        let _ = writeln!(text, "  {series} {value}");
    }
    let instance = removed
        .iter()
        .map(|r| &r.container)
        .chain(&live)
        .find_map(|c| c.labels.get(LABEL_INSTANCE).cloned());
    Summary { text, instance }
}

/// Runs `scenario`; with `record`, also summarises the run (see [`record_seed`]).
async fn simulate(scenario: Scenario, record: bool) -> (Result<(), String>, Summary) {
    let engine = memory::engine(&scenario.images);
    engine.set_delays(scenario.remove_delay, scenario.kill_delay);
    let executor = match memory::start_on(&engine, SIM_HOST, scenario.config.clone()).await {
        Ok(executor) => executor,
        Err(e) => {
            return (
                Err(format!("executor did not start: {e}")),
                Summary::default(),
            )
        }
    };
    let t0 = Instant::now();
    let mut answers = Vec::new();
    let verdict = drive(&scenario, &engine, &executor, t0, &mut answers).await;
    let summary = if record {
        summarise(&scenario, &engine, &executor, t0, &answers)
    } else {
        Summary::default()
    };
    (verdict, summary)
}

/// Plays the scenario's timeline against the executor and checks the invariants; the
/// answers end up in `answers`.
async fn drive(
    scenario: &Scenario,
    engine: &MemoryEngine,
    executor: &Arc<Executor>,
    t0: Instant,
    answers: &mut Vec<Answered>,
) -> Result<(), String> {
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
                tracing::debug!("sim: request {i} (key {key}, {input})");
                let request = TaskRequest {
                    key: scenario.keys[*key].clone(),
                    input: Bytes::from(input.clone()),
                };
                let executor = Arc::clone(executor);
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
                    let id = &list[n % list.len()].id;
                    tracing::debug!("sim: docker rm -f {id} from outside");
                    engine.kill_from_outside(id);
                }
            }
            Step::Fault(Fault::Unreachable(d)) => {
                tracing::debug!("sim: the engine is unreachable for {d:?}");
                engine.set_unreachable(true)
            }
            Step::Reachable => {
                tracing::debug!("sim: the engine is reachable again");
                engine.set_unreachable(false)
            }
            Step::Fault(Fault::FailRemovals(n)) => {
                tracing::debug!("sim: the next {n} removals fail");
                engine.fail_removals(n)
            }
            Step::Fault(Fault::Pause(d, update)) => {
                tracing::debug!("sim: pause for {d:?}, update {update:?}");
                paused_depth += 1;
                executor.pause().await;
                if let Some(update) = update {
                    // May fail while the engine is unreachable: then nothing changes.
                    let updated = executor.update_config(update).await;
                    tracing::debug!("sim: update-config: {updated:?}");
                }
            }
            Step::Unpause => {
                paused_depth -= 1;
                tracing::debug!("sim: pause ends (depth {paused_depth})");
                if paused_depth == 0 {
                    executor.unpause();
                }
            }
            Step::Check => {}
        }
        tokio::task::yield_now().await;
        check_budget(executor, engine)?;
    }

    // Every request is answered, once, in time.
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
    for a in answers.iter() {
        if a.took > bound {
            return Err(format!(
                "request {} ({:?}) answered after {:?}, beyond {bound:?}: {:?}",
                a.index, scenario.requests[a.index], a.took, a.result
            ));
        }
    }

    // The metrics count each answer once, by outcome.
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for a in answers.iter() {
        let outcome = match &a.result {
            Ok(_) => "success",
            Err(e) => e.outcome(),
        };
        *expected.entry(outcome).or_default() += 1;
    }
    let scrape = Scrape::parse(&executor.metrics_text());
    let mut counted: BTreeMap<&str, u64> = BTreeMap::new();
    for (series, n) in scrape.series() {
        if let Some(rest) = series.strip_prefix("meca_requests_total{outcome=\"") {
            let outcome = rest.strip_suffix("\"}").unwrap();
            let n = n as u64;
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
    tracing::debug!("sim: stop");
    executor.shutdown().await;
    if !engine.containers().is_empty() {
        return Err(format!(
            "left after stop: {}",
            describe_all(&engine.containers())
        ));
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
    let scrape = Scrape::parse(&executor.metrics_text());
    let predicted = scrape.value("meca_predicted_prewarms_total") as u64;
    PREDICTED_PREWARMS.fetch_add(predicted, Ordering::Relaxed);
    UNUSED_PREWARMS.fetch_add(
        scrape.value("meca_predicted_prewarms_unused_total") as u64,
        Ordering::Relaxed,
    );
    let mut unserved = Vec::new();
    for gone in engine.removed() {
        let c = &gone.container;
        // Sandbox holders and spares are started ahead of any request.
        let ahead = c.holder || memory::is_spare(c);
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

/// Log lines carry the virtual time since the recorded run's runtime started, which is
/// what a replay needs.
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let origin = RECORDING.with(|r| r.borrow().as_ref().map(|(_, origin)| *origin));
        let since = origin.map_or(Duration::ZERO, |o| {
            Instant::now().saturating_duration_since(o)
        });
        write!(w, "{:>9.3}s", since.as_secs_f64())
    }
}

/// The one command that replays `seed` (through the test `test`), printing its transcript.
fn replay_command(seed: u64, test: &str) -> String {
    format!("SIM_SEED={seed} cargo test --test simulator -- --nocapture --exact {test}")
}

/// `SIM_SEED`, when set.
fn seed_from_env() -> Option<u64> {
    let seed = std::env::var("SIM_SEED").ok()?;
    Some(seed.parse().expect("SIM_SEED is a number"))
}

#[test]
fn simulated_workloads_keep_the_invariants() {
    const NAME: &str = "simulated_workloads_keep_the_invariants";
    if let Some(seed) = seed_from_env() {
        let run = record_seed(seed);
        print!("{}", run.transcript);
        if let Err(e) = run.verdict {
            panic!("seed {seed}: {e}\n  replay: {}", replay_command(seed, NAME));
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
                            run_seed(seed).err().map(|e| {
                                format!(
                                    "seed {seed}: {e}\n  replay: {}",
                                    replay_command(seed, NAME)
                                )
                            })
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

/// One seed is one run: recorded twice in this process (each run on a runtime of its own,
/// with maps whose hashers differ), a seed's transcripts are equal byte for byte: every log
/// line of the executor (which container it started, evicted, reaped or removed, when),
/// every container the engine had, every answer, every metric and the verdict. And a run
/// recorded is the run unrecorded (as `simulated_workloads_keep_the_invariants` runs it):
/// the same containers, answers, metrics and verdict. `SIM_SEED=S` checks seed S alone.
#[test]
fn a_seed_is_one_run_byte_for_byte() {
    const NAME: &str = "a_seed_is_one_run_byte_for_byte";
    let seeds: Vec<u64> = match seed_from_env() {
        Some(seed) => vec![seed],
        None => determinism_seeds(),
    };
    for seed in seeds {
        let first = record_seed(seed);
        let second = record_seed(seed);
        let (verdict, quiet) = memory::run_paused(simulate(generate(seed), true));
        let runs = [
            ("recorded twice", &first.transcript, &second.transcript),
            ("recorded and not", &first.summary, &quiet.text),
        ];
        for (how, a, b) in runs {
            if a != b {
                let dir = std::env::temp_dir();
                let [a_at, b_at] = [(1, a), (2, b)].map(|(run, text)| {
                    let path = dir.join(format!("simulator-seed-{seed}-run-{run}.txt"));
                    std::fs::write(&path, text).expect("transcript written");
                    path.display().to_string()
                });
                panic!(
                    "seed {seed} ran two different ways ({how}); first difference:\n{}\n  \
                     both: diff {a_at} {b_at}\n  replay: {}",
                    first_difference(a, b),
                    replay_command(seed, NAME)
                );
            }
        }
        assert_eq!(
            first.verdict, verdict,
            "seed {seed}: the verdict recorded and not"
        );
    }
}

/// The seeds [`a_seed_is_one_run_byte_for_byte`] records twice: a third under `keep_alive:
/// adaptive`, most with faults, spares and sandbox holders. Each of these went two ways
/// before its cause was fixed: 13 (two idle containers used last at the same instant: which
/// one the pool's map gave first was evicted), 34 (`tokio::select!` polling its branches in
/// a random order), 303 (two keys due for a predicted pre-warm at once, in the keep-alive
/// policy's map order); 1 (waiters of one start woken in the order of a random draw) and
/// most others too.
fn determinism_seeds() -> Vec<u64> {
    (0..60).chain([303]).collect()
}

/// Where two transcripts first differ: the line number, the line before, and each line.
fn first_difference(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let at = (0..a.len().max(b.len()))
        .find(|&i| a.get(i) != b.get(i))
        .unwrap_or(0);
    let line = |lines: &[&str], i: usize| lines.get(i).copied().unwrap_or("(end)").to_string();
    let before = if at > 0 {
        line(&a, at - 1)
    } else {
        "(start)".to_string()
    };
    format!(
        "  line {}, after: {before}\n  first:  {}\n  second: {}",
        at + 1,
        line(&a, at),
        line(&b, at)
    )
}
