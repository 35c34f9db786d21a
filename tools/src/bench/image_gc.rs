//! Row 10: image GC stays off a request's path. New keys of an image used recently, started
//! one at a time from a settled executor, first with image_gc at rest (the config the bench
//! starts with: nothing to remove on this host), then with image_gc due on every pass: the
//! config reloaded (SIGHUP) to a byte budget of 1 byte with a pass every second, so each
//! pass lists Docker's images and disk use, measures the filesystem and writes its record
//! while the starts run (`min_age` of a year keeps it from removing the bench's images).
//! The config is reloaded back at the end.

use std::time::Duration;

use serde_json::json;

use crate::args::Args;
use crate::cold::executor_cold_of;
use crate::conn::Conn;
use crate::error::err;
use crate::fixture::{COLD_CPU, COLD_SETTLE, INPUT};
use crate::metrics::{reset_executor, scrape, wait_gauge, FREE_SANDBOXES, SPARES};
use crate::pools::{pools_tag, POOLS_MEM_BASE};
use crate::session::Session;
use crate::stats::median;
use crate::table::{ms, row, verdict, Section};

/// The keys added to the config's image_gc section (its state file) that make every pass
/// due without removing anything.
const DUE_EVERY_SECOND: &str =
    "  high_percent: 0\n  max_bytes: 1\n  min_age: 365days\n  interval: 1s\n";
/// Passes of image_gc, from /metrics.
const PASSES: &str = "meca_image_gc_passes_total";
/// Same p50: within this share of the p50 at rest, or this many ms.
const SAME_SHARE: f64 = 0.10;
const SAME_MS: f64 = 3.0;

/// Row 10; its JSON and target.
pub async fn image_gc_rows(ctl: &mut Conn, s: &Session, args: &Args) -> Result<Section, String> {
    let recent = pools_tag(&s.docker, "gc-recent").await?;
    let at_rest = new_keys(ctl, s, args, &recent, 0).await?;

    let config = s.config.clone();
    let original = std::fs::read_to_string(&config).map_err(err(config.display()))?;
    let due_config = original.replacen("image_gc:\n", &format!("image_gc:\n{DUE_EVERY_SECOND}"), 1);
    if due_config == original {
        return Err("the executor's config has no image_gc section".into());
    }
    reload(s, &config, &due_config)?;
    let passes_before = scrape(ctl).await?.value(PASSES);
    let due = new_keys(ctl, s, args, &recent, 20).await;
    let passes = scrape(ctl).await?.value(PASSES) - passes_before;
    reload(s, &config, &original)?;
    let due = due?;
    reset_executor(ctl, args.pool()).await?;

    let (rest_p50, due_p50) = (median(&at_rest), median(&due));
    let diff = due_p50 - rest_p50;
    let met = diff <= (rest_p50 * SAME_SHARE).max(SAME_MS);
    println!("bench: new key with image_gc at rest (ms): {at_rest:?}; due every 1 s: {due:?} ({passes} passes)");
    let rows = vec![row(
        "10",
        format!(
            "new key of a recent image while image_gc passes every 1 s, median of {} ({passes} passes)",
            due.len()
        ),
        ms(due_p50),
        format!("{} at rest", ms(rest_p50)),
        format!("{diff:+.1} ms"),
        format!(
            "same p50 (≤ +{:.0}% or +{SAME_MS} ms): {}",
            SAME_SHARE * 100.0,
            verdict(met)
        ),
    )];
    let json = json!({
        "at_rest_ms": at_rest, "due_ms": due, "at_rest_median_ms": rest_p50,
        "due_median_ms": due_p50, "passes_while_due": passes,
    });
    let targets = vec![json!({
        "name": "new_key_with_image_gc_due",
        "target": format!("p50 <= at rest + max({}%, {SAME_MS} ms)", SAME_SHARE * 100.0),
        "value_ms": due_p50, "baseline_ms": rest_p50, "met": met,
    })];
    Ok(Section {
        rows,
        json,
        targets,
    })
}

/// From a reset executor with a first key of `image` run (so it has a spare of it), `runs`
/// new keys of `image` (memory from [`POOLS_MEM_BASE`] + `mem_base` up: all of them stay
/// warm within the bench's budget), each from a settled executor (its spare and the free
/// sandboxes back); their times in ms.
async fn new_keys(
    ctl: &mut Conn,
    s: &Session,
    args: &Args,
    image: &str,
    mem_base: u64,
) -> Result<Vec<f64>, String> {
    reset_executor(ctl, args.pool()).await?;
    let mut conn = Conn::open(s.addr).await?;
    executor_cold_of(ctl, &mut conn, image, COLD_CPU, POOLS_MEM_BASE - 2, INPUT).await?;
    let mut times = Vec::new();
    for i in 0..args.cold_runs {
        if args.spares_on() {
            wait_gauge(ctl, SPARES, 1.0).await?;
        }
        wait_gauge(ctl, FREE_SANDBOXES, args.pool()).await?;
        tokio::time::sleep(COLD_SETTLE).await;
        let mut conn = Conn::open(s.addr).await?;
        let mem = POOLS_MEM_BASE + mem_base + i as u64;
        let run = executor_cold_of(ctl, &mut conn, image, COLD_CPU, mem, INPUT).await?;
        times.push(run.total_ms);
    }
    Ok(times)
}

/// Writes `text` as the executor's config and has it reloaded (SIGHUP); returns once the
/// executor says it applied image_gc.
fn reload(s: &Session, config: &std::path::Path, text: &str) -> Result<(), String> {
    let log = &s.log;
    let applied = |log: &str| log.matches("image_gc changed").count();
    let before = applied(&std::fs::read_to_string(log).unwrap_or_default());
    std::fs::write(config, text).map_err(err(config.display()))?;
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &s.exec_pid.to_string()])
        .status()
        .map_err(err("kill -HUP"))?;
    if !sent.success() {
        return Err("could not send SIGHUP to the executor".into());
    }
    for _ in 0..100 {
        if applied(&std::fs::read_to_string(log).unwrap_or_default()) > before {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("the executor did not apply the reloaded image_gc within 5 s".into())
}
