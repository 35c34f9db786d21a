//! Keep-alive trace replay: a synthetic day of task invocations shaped after the
//! characterisation in "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020), replayed
//! through the executor's real policy — the real `Executor` on the in-memory engine, under
//! tokio's paused clock — once per keep-alive policy: fixed keep-alives of 1 to 60 minutes,
//! and `keep_alive: adaptive` under idle timeouts (its cap) of 5 to 60 minutes.
//!
//! For each policy it reports the share of requests that waited for a container start (cold
//! starts, from the executor's metrics) and the idle memory-time: the sum over containers of
//! their memory × the time they were alive with no request in flight (starting, idle, and
//! pre-warmed but unused alike), in MB·s (and GB·h, 1 GB = 1024 MB). It prints markdown
//! tables and writes an SVG chart: cold starts against idle memory-time, the fixed policies
//! as a curve, the adaptive ones as points.
//!
//! The trace, seeded: `--keys` task keys (300) over `--hours` (24). Invocation rates are
//! log-normal, fitted to the paper's figures (45% of keys invoked at most once an hour, 81%
//! at most once a minute) and clipped to once a day .. once a second; the run prints the
//! shares its trace has (seed 1: 49% and 86%). A fifth of the keys are
//! timers (a fixed period, snapped to a usual one, fired up to a second late), a fifth are
//! bursty (bursts of 5 to 50 requests a few seconds apart), the rest Poisson. Each key runs
//! 50 ms to 2 s a request, takes 0.3 to 2 s to start, and holds 128 MB to 1 GB. The budget
//! holds every key at once, so eviction plays no part.
//!
//! Usage: `cargo run --release --example replay -- [--seed N] [--svg PATH] [--hours H] [--keys K]`
//! (seed 1, `keep-alive.svg`). The policies run in parallel, one per core.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use mecanywhere_executor::config::{Config, KeepAlivePolicy};
use mecanywhere_executor::engine::memory::{ImageScript, MemoryEngine, StartScript};
use mecanywhere_executor::engine::LABEL_TASK_KEY;
use mecanywhere_executor::executor::{Executor, TaskRequest};
use mecanywhere_executor::host::{Host, HostCapacity};
use mecanywhere_executor::keepalive::Params;
use mecanywhere_executor::resources::Demand;
use mecanywhere_executor::task::{Runtime, TaskKey};

const MINUTE: Duration = Duration::from_secs(60);
/// MB·s in one GB·h.
const MB_S_PER_GB_H: f64 = 1024.0 * 3600.0;
/// Fixed keep-alives replayed, in minutes.
const FIXED_MINUTES: [u64; 7] = [1, 2, 5, 10, 20, 30, 60];
/// Idle timeouts (the cap) of the adaptive policies replayed, in minutes.
const ADAPTIVE_MINUTES: [u64; 5] = [5, 10, 20, 30, 60];
/// The priced policies replayed: idle timeout (the cap) in minutes, and the price of a warm
/// start in MB·s (`keep_alive_price`).
const PRICED: [(u64, u64); 7] = [
    (60, 76_800),
    (60, 96_000),
    (60, 115_200),
    (60, 134_400),
    (60, 153_600),
    (60, 192_000),
    (60, 230_400),
];
/// The target: no more cold starts than fixed `TARGET_OF` minutes at no more than
/// `TARGET_MEMORY_SHARE` of its idle memory-time.
const TARGET_OF: u64 = 10;
const TARGET_MEMORY_SHARE: f64 = 0.7;

const USAGE: &str = "usage: replay [--seed N] [--svg PATH] [--hours H] [--keys K] [--priced M:P,..] [--only PREFIX,..]
  --seed N      seed of the synthetic trace (1)
  --svg PATH    where the chart goes (keep-alive.svg)
  --hours H     virtual hours of trace (24)
  --keys K      task keys in the trace (300)
  --priced M:P  the priced policies: idle timeout M minutes, price P MB·s (the default list)
  --only P      replay only the policies whose label starts with one of these (all)
  --per-key CSV also write each policy's requests, cold starts and idle MB·s per key";

struct Args {
    seed: u64,
    svg: PathBuf,
    hours: u64,
    keys: usize,
    priced: Vec<(u64, u64)>,
    only: Vec<String>,
    per_key: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seed: 1,
        svg: PathBuf::from("keep-alive.svg"),
        hours: 24,
        keys: 300,
        priced: PRICED.to_vec(),
        only: Vec::new(),
        per_key: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--seed" => args.seed = number(value()?)?,
            "--svg" => args.svg = PathBuf::from(value()?),
            "--hours" => args.hours = number(value()?)?.clamp(1, 24 * 7),
            "--keys" => args.keys = number(value()?)?.clamp(1, 5000) as usize,
            "--priced" => {
                args.priced = value()?
                    .split(',')
                    .map(|pair| {
                        let (m, p) = pair
                            .split_once(':')
                            .ok_or(format!("--priced: {pair:?} is not MINUTES:PRICE"))?;
                        Ok((number(m.to_string())?.max(1), number(p.to_string())?.max(1)))
                    })
                    .collect::<Result<_, String>>()?
            }
            "--per-key" => args.per_key = Some(PathBuf::from(value()?)),
            "--only" => args.only = value()?.split(',').map(str::to_string).collect(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// SplitMix64: small, seeded, good enough for a synthetic trace.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    Timer,
    Poisson,
    Bursty,
}

const PATTERNS: [Pattern; 3] = [Pattern::Timer, Pattern::Poisson, Pattern::Bursty];

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Timer => "timer",
            Pattern::Poisson => "Poisson",
            Pattern::Bursty => "bursty",
        }
    }
}

struct Function {
    key: TaskKey,
    pattern: Pattern,
    start: Duration,
}

struct Invocation {
    at: Duration,
    function: usize,
    exec_ms: u64,
}

struct Trace {
    functions: Vec<Function>,
    invocations: Vec<Invocation>,
    horizon: Duration,
}

/// Timer periods people configure, in seconds.
const PERIODS: [f64; 20] = [
    1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0,
    7200.0, 10800.0, 14400.0, 21600.0, 43200.0, 86400.0,
];

fn generate(seed: u64, keys: usize, horizon: Duration) -> Trace {
    let mut rng = Rng(seed);
    let day = 86_400.0;
    let end = horizon.as_secs_f64();
    let mut functions = Vec::new();
    let mut invocations = Vec::new();
    for i in 0..keys {
        // Invocations a day: log-normal, ln-mean 3.69 and ln-sd 4.07 put 45% at most 24 a
        // day and 81% at most 1440; clipped to once a day .. once a second.
        let per_day = (3.69 + 4.07 * rng.normal()).exp().clamp(1.0, day);
        let mean_gap = day / per_day;
        let pattern = match rng.unit() {
            u if u < 0.2 => Pattern::Timer,
            u if u < 0.4 => Pattern::Bursty,
            _ => Pattern::Poisson,
        };
        let mem_mb = match rng.unit() {
            u if u < 0.4 => 128,
            u if u < 0.7 => 256,
            u if u < 0.9 => 512,
            _ => 1024,
        };
        let function = Function {
            key: TaskKey {
                image: format!("replay/fn-{i:04}:v1"),
                runtime: Runtime::Container,
                demand: Demand {
                    milli_cpu: 250 * (1 + rng.next_u64() % 4),
                    mem_mb,
                },
                gpu_count: 0,
                use_sgx: false,
            },
            pattern,
            start: Duration::from_secs_f64(rng.log_uniform(0.3, 2.0)),
        };
        let exec_ms = rng.log_uniform(50.0, 2_000.0);
        let mut arrivals = Vec::new();
        match pattern {
            Pattern::Timer => {
                let period = PERIODS
                    .iter()
                    .copied()
                    .min_by(|a, b| {
                        let d = |p: f64| (p.ln() - mean_gap.ln()).abs();
                        d(*a).total_cmp(&d(*b))
                    })
                    .unwrap_or(mean_gap);
                let mut t = rng.unit() * period;
                while t < end {
                    // Timers fire a little late, never early.
                    arrivals.push(t + rng.unit());
                    t += period;
                }
            }
            Pattern::Poisson => {
                let mut t = rng.exp(mean_gap);
                while t < end {
                    arrivals.push(t);
                    t += rng.exp(mean_gap);
                }
            }
            Pattern::Bursty => {
                let size = rng.log_uniform(5.0, 50.0);
                let inner = rng.log_uniform(1.0, 20.0);
                let burst_gap = mean_gap * size;
                let mut t = rng.exp(burst_gap);
                while t < end {
                    let n = 1 + rng.exp(size - 1.0).round() as usize;
                    let mut at = t;
                    for _ in 0..n {
                        arrivals.push(at);
                        at += rng.exp(inner);
                    }
                    t += rng.exp(burst_gap);
                }
            }
        }
        for at in arrivals.into_iter().filter(|at| *at < end) {
            let exec = (exec_ms * (0.25 * rng.normal()).exp()).clamp(50.0, 2_000.0);
            invocations.push(Invocation {
                at: Duration::from_secs_f64(at),
                function: i,
                exec_ms: exec as u64,
            });
        }
        functions.push(function);
    }
    invocations.sort_by_key(|inv| inv.at);
    Trace {
        functions,
        invocations,
        horizon,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    Fixed(u64),
    Adaptive(u64),
    /// Idle timeout in minutes, price of a warm start in MB·s.
    Priced(u64, u64),
}

impl Policy {
    fn label(self) -> String {
        match self {
            Policy::Fixed(m) => format!("fixed {m} min"),
            Policy::Adaptive(m) => format!("adaptive (idle_timeout {m} min)"),
            Policy::Priced(m, price) => {
                format!("priced {} (idle_timeout {m} min)", price_label(price))
            }
        }
    }

    fn order(self) -> (u8, u64, u64) {
        match self {
            Policy::Fixed(m) => (0, m, 0),
            Policy::Adaptive(m) => (1, m, 0),
            Policy::Priced(m, price) => (2, m, price),
        }
    }
}

/// A price of a warm start, in MB·s and as memory × minutes of a 128 MB container.
fn price_label(price: u64) -> String {
    format!(
        "{price} MB·s (128 MB × {} min)",
        price as f64 / 128.0 / 60.0
    )
}

/// What one policy did with the trace.
struct Outcome {
    policy: Policy,
    requests: u64,
    cold: u64,
    /// Per pattern: requests, cold ones, idle MB·s.
    by_pattern: [(u64, u64, f64); 3],
    idle_mb_s: f64,
    predicted: u64,
    unused: u64,
    evictions: u64,
    failed: u64,
    /// Per key: requests, cold ones, idle MB·s.
    by_key: Vec<(u64, u64, f64)>,
}

impl Outcome {
    fn cold_percent(&self) -> f64 {
        self.cold as f64 * 100.0 / self.requests.max(1) as f64
    }

    fn idle_gb_h(&self) -> f64 {
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

fn replay(trace: &Trace, policy: Policy) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(replay_on_paused_clock(trace, policy))
}

/// The value of a series of the `/metrics` text, 0 when absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

async fn replay_on_paused_clock(trace: &Trace, policy: Policy) -> Outcome {
    let engine = MemoryEngine::new();
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
        ..Config::default()
    };
    let host = Host::fixed(HostCapacity {
        cores: 4096,
        mem_mb: 2 * 1024 * 1024,
    });
    let executor = Executor::start_on(
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
    .expect("the executor starts on the in-memory engine");
    let t0 = Instant::now();
    let done: Arc<Mutex<Vec<Done>>> =
        Arc::new(Mutex::new(Vec::with_capacity(trace.invocations.len())));
    let requests = TaskTracker::new();
    for inv in &trace.invocations {
        let at = t0 + inv.at;
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        let executor = Arc::clone(&executor);
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
    let horizon = t0 + trace.horizon;
    let metrics = executor.metrics_text();

    // Alive time of each key's containers, up to the horizon.
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
    // Busy time of each key: the union of its requests' run times, up to the horizon.
    let done = std::mem::take(&mut *done.lock().expect("no panic holding it"));
    let mut runs: Vec<Vec<(Instant, Instant)>> = vec![Vec::new(); trace.functions.len()];
    let mut outcome = Outcome {
        policy,
        requests: done.len() as u64,
        cold: metric(
            &metrics,
            "meca_request_duration_seconds_count{path=\"cold\"}",
        ),
        by_pattern: [(0, 0, 0.0); 3],
        idle_mb_s: 0.0,
        predicted: metric(&metrics, "meca_predicted_prewarms_total"),
        unused: metric(&metrics, "meca_predicted_prewarms_unused_total"),
        evictions: metric(&metrics, "meca_evictions_total"),
        failed: 0,
        by_key: vec![(0, 0, 0.0); trace.functions.len()],
    };
    let slot = |f: &Function| PATTERNS.iter().position(|p| *p == f.pattern).unwrap_or(0);
    let mut own_cold = 0;
    let mut per_key_requests = vec![0u64; trace.functions.len()];
    for d in &done {
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
    for (i, mut runs) in runs.into_iter().enumerate() {
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
        let f = &trace.functions[i];
        let idle = alive[i].saturating_sub(busy).as_secs_f64() * f.key.demand.mem_mb as f64;
        outcome.idle_mb_s += idle;
        outcome.by_pattern[slot(f)].2 += idle;
        outcome.by_key[i].0 = per_key_requests[i];
        outcome.by_key[i].2 = idle;
    }
    executor.shutdown().await;
    outcome
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let wall = std::time::Instant::now();
    let trace = generate(args.seed, args.keys, Duration::from_secs(args.hours * 3600));
    describe(&trace, args.seed);
    let policies: VecDeque<Policy> = FIXED_MINUTES
        .iter()
        .map(|m| Policy::Fixed(*m))
        .chain(ADAPTIVE_MINUTES.iter().map(|m| Policy::Adaptive(*m)))
        .chain(args.priced.iter().map(|(m, p)| Policy::Priced(*m, *p)))
        .filter(|p| {
            args.only.is_empty() || args.only.iter().any(|k| p.label().starts_with(k.as_str()))
        })
        .collect();
    let queue = Mutex::new(policies);
    let outcomes = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(policy) = queue.lock().expect("queue").pop_front() else {
                    return;
                };
                let started = std::time::Instant::now();
                let outcome = replay(&trace, policy);
                eprintln!(
                    "replayed {} in {:.1} s",
                    policy.label(),
                    started.elapsed().as_secs_f64()
                );
                outcomes.lock().expect("outcomes").push(outcome);
            });
        }
    });
    let mut outcomes = outcomes.into_inner().expect("outcomes");
    outcomes.sort_by_key(|o| o.policy.order());
    print_tables(&outcomes);
    print_target(&outcomes);
    if let Some(path) = &args.per_key {
        if let Err(e) = write_per_key(&outcomes, &trace, path) {
            eprintln!("could not write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    match draw(&outcomes, &args.svg, &trace, args.seed) {
        Ok(()) => println!("\nchart: {}", args.svg.display()),
        Err(e) => {
            eprintln!("could not write {}: {e}", args.svg.display());
            std::process::exit(1);
        }
    }
    println!("wall time: {:.1} s", wall.elapsed().as_secs_f64());
}

fn describe(trace: &Trace, seed: u64) {
    let hours = trace.horizon.as_secs_f64() / 3600.0;
    let mut per_key = vec![0u64; trace.functions.len()];
    for inv in &trace.invocations {
        per_key[inv.function] += 1;
    }
    let at_most = |per_hour: f64| {
        per_key
            .iter()
            .filter(|n| **n as f64 <= per_hour * hours)
            .count() as f64
            * 100.0
            / per_key.len() as f64
    };
    let count = |p: Pattern| trace.functions.iter().filter(|f| f.pattern == p).count();
    println!(
        "trace (seed {seed}): {} keys ({} timer, {} Poisson, {} bursty), {} requests over {hours} h; \
         {:.0}% of keys invoked at most once an hour, {:.0}% at most once a minute\n",
        trace.functions.len(),
        count(Pattern::Timer),
        count(Pattern::Poisson),
        count(Pattern::Bursty),
        trace.invocations.len(),
        at_most(1.0),
        at_most(60.0),
    );
}

fn print_tables(outcomes: &[Outcome]) {
    println!("| policy | requests | cold starts | cold % | idle memory-time (MB·s) | idle GB·h | predicted pre-warms (unused) | evictions | failed |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let predicted = match o.policy {
            Policy::Fixed(_) => "—".to_string(),
            Policy::Adaptive(_) | Policy::Priced(..) => format!("{} ({})", o.predicted, o.unused),
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.3e} | {:.1} | {predicted} | {} | {} |",
            o.policy.label(),
            o.requests,
            o.cold,
            o.cold_percent(),
            o.idle_mb_s,
            o.idle_gb_h(),
            o.evictions,
            o.failed
        );
    }
    println!("\nBy invocation pattern (cold % / idle GB·h):\n");
    println!("| policy | {} |", PATTERNS.map(|p| p.name()).join(" | "));
    println!("|---|---:|---:|---:|");
    for o in outcomes {
        let cells: Vec<String> = o
            .by_pattern
            .iter()
            .map(|(n, cold, idle)| {
                format!(
                    "{:.1} / {:.1}",
                    *cold as f64 * 100.0 / (*n).max(1) as f64,
                    idle / MB_S_PER_GB_H
                )
            })
            .collect();
        println!("| {} | {} |", o.policy.label(), cells.join(" | "));
    }
}

/// One line per policy and key: policy, key, pattern, memory, requests, cold starts, idle
/// MB·s.
fn write_per_key(
    outcomes: &[Outcome],
    trace: &Trace,
    path: &std::path::Path,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "policy,key,pattern,mem_mb,requests,cold,idle_mb_s")?;
    for o in outcomes {
        for (i, (requests, cold, idle)) in o.by_key.iter().enumerate() {
            let f = &trace.functions[i];
            writeln!(
                out,
                "{},{i},{},{},{requests},{cold},{idle:.0}",
                o.policy.label().replace(',', ";"),
                f.pattern.name(),
                f.key.demand.mem_mb
            )?;
        }
    }
    out.flush()
}

fn fixed(outcomes: &[Outcome], minutes: u64) -> Option<&Outcome> {
    outcomes.iter().find(|o| o.policy == Policy::Fixed(minutes))
}

fn print_target(outcomes: &[Outcome]) {
    let Some(reference) = fixed(outcomes, TARGET_OF) else {
        return;
    };
    let budget = reference.idle_mb_s * TARGET_MEMORY_SHARE;
    println!(
        "\ntarget: no more cold starts than fixed {TARGET_OF} min ({}, {:.2}%) at no more than {:.0}% of its idle memory-time ({:.1} GB·h)",
        reference.cold,
        reference.cold_percent(),
        TARGET_MEMORY_SHARE * 100.0,
        budget / MB_S_PER_GB_H
    );
    for o in outcomes
        .iter()
        .filter(|o| !matches!(o.policy, Policy::Fixed(_)))
    {
        let met = o.cold <= reference.cold && o.idle_mb_s <= budget;
        println!(
            "- {}: {} cold ({:+.1}%), {:.1} GB·h idle ({:.0}% of fixed {TARGET_OF} min): {}",
            o.policy.label(),
            o.cold,
            (o.cold as f64 / reference.cold.max(1) as f64 - 1.0) * 100.0,
            o.idle_gb_h(),
            o.idle_mb_s / reference.idle_mb_s * 100.0,
            if met { "met" } else { "not met" }
        );
    }
}

fn draw(
    outcomes: &[Outcome],
    path: &std::path::Path,
    trace: &Trace,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let point = |o: &Outcome| (o.idle_gb_h(), o.cold_percent().max(0.001));
    let fixed_points: Vec<((f64, f64), u64)> = outcomes
        .iter()
        .filter_map(|o| match o.policy {
            Policy::Fixed(m) => Some((point(o), m)),
            _ => None,
        })
        .collect();
    let adaptive_points: Vec<((f64, f64), u64)> = outcomes
        .iter()
        .filter_map(|o| match o.policy {
            Policy::Adaptive(m) => Some((point(o), m)),
            _ => None,
        })
        .collect();
    // The priced policies, one curve per idle timeout (the prices swept along it).
    let mut priced_caps: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| match o.policy {
            Policy::Priced(m, _) => Some(m),
            _ => None,
        })
        .collect();
    priced_caps.dedup();
    let priced_points = |cap: u64| -> Vec<((f64, f64), u64)> {
        outcomes
            .iter()
            .filter_map(|o| match o.policy {
                Policy::Priced(m, price) if m == cap => Some((point(o), price)),
                _ => None,
            })
            .collect()
    };
    let all: Vec<(f64, f64)> = outcomes.iter().map(point).collect();
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max) * 1.1;
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.5;
    let y_min = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min) / 1.5;

    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!(
        "Keep-alive policies on a {} h synthetic trace ({} keys, {} requests, seed {seed})",
        trace.horizon.as_secs() / 3600,
        trace.functions.len(),
        trace.invocations.len()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("idle memory-time, GB·h: memory × time alive without a request in flight")
        .y_desc("cold starts, % of requests (log scale)")
        .x_labels(12)
        .y_labels(12)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}%"))
        .draw()?;

    // The target: no more cold starts than fixed 10 min, at most 70% of its memory.
    if let Some(reference) = fixed(outcomes, TARGET_OF) {
        let (x, y) = (
            reference.idle_gb_h() * TARGET_MEMORY_SHARE,
            reference.cold_percent(),
        );
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y_min), (x, y)],
                GREEN.mix(0.12).filled(),
            )))?
            .label(format!(
                "target: cold starts ≤ fixed {TARGET_OF} min, idle memory ≤ {:.0}% of it",
                TARGET_MEMORY_SHARE * 100.0
            ))
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 16, y + 5)], GREEN.mix(0.3).filled())
            });
    }

    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(
            fixed_points.iter().map(|(p, _)| *p),
            blue.stroke_width(2),
        ))?
        .label("fixed keep-alive (idle_timeout)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], blue.stroke_width(2)));
    chart.draw_series(
        fixed_points
            .iter()
            .map(|(p, _)| Circle::new(*p, 4, blue.filled())),
    )?;
    chart.draw_series(fixed_points.iter().map(|(p, m)| {
        EmptyElement::at(*p)
            + Text::new(format!("{m} min"), (6, -18), ("sans-serif", 14).into_font())
    }))?;

    let orange = RGBColor(230, 85, 13);
    chart.draw_series(DashedLineSeries::new(
        adaptive_points.iter().map(|(p, _)| *p),
        6,
        4,
        orange.stroke_width(1),
    ))?;
    chart
        .draw_series(
            adaptive_points
                .iter()
                .map(|(p, _)| TriangleMarker::new(*p, 9, orange.filled())),
        )?
        .label("adaptive, per key (histogram), by idle_timeout (its cap)")
        .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 6, orange.filled()));
    chart.draw_series(adaptive_points.iter().map(|(p, m)| {
        EmptyElement::at(*p)
            + Text::new(
                format!("≤ {m} min"),
                (-58, 6),
                ("sans-serif", 14).into_font().color(&orange),
            )
    }))?;

    let purples = [
        RGBColor(117, 52, 170),
        RGBColor(200, 60, 160),
        RGBColor(40, 150, 90),
    ];
    for (i, cap) in priced_caps.iter().enumerate() {
        let color = purples[i % purples.len()];
        let points = priced_points(*cap);
        chart.draw_series(LineSeries::new(
            points.iter().map(|(p, _)| *p),
            color.stroke_width(2),
        ))?;
        chart
            .draw_series(points.iter().map(|(p, _)| {
                EmptyElement::at(*p) + Rectangle::new([(-5, -5), (5, 5)], color.filled())
            }))?
            .label(format!(
                "priced, across keys, idle_timeout {cap} min; by price (128 MB × minutes)"
            ))
            .legend(move |(x, y)| {
                Rectangle::new([(x + 3, y - 5), (x + 13, y + 5)], color.filled())
            });
        chart.draw_series(points.iter().map(|(p, price)| {
            EmptyElement::at(*p)
                + Text::new(
                    format!("{:.0}", *price as f64 / 128.0 / 60.0),
                    (8, 4),
                    ("sans-serif", 13).into_font().color(&color),
                )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
