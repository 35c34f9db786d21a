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
//! Usage: `cargo run --release -p mecanywhere-tools --bin replay -- [--seed N] [--svg PATH]
//! [--hours H] [--keys K] [--priced M:P,..] [--only PREFIX,..] [--per-key CSV]` (seed 1,
//! `keep-alive.svg`). The policies run in parallel, one per core.
//!
//! Modules: [`trace`] generates the trace, [`policy`] lists the policies, [`simulate`]
//! replays one, [`report`] prints the tables and the target, [`chart`] draws the SVG.

mod chart;
mod policy;
mod report;
mod simulate;
mod trace;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;

use policy::{Policy, PRICED};

#[derive(Parser, Debug)]
#[command(
    name = "replay",
    about = "Replays a synthetic trace of invocations through the executor's keep-alive \
             policies (in memory, on a virtual clock) and reports cold starts against idle \
             memory-time",
    args_override_self = true
)]
struct Args {
    /// seed of the synthetic trace
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// where the chart goes
    #[arg(long, value_name = "PATH", default_value = "keep-alive.svg")]
    svg: PathBuf,
    /// virtual hours of trace (1 to 168)
    #[arg(long, value_name = "H", default_value_t = 24)]
    hours: u64,
    /// task keys in the trace (1 to 5000)
    #[arg(long, value_name = "K", default_value_t = 300)]
    keys: usize,
    /// the priced policies: idle timeout M minutes, price P MB·s (each at least 1)
    #[arg(long, value_name = "M:P,..", default_value_t = PricedList(PRICED.to_vec()))]
    priced: PricedList,
    /// replay only the policies whose label starts with one of these [default: all]
    #[arg(long, value_name = "PREFIX,..")]
    only: Option<String>,
    /// also write each policy's requests, cold starts and idle MB·s per key
    #[arg(long = "per-key", value_name = "CSV")]
    per_key: Option<PathBuf>,
}

impl Args {
    /// The command line, with the trace's size brought into its bounds.
    fn parse_bounded() -> Args {
        let mut args = Args::parse();
        args.hours = args.hours.clamp(1, 24 * 7);
        args.keys = args.keys.clamp(1, 5000);
        args
    }
}

/// `--priced`: `MINUTES:PRICE` pairs, comma-separated.
#[derive(Clone, Debug, PartialEq)]
struct PricedList(Vec<(u64, u64)>);

impl std::str::FromStr for PricedList {
    type Err = String;

    fn from_str(list: &str) -> Result<PricedList, String> {
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{v:?} is not a number"))
        };
        list.split(',')
            .map(|pair| {
                let (m, p) = pair
                    .split_once(':')
                    .ok_or(format!("{pair:?} is not MINUTES:PRICE"))?;
                Ok((number(m)?.max(1), number(p)?.max(1)))
            })
            .collect::<Result<_, String>>()
            .map(PricedList)
    }
}

impl std::fmt::Display for PricedList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs: Vec<String> = self.0.iter().map(|(m, p)| format!("{m}:{p}")).collect();
        f.write_str(&pairs.join(","))
    }
}

fn main() {
    let args = Args::parse_bounded();
    let wall = std::time::Instant::now();
    let trace = trace::generate(args.seed, args.keys, Duration::from_secs(args.hours * 3600));
    trace::describe(&trace, args.seed);
    let queue: Mutex<VecDeque<Policy>> =
        Mutex::new(policy::policies(&args.priced.0, args.only.as_deref()).into());
    let outcomes = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(policy) = queue.lock().expect("queue").pop_front() else {
                    return;
                };
                let started = std::time::Instant::now();
                let outcome = simulate::replay(&trace, policy);
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
    report::print_tables(&outcomes);
    report::print_target(&outcomes);
    if let Some(path) = &args.per_key {
        if let Err(e) = report::write_per_key(&outcomes, &trace, path) {
            eprintln!("could not write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    match chart::draw(&outcomes, &args.svg, &trace, args.seed) {
        Ok(()) => println!("\nchart: {}", args.svg.display()),
        Err(e) => {
            eprintln!("could not write {}: {e}", args.svg.display());
            std::process::exit(1);
        }
    }
    println!("wall time: {:.1} s", wall.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("replay").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_is_well_formed_and_its_defaults_are_the_old_ones() {
        Args::command().debug_assert();
        let args = parse(&[]).unwrap();
        assert_eq!((args.seed, args.hours, args.keys), (1, 24, 300));
        assert_eq!(args.svg, PathBuf::from("keep-alive.svg"));
        assert_eq!(args.priced, PricedList(PRICED.to_vec()));
        assert_eq!((args.only, args.per_key), (None, None));
    }

    #[test]
    fn priced_lists() {
        let args = parse(&["--priced", "30:50000,0:0", "--only", "fixed 10 ,priced"]).unwrap();
        assert_eq!(args.priced, PricedList(vec![(30, 50_000), (1, 1)]));
        assert_eq!(args.only.as_deref(), Some("fixed 10 ,priced"));
        for bad in ["30", "30:x", "a:1", "30:1,"] {
            assert!(parse(&["--priced", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["--seed", "x"]).is_err());
        assert!(parse(&["--frobnicate"]).is_err());
    }
}
