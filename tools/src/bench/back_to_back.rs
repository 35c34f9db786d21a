//! Row 9: the cold path's rows back to back: new keys arriving a fixed gap after the previous
//! answer, without waiting for the pools to refill, so the executor's background refills
//! (holders, spares) run among the requests' own starts.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::args::Args;
use crate::baseline::settled_baseline;
use crate::cold::executor_cold_of;
use crate::conn::Conn;
use crate::fixture::{COLD_CPU, COLD_SETTLE, INPUT, PARALLEL};
use crate::metrics::{reset_executor, scrape, SPARES_CLAIMED};
use crate::pools::{burst_of_new_keys, pools_tag, POOLS_MEM_BASE};
use crate::session::Session;
use crate::stats::median;
use crate::table::Section;
use crate::table::{ms, row, verdict, Row};

/// Gaps between one answer and the next request, and the targets at each (ratios to one
/// Docker default start: seen image, first use, 8 at once).
const BACK_TO_BACK: [(Duration, f64, f64, f64); 2] = [
    (Duration::from_millis(3000), 0.3, 0.7, 2.0),
    (Duration::from_millis(300), 0.3, 0.9, 3.0),
];
/// Bursts of [`PARALLEL`] new keys per gap, each `gap` after the answer to one new key
/// (whose holder and spare refills are then due), from a settled executor each time.
const BURSTS: usize = 3;

/// Row 9 with its same-run baseline; the JSON of the section and its targets.
pub async fn back_to_back_rows(
    ctl: &mut Conn,
    s: &Session,
    args: &Args,
) -> Result<Section, String> {
    let runs = args.cold_runs;
    let input = Bytes::from_static(INPUT.as_bytes());
    // The baseline: Docker's default start of the same image, settled, in this run.
    let mut baseline = Vec::new();
    for i in 0..runs {
        let mem = POOLS_MEM_BASE + 200 + i as u64;
        baseline.push(settled_baseline(&s.docker, &s.bench_label, mem, &input).await?);
    }
    let one = median(&baseline);
    println!("bench: back to back: engine baseline (ms): {baseline:?}");
    let mut rows = Vec::new();
    let mut section = serde_json::Map::new();
    section.insert("engine_ms".into(), json!(baseline));
    section.insert("engine_median_ms".into(), json!(one));
    let mut targets = Vec::new();
    for (g, (gap, seen_target, first_target, burst_target)) in BACK_TO_BACK.into_iter().enumerate()
    {
        let figures = Gap::measure(ctl, s, args, g, gap).await?;
        let targets_at = Targets {
            seen: seen_target,
            first: first_target,
            burst: burst_target,
        };
        rows.extend(figures.rows(["9a", "9b"][g], runs, one, &targets_at));
        section.insert(format!("gap_{}ms", gap.as_millis()), figures.json(one));
        targets.extend(figures.targets(one, &targets_at));
    }
    reset_executor(ctl, args.pool()).await?;
    Ok(Section {
        rows,
        json: Value::Object(section),
        targets,
    })
}

/// The targets at one gap, as ratios to one Docker default start.
struct Targets {
    seen: f64,
    first: f64,
    burst: f64,
}

/// What one gap measured, in ms.
struct Gap {
    gap: Duration,
    /// First use of present images, one after another.
    first: Vec<f64>,
    /// New keys of one image, one after another.
    seen: Vec<f64>,
    /// Spares claimed by those.
    claimed: f64,
    /// Walls of the bursts of new keys.
    bursts: Vec<f64>,
}

impl Gap {
    /// The gap's three sequences. Each starts from a settled executor with its pools full
    /// and room in the budget, so that only its own refills run among its requests.
    async fn measure(
        ctl: &mut Conn,
        s: &Session,
        args: &Args,
        g: usize,
        gap: Duration,
    ) -> Result<Gap, String> {
        let (addr, docker) = (s.addr, &s.docker);
        let pool = args.pool();
        let runs = args.cold_runs;
        reset_executor(ctl, pool).await?;
        tokio::time::sleep(COLD_SETTLE).await;
        let mut conn = Conn::open(addr).await?;

        // First use of present images, one after another.
        // Tagged ahead, so that the gaps are only the gaps.
        let mut images = Vec::new();
        for i in 0..runs {
            images.push(pools_tag(docker, &format!("b2b{g}-first-{i}")).await?);
        }
        let mut first = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let mem = POOLS_MEM_BASE + i as u64;
            first.push(
                executor_cold_of(ctl, &mut conn, image, COLD_CPU, mem, INPUT)
                    .await?
                    .total_ms,
            );
            tokio::time::sleep(gap).await;
        }

        // New keys of one image, one after another (each may take the spare of the last).
        reset_executor(ctl, pool).await?;
        tokio::time::sleep(COLD_SETTLE).await;
        let mut conn = Conn::open(addr).await?;
        let seen_image = pools_tag(docker, &format!("b2b{g}-seen")).await?;
        let claimed0 = scrape(ctl).await?.value(SPARES_CLAIMED);
        executor_cold_of(
            ctl,
            &mut conn,
            &seen_image,
            COLD_CPU,
            POOLS_MEM_BASE - 1,
            INPUT,
        )
        .await?;
        let mut seen = Vec::new();
        for i in 0..runs {
            tokio::time::sleep(gap).await;
            let mem = POOLS_MEM_BASE + 50 + i as u64;
            seen.push(
                executor_cold_of(ctl, &mut conn, &seen_image, COLD_CPU, mem, INPUT)
                    .await?
                    .total_ms,
            );
        }
        let claimed = scrape(ctl).await?.value(SPARES_CLAIMED) - claimed0;

        // Bursts of new keys of images not run before, each `gap` after one new key.
        let mut bursts = Vec::new();
        for b in 0..BURSTS {
            reset_executor(ctl, pool).await?;
            tokio::time::sleep(COLD_SETTLE).await;
            let lead = pools_tag(docker, &format!("b2b{g}-lead{b}")).await?;
            let mut images = Vec::new();
            for i in 0..PARALLEL {
                images.push(pools_tag(docker, &format!("b2b{g}-burst{b}-{i}")).await?);
            }
            let mut conn = Conn::open(addr).await?;
            executor_cold_of(ctl, &mut conn, &lead, COLD_CPU, POOLS_MEM_BASE, INPUT).await?;
            tokio::time::sleep(gap).await;
            bursts.push(burst_of_new_keys(addr, images).await?);
        }
        println!(
            "bench: back to back, {} s apart (ms): first use {first:?}, seen image {seen:?}, \
             bursts {bursts:?}",
            gap.as_secs_f64()
        );
        Ok(Gap {
            gap,
            first,
            seen,
            claimed,
            bursts,
        })
    }

    /// Ratios to one engine start (`one`, ms): first use, seen image, bursts.
    fn ratios(&self, one: f64) -> (f64, f64, f64) {
        (
            median(&self.first) / one,
            median(&self.seen) / one,
            median(&self.bursts) / one,
        )
    }

    fn rows(&self, n: &'static str, runs: usize, one: f64, t: &Targets) -> Vec<Row> {
        let gap_s = self.gap.as_secs_f64();
        let (first_r, seen_r, burst_r) = self.ratios(one);
        let claimed = self.claimed;
        vec![
            row(
                n,
                format!("back to back, {gap_s} s apart: new key of a seen image, median of {runs} ({claimed} spares claimed)"),
                ms(median(&self.seen)),
                format!("{} engine", ms(one)),
                format!("{seen_r:.2}×"),
                format!("≤ {}×: {}", t.seen, verdict(seen_r <= t.seen)),
            ),
            row(
                "",
                format!("  first use of a present image, median of {runs}"),
                ms(median(&self.first)),
                "",
                format!("{first_r:.2}×"),
                format!("≤ {}×: {}", t.first, verdict(first_r <= t.first)),
            ),
            row(
                "",
                format!("  {PARALLEL} new keys at once, {gap_s} s after one, wall, median of {BURSTS} bursts"),
                ms(median(&self.bursts)),
                "",
                format!("{burst_r:.2}×"),
                format!("≤ {}×: {}", t.burst, verdict(burst_r <= t.burst)),
            ),
        ]
    }

    /// The section's `gap_<ms>ms`.
    fn json(&self, one: f64) -> Value {
        let (first_r, seen_r, burst_r) = self.ratios(one);
        json!({
            "first_use_ms": self.first, "first_use_ratio": first_r,
            "seen_image_ms": self.seen, "seen_image_ratio": seen_r, "spares_claimed": self.claimed,
            "bursts_wall_ms": self.bursts, "burst_ratio": burst_r,
        })
    }

    fn targets(&self, one: f64, t: &Targets) -> Vec<Value> {
        let (first_r, seen_r, burst_r) = self.ratios(one);
        [
            ("seen_image", seen_r, t.seen),
            ("first_use", first_r, t.first),
            ("burst_of_new_keys", burst_r, t.burst),
        ]
        .into_iter()
        .map(|(name, value, target)| {
            json!({
                "name": format!("back_to_back_{}ms_{name}", self.gap.as_millis()),
                "target": format!("<= {target} x engine"),
                "value_ratio": value,
                "met": value <= target,
            })
        })
        .collect()
    }
}
