//! Adaptive keep-alive (`keep_alive: adaptive`): per task key, the idle times between
//! requests, and what they predict: how long an idle container is worth keeping, and when a
//! key's container should be started again ahead of its next request.
//!
//! The policy is the hybrid histogram policy of Shahrad et al., "Serverless in the Wild"
//! (USENIX ATC 2020). Per key it keeps a histogram of idle times (from the moment the key
//! had no request in flight any more to its next request) in bins of [`Params::bin`] over
//! [`Params::bins`] bins (1 minute × 240: 4 hours); longer idle times are counted apart, as
//! out of bounds (OOB). When the histogram is representative — at least
//! [`Params::min_samples`] idle times, at most [`Params::max_oob_fraction`] of them out of
//! bounds, and a coefficient of variation of the bin counts of at least
//! [`Params::min_cv`] (the idle times are concentrated, not spread evenly) — it gives two
//! windows:
//!
//! - the **pre-warm window**: the lower edge of the bin of the 5th percentile, less 10%;
//! - the **keep-alive window**: the upper edge of the bin of the 99th percentile, plus 10%,
//!   less the pre-warm window (it is measured from the pre-warm).
//!
//! After a request ends, a key with a pre-warm window is not kept: its container is removed
//! at once and started again (pre-warmed) a pre-warm window after the request ended, then
//! kept for the keep-alive window. A key without one is kept for the keep-alive window.
//! Otherwise, and always for keys it knows too little of, the fixed policy applies: keep the
//! container for the configured `idle_timeout`, which also caps every keep-alive window.
//!
//! When `idle_timeout` is shorter than a pre-warmed key's keep-alive window, cutting the
//! window's end would often end it before the request comes (a timer of 2 hours is
//! pre-warmed 12 minutes early by the 10% margin alone). The capped window is placed
//! instead where the histogram has the most idle times: the latest window of that length
//! holding the most of them, opened a 10% margin of its length early, and never before the
//! paper's pre-warm window.
//!
//! The paper predicts the next idle time of OOB-heavy keys with a time series model
//! (ARIMA). This module does not: such keys fall back to the fixed policy. Their idle times
//! exceed the histogram's range (4 hours), so they come back a few times a day at most; a
//! model per key would cost more than the few cold starts it could save, and a wrong
//! forecast costs a container kept for nothing.
//!
//! Pure and synchronous: no I/O, no clock (every method takes the time), no async. One
//! `std::sync::Mutex` guards the map; no method calls out while holding it. Recording a
//! request is a map lookup and a few integer operations; the windows are recomputed (a pass
//! over the bins) only when an idle time was added. Histograms are halved when they reach
//! [`Params::max_samples`], so old behaviour fades; at most [`Params::max_keys`] keys are
//! remembered (the one seen least recently, with nothing in flight, is forgotten first).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::task::TaskKey;

/// The policy's parameters. The defaults are the paper's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Width of one histogram bin.
    pub bin: Duration,
    /// Number of bins: idle times of `bin × bins` or more are out of bounds.
    pub bins: usize,
    /// Idle times needed before the histogram is trusted.
    pub min_samples: u32,
    /// Least coefficient of variation of the bin counts for the histogram to be trusted.
    pub min_cv: f64,
    /// Largest share of out-of-bound idle times for the histogram to be trusted.
    pub max_oob_fraction: f64,
    /// Percentile of the idle times the pre-warm window is taken from (5).
    pub prewarm_percentile: f64,
    /// Percentile of the idle times the keep-alive window ends at (99).
    pub keep_alive_percentile: f64,
    /// Safety margin: the pre-warm window is shortened and the keep-alive end lengthened by
    /// this fraction (0.1).
    pub margin: f64,
    /// When a key's idle times reach this count, its counts are halved (ageing).
    pub max_samples: u32,
    /// Keys remembered at most.
    pub max_keys: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            bin: Duration::from_secs(60),
            bins: 240,
            min_samples: 5,
            min_cv: 2.0,
            max_oob_fraction: 0.5,
            prewarm_percentile: 5.0,
            keep_alive_percentile: 99.0,
            margin: 0.1,
            max_samples: 1024,
            max_keys: 4096,
        }
    }
}

/// A parameter out of its range, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("keep-alive parameter `{name}`: {message}")]
pub struct ParamsError {
    pub name: &'static str,
    pub message: String,
}

impl Params {
    /// The defaults of the cost rule (`keep_alive: priced`): the paper's, with 10-second
    /// bins over the same 4 hours, so that a pre-warm window (and a keep-alive) fits the
    /// idle times to 10 seconds, not to a minute.
    pub fn priced() -> Params {
        Params {
            bin: Duration::from_secs(10),
            bins: 1440,
            ..Params::default()
        }
    }

    /// Checks that every parameter is usable.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let bad = |name, message: &str| {
            Err(ParamsError {
                name,
                message: message.to_string(),
            })
        };
        if self.bin.is_zero() {
            return bad("bin", "must be longer than 0");
        }
        if !(1..=100_000).contains(&self.bins) {
            return bad("bins", "use 1 to 100000 bins");
        }
        if self.min_samples == 0 {
            return bad("min_samples", "must be at least 1");
        }
        if !self.min_cv.is_finite() || self.min_cv < 0.0 {
            return bad("min_cv", "must be a number of at least 0");
        }
        if !(0.0..=1.0).contains(&self.max_oob_fraction) {
            return bad("max_oob_fraction", "use 0 to 1");
        }
        for (name, p) in [
            ("prewarm_percentile", self.prewarm_percentile),
            ("keep_alive_percentile", self.keep_alive_percentile),
        ] {
            if !(0.0..=100.0).contains(&p) {
                return bad(name, "use 0 to 100");
            }
        }
        if self.prewarm_percentile > self.keep_alive_percentile {
            return bad(
                "prewarm_percentile",
                "must not exceed keep_alive_percentile",
            );
        }
        if !(0.0..1.0).contains(&self.margin) {
            return bad("margin", "use 0 to less than 1");
        }
        if self.max_samples < self.min_samples.saturating_mul(2) {
            return bad("max_samples", "must be at least twice min_samples");
        }
        if self.max_keys == 0 {
            return bad("max_keys", "must be at least 1");
        }
        Ok(())
    }
}

/// What the histogram of a key predicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Windows {
    /// How long after a request ended the key's next container is started; zero: the
    /// container is kept from the end of the request instead.
    pub prewarm: Duration,
    /// How long the container is kept, from its pre-warm (or from the end of the request
    /// when `prewarm` is zero). Capped by `idle_timeout` where it is used.
    pub keep_alive: Duration,
}

/// Why a key is under the fixed policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Fewer idle times than [`Params::min_samples`].
    FewSamples,
    /// More out-of-bound idle times than [`Params::max_oob_fraction`].
    OutOfBounds,
    /// Idle times spread out: coefficient of variation below [`Params::min_cv`].
    Spread,
}

/// The policy for one key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Keep an idle container for `idle_timeout`.
    Fixed(Fallback),
    /// The histogram's windows.
    Learned(Windows),
}

/// When an idle container of a key expires, and whether it is a pre-warmed one that has not
/// served yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expiry {
    pub at: Instant,
    pub unused_prewarm: bool,
}

/// What the end of a request means for its key.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Ended {
    /// The key has no request in flight any more and its container expires earlier than
    /// `idle_timeout` after now: the reaper should look again at this time.
    pub expires: Option<Instant>,
    /// The key's next container is to be started at this time.
    pub prewarm_at: Option<Instant>,
}

/// Keys whose pre-warm time has come (now claimed), and the next pre-warm time after now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Due {
    pub keys: Vec<TaskKey>,
    pub next: Option<Instant>,
}

#[derive(Debug)]
struct KeyState {
    /// Requests of the key in flight now.
    in_flight: u32,
    /// When the key last had no request in flight any more.
    idle_since: Option<Instant>,
    /// Whether the pre-warm of this idle period was claimed.
    prewarm_claimed: bool,
    last_seen: Instant,
    bins: Box<[u32]>,
    in_bounds: u32,
    oob: u32,
    /// The sum of the idle times counted (aged with them), seconds.
    idle_sum: f64,
    decision: Decision,
    /// The memory of the key's containers (the priced rule weighs keep-alives by it).
    mem_mb: u64,
    /// The windows placed under a cap shorter than the keep-alive window, for that cap.
    capped: Option<(Duration, Windows)>,
}

impl KeyState {
    fn new(mem_mb: u64, now: Instant, params: &Params, rule: Rule) -> KeyState {
        let mut state = KeyState {
            in_flight: 0,
            idle_since: None,
            prewarm_claimed: false,
            last_seen: now,
            bins: vec![0; params.bins].into_boxed_slice(),
            in_bounds: 0,
            oob: 0,
            idle_sum: 0.0,
            decision: Decision::Fixed(Fallback::FewSamples),
            mem_mb,
            capped: None,
        };
        state.decision = state.decide(params, rule);
        state
    }

    fn decide(&self, params: &Params, rule: Rule) -> Decision {
        match rule {
            Rule::Histogram => decide(&self.bins, self.in_bounds, self.oob, params),
            Rule::Priced { price } => {
                let total = self.in_bounds + self.oob;
                if total < params.min_samples {
                    decide_priced_few(total, self.idle_sum, self.mem_mb, price, params)
                } else {
                    decide_priced(
                        &self.bins,
                        self.in_bounds,
                        self.oob,
                        self.mem_mb,
                        price,
                        params,
                    )
                }
            }
        }
    }

    /// The windows in force under `cap` (`idle_timeout`); `None` under the fixed policy.
    fn windows(&mut self, cap: Duration, params: &Params) -> Option<Windows> {
        let Decision::Learned(w) = self.decision else {
            return None;
        };
        if w.keep_alive <= cap {
            return Some(w);
        }
        if w.prewarm.is_zero() {
            return Some(Windows {
                prewarm: Duration::ZERO,
                keep_alive: cap,
            });
        }
        if let Some((for_cap, placed)) = self.capped {
            if for_cap == cap {
                return Some(placed);
            }
        }
        let placed = place(&self.bins, w, cap, params);
        self.capped = Some((cap, placed));
        Some(placed)
    }

    fn record(&mut self, idle: Duration, params: &Params, rule: Rule) {
        let bin = (idle.as_nanos() / params.bin.as_nanos()) as usize;
        match self.bins.get_mut(bin) {
            Some(count) => {
                *count += 1;
                self.in_bounds += 1;
            }
            None => self.oob += 1,
        }
        self.idle_sum += idle.as_secs_f64();
        let total = self.in_bounds + self.oob;
        if total >= params.max_samples {
            for count in self.bins.iter_mut() {
                *count /= 2;
            }
            self.in_bounds = self.bins.iter().sum();
            self.oob /= 2;
            self.idle_sum *= f64::from(self.in_bounds + self.oob) / f64::from(total);
        }
        self.decision = self.decide(params, rule);
        self.capped = None;
    }
}

/// A pre-warm window of length `cap` (shorter than `w.keep_alive`) where the histogram
/// `bins` holds the most idle times: of the windows covering the most, the latest, opened
/// `margin × cap` before its first bin, and never before `w.prewarm`.
fn place(bins: &[u32], w: Windows, cap: Duration, params: &Params) -> Windows {
    let bin = params.bin;
    let margin = cap.mul_f64(params.margin);
    let span = (((cap - margin).as_nanos() / bin.as_nanos()) as usize).max(1);
    let first = ((w.prewarm.as_nanos() / bin.as_nanos()) as usize).min(bins.len() - 1);
    let mut best = (0u64, first);
    for j in first..bins.len() {
        let mass: u64 = bins[j..(j + span).min(bins.len())]
            .iter()
            .map(|&c| u64::from(c))
            .sum();
        if mass >= best.0 {
            best = (mass, j);
        }
    }
    let start = (bin * best.1 as u32).saturating_sub(margin);
    Windows {
        prewarm: start.max(w.prewarm),
        keep_alive: cap,
    }
}

/// The decision for a histogram: `bins` (summing to `in_bounds`) and `oob` idle times.
pub fn decide(bins: &[u32], in_bounds: u32, oob: u32, params: &Params) -> Decision {
    let total = in_bounds + oob;
    if total < params.min_samples {
        return Decision::Fixed(Fallback::FewSamples);
    }
    if in_bounds == 0 || f64::from(oob) > params.max_oob_fraction * f64::from(total) {
        return Decision::Fixed(Fallback::OutOfBounds);
    }
    let n = bins.len() as f64;
    let mean = f64::from(in_bounds) / n;
    let variance = bins
        .iter()
        .map(|&c| (f64::from(c) - mean).powi(2))
        .sum::<f64>()
        / n;
    if variance.sqrt() / mean < params.min_cv {
        return Decision::Fixed(Fallback::Spread);
    }
    let percentile_bin = |p: f64| {
        let wanted = ((p / 100.0 * f64::from(in_bounds)).ceil() as u32).max(1);
        let mut seen = 0;
        bins.iter()
            .position(|&c| {
                seen += c;
                seen >= wanted
            })
            .unwrap_or(bins.len() - 1)
    };
    let head = percentile_bin(params.prewarm_percentile) as u32;
    let tail = percentile_bin(params.keep_alive_percentile) as u32 + 1;
    let prewarm = (params.bin * head).mul_f64(1.0 - params.margin);
    let keep_end = (params.bin * tail).mul_f64(1.0 + params.margin);
    Decision::Learned(Windows {
        prewarm,
        keep_alive: keep_end.saturating_sub(prewarm),
    })
}

/// The largest price of a warm start (MB·s): a terabyte for ten thousand days.
pub const MAX_PRICE: f64 = 1e15;

/// The cost rule pre-warms no earlier than this after a request ended (removing a container
/// and starting it again costs more than memory: a start's CPU, the engine's work).
pub const MIN_PREWARM: Duration = Duration::from_secs(60);

/// The tail of a key's idle times, for the cost rule: the longest 5% of them, and at least
/// 5 of them (all when fewer).
const TAIL_SHARE: f64 = 0.05;
const TAIL_SAMPLES: f64 = 5.0;

/// Which rule turns a key's histogram of idle times into its windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// The paper's hybrid histogram policy ([`decide`]): `keep_alive: adaptive`.
    Histogram,
    /// The cost rule ([`decide_priced`]): `keep_alive: priced`. A warm start is worth
    /// `price` MB·s of idle memory-time, on every key alike.
    Priced { price: f64 },
}

impl Rule {
    /// Checks the price.
    pub fn validate(&self) -> Result<(), ParamsError> {
        match *self {
            Rule::Priced { price } if !(price.is_finite() && price > 0.0 && price <= MAX_PRICE) => {
                Err(ParamsError {
                    name: "price",
                    message: format!(
                        "{price}: use a number of MB·s above 0, at most {MAX_PRICE:e}"
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The decision of the cost rule for a key with fewer than `min_samples` idle times
/// (`count`, summing to `idle_sum` seconds) whose containers hold `mem_mb`, when a warm
/// start is worth `price` MB·s. With none, nothing is known: the container is kept for the
/// break-even time `price` / `mem_mb` (rent or buy: it never holds more than twice what the
/// best choice in hindsight would). With some, the key is taken for a Poisson one of their
/// mean: kept (until the cap) when `mem_mb` × the mean is at most `price`, else not kept.
pub fn decide_priced_few(
    count: u32,
    idle_sum: f64,
    mem_mb: u64,
    price: f64,
    params: &Params,
) -> Decision {
    let mem = mem_mb.max(1) as f64;
    let keep_alive = if count == 0 {
        Duration::from_secs_f64((price / mem).min(MAX_PRICE))
    } else if mem * idle_sum / f64::from(count) <= price {
        params.bin * params.bins as u32
    } else {
        Duration::ZERO
    };
    Decision::Learned(Windows {
        prewarm: Duration::ZERO,
        keep_alive,
    })
}

/// The decision of the cost rule (`keep_alive: priced`) for a histogram: `bins` (summing
/// to `in_bounds`) and `oob` idle times of a key whose containers hold `mem_mb`, when a
/// warm start is worth `price` MB·s.
///
/// Keeping an idle container from `a` to `b` after a request ended (a pre-warm when `a` is
/// not 0) serves the next request warm when it comes in that window, with probability
/// F(b) − F(a), and holds `mem_mb` while the container is up and the request has not come:
/// `mem_mb` × ∫ₐᵇ S(t) dt, S = 1 − F (the histogram's idle times, spread evenly within each
/// bin). The rule takes the window worth most: `price` × (F(b) − F(a)) − `mem_mb` ×
/// ∫ₐᵇ S(t) dt, over the bins' edges (the largest sum of a subarray, one pass); none when
/// no window is worth anything: the container is removed as soon as the request ends.
/// With one price on every key this spends memory across keys by price (a Lagrangian of
/// "fewest cold starts within a memory-time"): for a Poisson key, whose idle time left is
/// the same however long it has been idle, every window costs `mem_mb` × its mean idle time
/// per warm start, so the key is kept until the cap (`idle_timeout`) when that is at most
/// `price`, and not at all otherwise; a bursty key is kept over the gaps within its bursts,
/// not over the pauses between them; a timer is pre-warmed just before its period.
///
/// A pre-warm window opens `margin` of its start early and closes `margin` of its end
/// late, each at most one bin (arrivals drift; a start takes time), and is taken only when
/// it is still worth more, margins paid, than keeping from the end of the request. Fewer
/// than `min_samples` idle times: the fixed policy.
pub fn decide_priced(
    bins: &[u32],
    in_bounds: u32,
    oob: u32,
    mem_mb: u64,
    price: f64,
    params: &Params,
) -> Decision {
    let total = in_bounds + oob;
    if total < params.min_samples {
        return Decision::Fixed(Fallback::FewSamples);
    }
    let n = f64::from(total);
    let width = params.bin.as_secs_f64();
    let mem = mem_mb as f64;
    // At each edge of the bins: φ = price × F − mem × G, with G the expected time a
    // container kept from 0 to the edge is up with the request not come yet.
    #[derive(Clone, Copy)]
    struct Edge {
        phi: f64,
        index: usize,
        below: u64,
        alive: f64,
    }
    let origin = Edge {
        phi: 0.0,
        index: 0,
        below: 0,
        alive: 0.0,
    };
    // The best window from 0; the lowest φ so far (the best opening of a window closing
    // later); the best window: its value, opening and closing; where the tail begins.
    let (mut keep, mut lowest) = (origin, origin);
    let mut best = (0.0, origin, origin);
    let tail_share = (TAIL_SAMPLES / n).max(TAIL_SHARE);
    let mut tail = None;
    let mut at = origin;
    for (j, &count) in bins.iter().enumerate() {
        let survived = 1.0 - at.below as f64 / n;
        let below = at.below + u64::from(count);
        let alive = at.alive + width * (survived + (1.0 - below as f64 / n)) / 2.0;
        at = Edge {
            phi: price * below as f64 / n - mem * alive,
            index: j + 1,
            below,
            alive,
        };
        if at.phi > keep.phi {
            keep = at;
        }
        if at.phi - lowest.phi > best.0 {
            best = (at.phi - lowest.phi, lowest, at);
        }
        if at.phi < lowest.phi {
            lowest = at;
        }
        if tail.is_none() && 1.0 - below as f64 / n <= tail_share {
            tail = Some(at);
        }
    }
    let survival = |e: &Edge| 1.0 - e.below as f64 / n;
    let (value, open, close) = best;
    // A container is removed and started again only to save a minute at least, and only
    // for a window that holds 5 idle times at least and half of those past its opening (a
    // timer's, not a few stray ones in a tail).
    let held = (close.below - open.below) as f64;
    if open.index > 0
        && params.bin * open.index as u32 >= MIN_PREWARM
        && held >= TAIL_SAMPLES
        && held >= 0.5 * (n - open.below as f64)
    {
        let opens = params.bin * open.index as u32;
        let closes = params.bin * close.index as u32;
        let early = opens.mul_f64(params.margin).min(params.bin);
        let late = closes.mul_f64(params.margin).min(params.bin);
        let margins =
            mem * (survival(&open) * early.as_secs_f64() + survival(&close) * late.as_secs_f64());
        if value - margins > keep.phi {
            let prewarm = opens - early;
            return Decision::Learned(Windows {
                prewarm,
                keep_alive: closes + late - prewarm,
            });
        }
    }
    let range = width * bins.len() as f64;
    // The tail: idle times beyond the longest seen are possible too, and the histogram
    // says little of them. Where the tail's mean idle time left is worth waiting for (the
    // rule for a Poisson key), a key kept at all is kept until the cap; else the margin.
    let tail_worth_waiting = tail.is_some_and(|q| {
        // Idle times beyond the range are taken for twice its length.
        let beyond = survival(&at) * range;
        let left = (at.alive - q.alive + beyond) / survival(&q).max(f64::MIN_POSITIVE);
        mem * left <= price
    });
    let closes = params.bin * keep.index as u32;
    let keep_alive = if keep.index == 0 {
        Duration::ZERO
    } else if tail_worth_waiting {
        params.bin * bins.len() as u32
    } else {
        closes + closes.mul_f64(params.margin).min(params.bin)
    };
    Decision::Learned(Windows {
        prewarm: Duration::ZERO,
        keep_alive,
    })
}

/// The adaptive keep-alive policy of every key.
#[derive(Debug)]
pub struct KeepAlive {
    params: Params,
    rule: Rule,
    /// By key, in key order: the keys due for a pre-warm, and the key forgotten among
    /// those seen last at the same instant, are the same in every run.
    keys: Mutex<BTreeMap<TaskKey, KeyState>>,
}

impl KeepAlive {
    /// The policy with `params` (see [`Params::validate`]).
    pub fn new(params: Params) -> Result<KeepAlive, ParamsError> {
        KeepAlive::with_rule(params, Rule::Histogram)
    }

    /// The policy with `params`, turning histograms into windows by `rule`.
    pub fn with_rule(params: Params, rule: Rule) -> Result<KeepAlive, ParamsError> {
        params.validate()?;
        rule.validate()?;
        Ok(KeepAlive {
            params,
            rule,
            keys: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<TaskKey, KeyState>> {
        // No critical section below can panic half-way.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request for `key` arrived at `now`. If the key had nothing in flight, the time since
    /// its last request ended is an idle time.
    pub fn arrived(&self, key: &TaskKey, now: Instant) {
        let mut keys = self.lock();
        if !keys.contains_key(key) {
            if keys.len() >= self.params.max_keys {
                forget_one(&mut keys);
            }
            keys.insert(
                key.clone(),
                KeyState::new(key.demand.mem_mb, now, &self.params, self.rule),
            );
        }
        let Some(state) = keys.get_mut(key) else {
            return;
        };
        state.last_seen = now;
        if state.in_flight == 0 {
            if let Some(since) = state.idle_since.take() {
                state.record(
                    now.saturating_duration_since(since),
                    &self.params,
                    self.rule,
                );
            }
        }
        state.in_flight += 1;
    }

    /// A request for `key` ended at `now` (answered, failed or abandoned). When it was the
    /// last one in flight, the key is idle from now: says when its container expires if that
    /// is earlier than `idle_timeout`, and when to pre-warm it.
    pub fn ended(&self, key: &TaskKey, now: Instant, idle_timeout: Duration) -> Ended {
        let mut keys = self.lock();
        let Some(state) = keys.get_mut(key) else {
            return Ended::default();
        };
        state.last_seen = now;
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight > 0 {
            return Ended::default();
        }
        state.idle_since = Some(now);
        state.prewarm_claimed = false;
        match state.windows(idle_timeout, &self.params) {
            None => Ended::default(),
            Some(w) if w.prewarm.is_zero() => Ended {
                expires: (w.keep_alive < idle_timeout).then(|| now + w.keep_alive),
                prewarm_at: None,
            },
            Some(w) => Ended {
                expires: Some(now),
                prewarm_at: Some(now + w.prewarm),
            },
        }
    }

    /// When an idle container of `key`, last used at `last_used`, expires. Never later than
    /// `last_used + idle_timeout`.
    pub fn expiry(&self, key: &TaskKey, last_used: Instant, idle_timeout: Duration) -> Expiry {
        let fixed = Expiry {
            at: last_used + idle_timeout,
            unused_prewarm: false,
        };
        let mut keys = self.lock();
        let Some(state) = keys.get_mut(key) else {
            return fixed;
        };
        // A request is on its way to the container: keep it (the reaper looks again when
        // the request ends).
        if state.in_flight > 0 {
            return fixed;
        }
        let Some(idle_since) = state.idle_since else {
            return fixed;
        };
        let Some(w) = state.windows(idle_timeout, &self.params) else {
            return fixed;
        };
        let keep = w.keep_alive.min(idle_timeout);
        if w.prewarm.is_zero() {
            return Expiry {
                at: last_used + keep,
                unused_prewarm: false,
            };
        }
        if last_used > idle_since {
            // Started after the key's last request ended: a pre-warm, kept from its start.
            Expiry {
                at: last_used + keep,
                unused_prewarm: true,
            }
        } else {
            // It served the last request: not needed before the pre-warm time.
            Expiry {
                at: last_used,
                unused_prewarm: false,
            }
        }
    }

    /// Claims the keys whose pre-warm time has come (and whose keep-alive window, capped by
    /// `idle_timeout`, has not passed); says when the next one comes.
    pub fn take_due(&self, now: Instant, idle_timeout: Duration) -> Due {
        let mut due = Due::default();
        let mut keys = self.lock();
        for (key, state) in keys.iter_mut() {
            if state.in_flight > 0 || state.prewarm_claimed {
                continue;
            }
            let Some(idle_since) = state.idle_since else {
                continue;
            };
            let Some(w) = state.windows(idle_timeout, &self.params) else {
                continue;
            };
            if w.prewarm.is_zero() {
                continue;
            }
            let at = idle_since + w.prewarm;
            if at > now {
                due.next = Some(due.next.map_or(at, |n: Instant| n.min(at)));
            } else if now < at + w.keep_alive.min(idle_timeout) {
                state.prewarm_claimed = true;
                due.keys.push(key.clone());
            }
        }
        due
    }

    /// A claimed pre-warm of `key` could not start for lack of room: it is due again (the
    /// caller retries when room frees).
    pub fn unclaim(&self, key: &TaskKey) {
        if let Some(state) = self.lock().get_mut(key) {
            state.prewarm_claimed = false;
        }
    }

    /// The decision for `key` now.
    pub fn decision(&self, key: &TaskKey) -> Decision {
        self.lock()
            .get(key)
            .map_or(Decision::Fixed(Fallback::FewSamples), |s| s.decision)
    }

    /// The windows in force for `key` under `idle_timeout`: the decision's, or placed
    /// under the cap; `None` under the fixed policy.
    pub fn windows(&self, key: &TaskKey, idle_timeout: Duration) -> Option<Windows> {
        self.lock()
            .get_mut(key)
            .and_then(|s| s.windows(idle_timeout, &self.params))
    }

    /// How many keys are remembered.
    pub fn keys(&self) -> usize {
        self.lock().len()
    }
}

/// Forgets the key seen least recently among those with nothing in flight.
fn forget_one(keys: &mut BTreeMap<TaskKey, KeyState>) {
    let oldest = keys
        .iter()
        .filter(|(_, s)| s.in_flight == 0)
        .min_by_key(|(_, s)| s.last_seen)
        .map(|(k, _)| k.clone());
    if let Some(key) = oldest {
        keys.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Demand;
    use crate::task::Runtime;

    const SECOND: Duration = Duration::from_secs(1);
    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn key(name: &str) -> TaskKey {
        TaskKey {
            image: name.into(),
            runtime: Runtime::Container,
            demand: Demand {
                milli_cpu: 1000,
                mem_mb: 128,
            },
            gpu_count: 0,
            use_sgx: false,
        }
    }

    fn policy() -> KeepAlive {
        KeepAlive::new(Params::default()).unwrap()
    }

    /// A small deterministic generator (xorshift), so the tests need no crate.
    struct Rng(u64);

    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }

        fn exp(&mut self, mean: Duration) -> Duration {
            mean.mul_f64(-(1.0 - self.unit()).ln())
        }
    }

    /// Feeds requests of `run` each, starting after the given idle times; returns when the
    /// last one ended.
    fn feed(p: &KeepAlive, k: &TaskKey, start: Instant, idles: &[Duration]) -> Instant {
        let run = Duration::from_millis(200);
        let mut t = start;
        p.arrived(k, t);
        t += run;
        p.ended(k, t, HOUR);
        for idle in idles {
            t += *idle;
            p.arrived(k, t);
            t += run;
            p.ended(k, t, HOUR);
        }
        t
    }

    fn learned(d: Decision) -> Windows {
        match d {
            Decision::Learned(w) => w,
            other => panic!("expected learned windows, got {other:?}"),
        }
    }

    #[test]
    fn a_periodic_key_is_prewarmed_just_before_its_period_and_kept_briefly() {
        let p = policy();
        let k = key("timer");
        let t0 = Instant::now();
        let mut rng = Rng(7);
        // Every 30 minutes, a few seconds of jitter.
        let idles: Vec<Duration> = (0..20)
            .map(|_| 30 * MIN - Duration::from_secs(3) + Duration::from_secs_f64(rng.unit() * 6.0))
            .collect();
        let end = feed(&p, &k, t0, &idles);
        let w = learned(p.decision(&k));
        // Idle times fall in the bins of minute 29 and 30: pre-warm at 29 min less 10%, kept
        // until 31 min plus 10%.
        assert_eq!(w.prewarm, (29 * MIN).mul_f64(0.9));
        assert_eq!(w.prewarm + w.keep_alive, (31 * MIN).mul_f64(1.1));
        assert!(w.prewarm < 30 * MIN && w.keep_alive < 10 * MIN, "{w:?}");
        // Removed at once after the request, pre-warmed at the window, kept from there.
        let served = p.expiry(&k, end, HOUR);
        assert_eq!(served.at, end);
        assert!(!served.unused_prewarm);
        let due = p.take_due(end + w.prewarm - Duration::from_secs(1), HOUR);
        assert!(due.keys.is_empty());
        assert_eq!(due.next, Some(end + w.prewarm));
        let due = p.take_due(end + w.prewarm, HOUR);
        assert_eq!(due.keys, vec![k.clone()]);
        assert!(p.take_due(end + w.prewarm, HOUR).keys.is_empty(), "claimed");
        let ready = end + w.prewarm + Duration::from_secs(1);
        let prewarmed = p.expiry(&k, ready, HOUR);
        assert_eq!(prewarmed.at, ready + w.keep_alive);
        assert!(prewarmed.unused_prewarm);
        // The request comes at its period: the pre-warmed container is used and the next
        // idle period starts over.
        p.arrived(&k, end + 30 * MIN);
        assert!(p.take_due(end + 30 * MIN, HOUR).keys.is_empty());
        let ended = p.ended(&k, end + 30 * MIN + Duration::from_secs(1), HOUR);
        assert_eq!(
            ended.prewarm_at,
            Some(end + 30 * MIN + Duration::from_secs(1) + w.prewarm)
        );
    }

    #[test]
    fn a_claim_without_room_is_due_again() {
        let p = policy();
        let k = key("timer");
        let end = feed(&p, &k, Instant::now(), &[10 * MIN; 8]);
        let w = learned(p.decision(&k));
        assert_eq!(p.take_due(end + w.prewarm, HOUR).keys.len(), 1);
        p.unclaim(&k);
        assert_eq!(p.take_due(end + w.prewarm, HOUR).keys.len(), 1);
        // Once its keep-alive window has passed, a missed pre-warm is not made up.
        p.unclaim(&k);
        let late = end + w.prewarm + w.keep_alive;
        assert!(p.take_due(late, HOUR).keys.is_empty());
    }

    #[test]
    fn too_few_idle_times_keep_the_fixed_policy() {
        let p = policy();
        let k = key("new");
        let end = feed(&p, &k, Instant::now(), &[10 * MIN; 3]);
        assert_eq!(p.decision(&k), Decision::Fixed(Fallback::FewSamples));
        assert_eq!(p.expiry(&k, end, 20 * MIN).at, end + 20 * MIN);
        assert_eq!(p.ended(&k, end, 20 * MIN), Ended::default());
        assert!(p.take_due(end + HOUR, HOUR).keys.is_empty());
        // Unknown keys too.
        let other = key("unknown");
        assert_eq!(p.expiry(&other, end, 20 * MIN).at, end + 20 * MIN);
    }

    #[test]
    fn a_sparse_poisson_key_falls_back_to_the_fixed_policy() {
        let p = policy();
        let k = key("poisson");
        let mut rng = Rng(11);
        // One request an hour on average, at random: idle times spread over the whole range.
        let idles: Vec<Duration> = (0..300).map(|_| rng.exp(HOUR)).collect();
        let end = feed(&p, &k, Instant::now(), &idles);
        assert_eq!(p.decision(&k), Decision::Fixed(Fallback::Spread));
        assert_eq!(p.expiry(&k, end, 10 * MIN).at, end + 10 * MIN);
    }

    #[test]
    fn a_frequent_poisson_key_is_kept_for_its_99th_percentile_without_prewarm() {
        let p = policy();
        let k = key("busy");
        let mut rng = Rng(5);
        // Every 20 s on average: the 99th percentile is about 92 s.
        let idles: Vec<Duration> = (0..1000)
            .map(|_| rng.exp(Duration::from_secs(20)))
            .collect();
        let end = feed(&p, &k, Instant::now(), &idles);
        let w = learned(p.decision(&k));
        assert_eq!(w.prewarm, Duration::ZERO);
        assert!(
            w.keep_alive == (2 * MIN).mul_f64(1.1) || w.keep_alive == (3 * MIN).mul_f64(1.1),
            "{w:?}"
        );
        let expiry = p.expiry(&k, end, HOUR);
        assert_eq!(expiry.at, end + w.keep_alive);
        assert_eq!(
            p.ended(&k, end + Duration::from_secs(1), HOUR).prewarm_at,
            None
        );
    }

    #[test]
    fn a_key_idle_for_longer_than_the_range_falls_back_to_the_fixed_policy() {
        let p = policy();
        let k = key("rare");
        // Twice a day, a 5-hour gap and the rest.
        let idles: Vec<Duration> = (0..10)
            .map(|i| if i % 2 == 0 { 5 * HOUR } else { 19 * HOUR })
            .collect();
        let end = feed(&p, &k, Instant::now(), &idles);
        assert_eq!(p.decision(&k), Decision::Fixed(Fallback::OutOfBounds));
        assert_eq!(p.expiry(&k, end, 10 * MIN).at, end + 10 * MIN);
    }

    /// Bursts of 10 requests 5 s apart, every 1 to 3 hours, 30 times: the idle times.
    fn bursts_with_long_pauses() -> Vec<Duration> {
        let mut rng = Rng(3);
        let mut idles = Vec::new();
        for _ in 0..30 {
            idles.extend([Duration::from_secs(5); 9]);
            idles.push(HOUR + HOUR.mul_f64(2.0 * rng.unit()));
        }
        idles
    }

    #[test]
    fn a_bursty_key_with_long_pauses_is_kept_no_longer_than_the_idle_timeout() {
        // Bursts of 10 requests, 5 s apart, every 1 to 3 hours: one idle time in ten is a
        // pause, so the 99th percentile is a pause and the keep-alive window is hours long,
        // capped by idle_timeout: no better than the fixed policy, and never longer.
        let p = policy();
        let k = key("bursty");
        let idles = bursts_with_long_pauses();
        let end = feed(&p, &k, Instant::now(), &idles);
        let w = learned(p.decision(&k));
        assert_eq!(w.prewarm, Duration::ZERO);
        assert!(w.keep_alive > HOUR, "{w:?}");
        assert_eq!(p.expiry(&k, end, 20 * MIN).at, end + 20 * MIN);
        assert_eq!(p.ended(&k, end, 20 * MIN), Ended::default());
    }

    #[test]
    fn idle_timeout_caps_every_window() {
        let p = policy();
        let k = key("hourly");
        // Every 70 minutes: idle times in the bin of minute 70; pre-warm at 70 min less
        // 10%, kept until 71 min plus 10%: a window of 15.1 minutes.
        let end = feed(&p, &k, Instant::now(), &[70 * MIN; 10]);
        let w = learned(p.decision(&k));
        assert_eq!(w.prewarm, (70 * MIN).mul_f64(0.9));
        assert!(w.keep_alive > 15 * MIN);
        assert_eq!(p.windows(&k, HOUR), Some(w));
        // Capped at 5 minutes, the window moves to where the idle times are: from half a
        // minute before minute 70.
        let timeout = 5 * MIN;
        let capped = p.windows(&k, timeout).unwrap();
        assert_eq!(
            capped,
            Windows {
                prewarm: 70 * MIN - Duration::from_secs(30),
                keep_alive: timeout
            }
        );
        let ready = end + capped.prewarm;
        assert_eq!(p.expiry(&k, ready, timeout).at, ready + timeout);
        assert_eq!(p.take_due(ready, timeout).keys, vec![k.clone()]);
        p.unclaim(&k);
        // A pre-warm whose capped window passed is not started.
        assert!(p.take_due(ready + timeout, timeout).keys.is_empty());
        // Under every decision, no expiry is later than last use + idle_timeout.
        let mut rng = Rng(99);
        for i in 0..50 {
            let k = key(&format!("k{i}"));
            let count = rng.unit().mul_add(40.0, 1.0) as usize;
            let idles: Vec<Duration> = (0..count)
                .map(|_| {
                    let mean = MIN.mul_f64(rng.unit() * 120.0);
                    rng.exp(mean)
                })
                .collect();
            let end = feed(&p, &k, Instant::now(), &idles);
            for later in [Duration::ZERO, MIN, HOUR] {
                let e = p.expiry(&k, end + later, timeout);
                assert!(e.at <= end + later + timeout, "{i}: {e:?}");
            }
        }
    }

    #[test]
    fn a_capped_window_goes_where_most_idle_times_are() {
        let p = policy();
        let k = key("two-hourly");
        // A 2-hour timer, 2% of its runs late by 20 minutes: the 99th percentile is late, so
        // the paper's window runs from 107 to 155 minutes. Capped at 10 minutes, the window
        // covers the bulk at minute 119, not the first 10 minutes of the paper's window.
        let mut idles = vec![2 * HOUR - Duration::from_secs(30); 98];
        idles.extend([2 * HOUR + 20 * MIN; 2]);
        let end = feed(&p, &k, Instant::now(), &idles);
        let w = learned(p.decision(&k));
        assert_eq!(w.prewarm, (119 * MIN).mul_f64(0.9));
        assert!(w.prewarm + w.keep_alive > 2 * HOUR + 20 * MIN);
        let capped = p.windows(&k, 10 * MIN).unwrap();
        assert_eq!(capped.prewarm, 118 * MIN);
        assert_eq!(capped.keep_alive, 10 * MIN);
        assert_eq!(
            p.ended(&k, end + Duration::from_secs(1), 10 * MIN)
                .prewarm_at,
            Some(end + Duration::from_secs(1) + 118 * MIN)
        );
    }

    #[test]
    fn concurrent_requests_are_not_idle_times() {
        let p = policy();
        let k = key("parallel");
        let t0 = Instant::now();
        // Three requests at once, every 10 minutes: one idle time per period.
        let mut t = t0;
        for _ in 0..8 {
            for _ in 0..3 {
                p.arrived(&k, t);
            }
            // While any is in flight, the container is kept.
            assert_eq!(
                p.expiry(&k, t, HOUR).at,
                t + HOUR,
                "in flight: fixed expiry"
            );
            for _ in 0..3 {
                p.ended(&k, t + Duration::from_secs(1), HOUR);
            }
            t += 10 * MIN;
        }
        let w = learned(p.decision(&k));
        assert_eq!(w.prewarm, (9 * MIN).mul_f64(0.9));
    }

    #[test]
    fn old_idle_times_fade() {
        let params = Params {
            max_samples: 64,
            ..Params::default()
        };
        let p = KeepAlive::new(params).unwrap();
        let k = key("changes");
        // First every 30 minutes, then every 2 minutes: the new period takes over.
        let end = feed(&p, &k, Instant::now(), &[30 * MIN; 60]);
        assert!(learned(p.decision(&k)).prewarm > 20 * MIN);
        feed(&p, &k, end + 2 * MIN, &[2 * MIN; 400]);
        let w = learned(p.decision(&k));
        assert_eq!(w.prewarm, (2 * MIN).mul_f64(0.9));
        assert!(w.keep_alive < 3 * MIN, "{w:?}");
    }

    #[test]
    fn the_least_recently_seen_idle_key_is_forgotten_first() {
        let params = Params {
            max_keys: 3,
            ..Params::default()
        };
        let p = KeepAlive::new(params).unwrap();
        let t0 = Instant::now();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let t = t0 + MIN * i as u32;
            p.arrived(&key(name), t);
            if *name != "a" {
                p.ended(&key(name), t, HOUR);
            }
        }
        // "a" is the oldest but in flight: "b" goes.
        p.arrived(&key("d"), t0 + 10 * MIN);
        assert_eq!(p.keys(), 3);
        p.arrived(&key("b"), t0 + 11 * MIN);
        assert_eq!(p.keys(), 3);
        // "c" went to make room for "b" again, which starts afresh.
        assert_eq!(p.lock().get(&key("b")).unwrap().in_flight, 1);
        assert!(!p.lock().contains_key(&key("c")));
        assert!(p.lock().contains_key(&key("a")));
    }

    #[test]
    fn parameters_are_checked_by_name() {
        for (params, name) in [
            (
                Params {
                    bin: Duration::ZERO,
                    ..Params::default()
                },
                "bin",
            ),
            (
                Params {
                    bins: 0,
                    ..Params::default()
                },
                "bins",
            ),
            (
                Params {
                    margin: 1.0,
                    ..Params::default()
                },
                "margin",
            ),
            (
                Params {
                    prewarm_percentile: 100.0,
                    keep_alive_percentile: 99.0,
                    ..Params::default()
                },
                "prewarm_percentile",
            ),
            (
                Params {
                    min_cv: f64::NAN,
                    ..Params::default()
                },
                "min_cv",
            ),
            (
                Params {
                    max_samples: 5,
                    ..Params::default()
                },
                "max_samples",
            ),
        ] {
            let e = KeepAlive::new(params).unwrap_err();
            assert_eq!(e.name, name, "{e}");
        }
    }

    #[test]
    fn the_decision_follows_the_paper_on_a_single_bin() {
        let params = Params::default();
        let mut bins = vec![0; params.bins];
        bins[0] = 10;
        assert_eq!(
            decide(&bins, 10, 0, &params),
            Decision::Learned(Windows {
                prewarm: Duration::ZERO,
                keep_alive: MIN.mul_f64(1.1),
            })
        );
        // Evenly spread counts: coefficient of variation 0.
        let flat = vec![1; params.bins];
        assert_eq!(
            decide(&flat, params.bins as u32, 0, &params),
            Decision::Fixed(Fallback::Spread)
        );
        // Half out of bounds is still trusted; more is not.
        assert!(matches!(
            decide(&bins, 10, 10, &params),
            Decision::Learned(_)
        ));
        assert_eq!(
            decide(&bins, 10, 11, &params),
            Decision::Fixed(Fallback::OutOfBounds)
        );
    }

    // The cost rule (`keep_alive: priced`).

    fn priced(price: f64) -> KeepAlive {
        KeepAlive::with_rule(Params::priced(), Rule::Priced { price }).unwrap()
    }

    /// MB·s of a 128 MB container (the tests' keys) for `d`.
    fn worth(d: Duration) -> f64 {
        128.0 * d.as_secs_f64()
    }

    #[test]
    fn a_poisson_key_is_kept_until_the_cap_or_not_at_all_by_price() {
        let mut rng = Rng(21);
        // Every 5 minutes on average, at random: a warm start costs 128 MB × 5 min.
        let idles: Vec<Duration> = (0..400).map(|_| rng.exp(5 * MIN)).collect();
        let k = key("poisson");
        for (price, kept) in [(worth(15 * MIN), true), (worth(90 * SECOND), false)] {
            let p = priced(price);
            let end = feed(&p, &k, Instant::now(), &idles);
            let w = learned(p.decision(&k));
            assert_eq!(w.prewarm, Duration::ZERO, "{price}: {w:?}");
            let expiry = p.expiry(&k, end, 20 * MIN);
            if kept {
                assert!(w.keep_alive >= HOUR, "{w:?}");
                assert_eq!(expiry.at, end + 20 * MIN);
            } else {
                assert_eq!(w.keep_alive, Duration::ZERO);
                assert_eq!(expiry.at, end, "removed as soon as the request ends");
                assert_eq!(p.ended(&k, end, 20 * MIN).expires, Some(end));
            }
        }
    }

    #[test]
    fn a_bursty_key_is_kept_over_its_bursts_not_its_pauses() {
        // Bursts of 10 requests 5 s apart, every 1 to 3 hours: keeping over a pause costs
        // 128 MB × 2 hours, more than the warm start is worth.
        let p = priced(worth(10 * MIN));
        let k = key("bursty");
        let idles = bursts_with_long_pauses();
        let end = feed(&p, &k, Instant::now(), &idles);
        let w = learned(p.decision(&k));
        assert_eq!(w.prewarm, Duration::ZERO);
        assert!(
            w.keep_alive >= Duration::from_secs(10) && w.keep_alive <= 30 * SECOND,
            "{w:?}"
        );
        assert_eq!(p.expiry(&k, end, 20 * MIN).at, end + w.keep_alive);
        // The histogram policy keeps it for the whole idle timeout.
        let h = policy();
        let end = feed(&h, &k, Instant::now(), &idles);
        assert_eq!(h.expiry(&k, end, 20 * MIN).at, end + 20 * MIN);
    }

    #[test]
    fn a_timer_is_prewarmed_just_before_its_period() {
        let p = priced(worth(10 * MIN));
        let k = key("timer");
        let mut rng = Rng(7);
        let idles: Vec<Duration> = (0..20)
            .map(|_| 30 * MIN - Duration::from_secs(3) + Duration::from_secs_f64(rng.unit() * 2.0))
            .collect();
        let end = feed(&p, &k, Instant::now(), &idles);
        let w = learned(p.decision(&k));
        // Idle times in the bins of 29:50 .. 30:00: opened one bin early, closed one late.
        assert_eq!(w.prewarm, 29 * MIN + 40 * SECOND, "{w:?}");
        assert_eq!(w.prewarm + w.keep_alive, 30 * MIN + 10 * SECOND, "{w:?}");
        assert_eq!(p.expiry(&k, end, HOUR).at, end, "removed at once");
        assert_eq!(
            p.ended(&k, end + SECOND, HOUR).prewarm_at,
            Some(end + SECOND + w.prewarm)
        );
        // Not worth a pre-warm at this price: not kept at all.
        let cheap = priced(worth(2 * SECOND));
        feed(&cheap, &k, Instant::now(), &idles);
        assert_eq!(
            learned(cheap.decision(&k)),
            Windows {
                prewarm: Duration::ZERO,
                keep_alive: Duration::ZERO
            }
        );
    }

    #[test]
    fn a_key_with_few_idle_times_is_kept_by_their_mean() {
        let price = worth(10 * MIN);
        let p = priced(price);
        let k = key("new");
        // Nothing known: kept for the break-even time, price / memory, under the cap.
        p.arrived(&k, Instant::now());
        let end = Instant::now() + SECOND;
        p.ended(&k, end, HOUR);
        assert_eq!(p.expiry(&k, end, HOUR).at, end + 10 * MIN);
        assert_eq!(p.expiry(&k, end, 5 * MIN).at, end + 5 * MIN);
        // Two idle times of an hour: not worth keeping.
        let rare = key("rare");
        let end = feed(&p, &rare, Instant::now(), &[HOUR, HOUR]);
        assert_eq!(p.expiry(&rare, end, 2 * HOUR).at, end);
        // Two of a minute: kept until the cap.
        let busy = key("busy");
        let end = feed(&p, &busy, Instant::now(), &[MIN, MIN]);
        assert_eq!(p.expiry(&busy, end, 2 * HOUR).at, end + 2 * HOUR);
    }

    #[test]
    fn the_price_is_checked() {
        for price in [0.0, -1.0, f64::NAN, f64::INFINITY, 2.0 * MAX_PRICE] {
            let e = KeepAlive::with_rule(Params::priced(), Rule::Priced { price }).unwrap_err();
            assert_eq!(e.name, "price");
        }
        assert!(KeepAlive::with_rule(Params::priced(), Rule::Priced { price: 1.0 }).is_ok());
    }

    /// price × (F(b) − F(a)) − mem × ∫ₐᵇ S, by brute force over the idle times.
    fn window_value(
        bins: &[u32],
        oob: u32,
        mem: f64,
        price: f64,
        width: f64,
        a: usize,
        b: usize,
    ) -> f64 {
        let n = f64::from(bins.iter().sum::<u32>() + oob);
        let below = |e: usize| f64::from(bins[..e].iter().sum::<u32>());
        let survival = |e: usize| 1.0 - below(e) / n;
        let alive: f64 = (a..b)
            .map(|j| width * (survival(j) + survival(j + 1)) / 2.0)
            .sum();
        price * (below(b) - below(a)) / n - mem * alive
    }

    proptest::proptest! {
        /// Without margins, the rule's window is worth at least every other window, and no
        /// expiry is later than the cap.
        #[test]
        fn the_priced_window_is_the_one_worth_most(
            bins in proptest::collection::vec(0u32..12, 1..40),
            oob in 0u32..4,
            mem in 1u64..2048,
            price in 1.0f64..1e6,
        ) {
            let params = Params {
                bin: MIN,
                bins: bins.len(),
                min_samples: 1,
                margin: 0.0,
                ..Params::default()
            };
            let in_bounds: u32 = bins.iter().sum();
            proptest::prop_assume!(in_bounds + oob >= 1);
            let (memf, width) = (mem as f64, 60.0);
            let mut most = 0.0f64;
            for a in 0..=bins.len() {
                for b in a..=bins.len() {
                    most = most.max(window_value(&bins, oob, memf, price, width, a, b));
                }
            }
            let Decision::Learned(w) = decide_priced(&bins, in_bounds, oob, mem, price, &params) else {
                panic!("the cost rule decides once it has idle times");
            };
            let edge = |d: Duration| (d.as_secs() / 60) as usize;
            let range = MIN * bins.len() as u32;
            let (a, b) = (edge(w.prewarm), edge(w.prewarm + w.keep_alive));
            let got = window_value(&bins, oob, memf, price, width, a, b);
            let close = |x: f64, y: f64| x >= y - 1e-6 * y.abs().max(1.0);
            if !w.prewarm.is_zero() {
                // A pre-warm is the window worth most.
                proptest::prop_assert!(close(got, most), "{w:?}: {got} < {most}");
            } else if w.keep_alive != range {
                // Else the keep-alive worth most (unless the tail extended it to the range).
                let from_zero = (0..=bins.len())
                    .map(|b| window_value(&bins, oob, memf, price, width, 0, b))
                    .fold(0.0f64, f64::max);
                proptest::prop_assert!(close(got, from_zero), "{w:?}: {got} < {from_zero}");
            }
            let p = KeepAlive::with_rule(params, Rule::Priced { price }).unwrap();
            let k = TaskKey { demand: Demand { milli_cpu: 1000, mem_mb: mem }, ..key("k") };
            let end = feed(&p, &k, Instant::now(), &[MIN, 3 * MIN, HOUR]);
            for cap in [MIN, 10 * MIN, 10 * HOUR] {
                proptest::prop_assert!(p.expiry(&k, end, cap).at <= end + cap);
            }
        }
    }
}
