//! The synthetic trace: task keys shaped after the characterisation in "Serverless in the
//! Wild" (Shahrad et al., USENIX ATC 2020), each with an invocation pattern, and their
//! invocations over the horizon, seeded.

use std::time::Duration;

use mecanywhere_executor::resources::Demand;
use mecanywhere_executor::task::{Runtime, TaskKey};

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
pub enum Pattern {
    Timer,
    Poisson,
    Bursty,
}

pub const PATTERNS: [Pattern; 3] = [Pattern::Timer, Pattern::Poisson, Pattern::Bursty];

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Timer => "timer",
            Pattern::Poisson => "Poisson",
            Pattern::Bursty => "bursty",
        }
    }
}

pub struct Function {
    pub key: TaskKey,
    pub pattern: Pattern,
    /// How long its container takes to start.
    pub start: Duration,
}

pub struct Invocation {
    pub at: Duration,
    /// Index of its key in [`Trace::functions`].
    pub function: usize,
    pub exec_ms: u64,
}

pub struct Trace {
    pub functions: Vec<Function>,
    /// In time order.
    pub invocations: Vec<Invocation>,
    pub horizon: Duration,
}

/// Timer periods people configure, in seconds.
const PERIODS: [f64; 20] = [
    1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0,
    7200.0, 10800.0, 14400.0, 21600.0, 43200.0, 86400.0,
];

/// The trace of `keys` task keys over `horizon`, from `seed`.
pub fn generate(seed: u64, keys: usize, horizon: Duration) -> Trace {
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

/// Prints the trace's shape: its keys by pattern, its requests, and how often keys are invoked.
pub fn describe(trace: &Trace, seed: u64) {
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
