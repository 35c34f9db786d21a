//! Row 8: the cold path's pools (pooled network sandboxes, spares resized on claim): first
//! use of an image present on the host, a new key of an image used recently, and a burst of
//! new keys, each against the Docker baseline of the same run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bollard::query_parameters::TagImageOptions;
use bollard::Docker;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::args::Args;
use crate::baseline::settled_baseline;
use crate::cleanup::leftovers;
use crate::cold::executor_cold_of;
use crate::conn::{execute_answer, execute_body_of, open_conns, Conn};
use crate::error::err;
use crate::fixture::{COLD_CPU, COLD_SETTLE, IMAGE, INPUT, PARALLEL};
use crate::metrics::{reset_executor, scrape, wait_gauge, FREE_SANDBOXES, SPARES, SPARES_CLAIMED};
use crate::session::Session;
use crate::stats::{median, median_phases};
use crate::table::Section;
use crate::table::{ms, phases_text, row, verdict, EXECUTOR_PHASES};

/// Keys of rows 8 and 9 (new keys by memory).
pub const POOLS_MEM_BASE: u64 = 100;
/// Images of rows 8 and 9: tags of the sample image, so that each is an image the executor
/// has or has not run, with the same content as the baseline's.
const POOLS_REPO: &str = "meca-bench-cold";
/// Targets of the cold path, as ratios to Docker's default start of the same image.
const RECENT_TARGET_RATIO: f64 = 0.3;
const PRESENT_TARGET_RATIO: f64 = 0.7;
const BURST_TARGET_RATIO: f64 = 2.0;

/// Tags [`IMAGE`] as `meca-bench-cold:<tag>` (removed at the end); returns the reference.
pub async fn pools_tag(docker: &Docker, tag: &str) -> Result<String, String> {
    let reference = format!("{POOLS_REPO}:{tag}");
    leftovers().tags.push(reference.clone());
    let options = TagImageOptions {
        repo: Some(POOLS_REPO.into()),
        tag: Some(tag.to_string()),
    };
    docker
        .tag_image(IMAGE, Some(options))
        .await
        .map_err(err("docker tag"))?;
    Ok(reference)
}

/// One new key (cpu 0.1) of each of `images` at once, each on its own connection; the wall
/// time until the last answered, in ms. Every answer is checked.
pub async fn burst_of_new_keys(addr: SocketAddr, images: Vec<String>) -> Result<f64, String> {
    let conns = open_conns(addr, images.len()).await?;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, (mut c, image)) in conns.into_iter().zip(images).enumerate() {
        let body = execute_body_of(&image, Some(COLD_CPU), Some(POOLS_MEM_BASE), INPUT);
        let answer = execute_answer(INPUT);
        tasks.push(tokio::spawn(async move {
            let (status, got) = c.send(Method::POST, "/", body).await?;
            if status != StatusCode::OK || got != answer {
                return Err(format!(
                    "burst start {i}: HTTP {status}: {}",
                    String::from_utf8_lossy(&got)
                ));
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(err("burst client"))??;
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Rows 8a-8c with their same-run baselines; the JSON of the section and its targets.
pub async fn pools_rows(ctl: &mut Conn, s: &Session, args: &Args) -> Result<Section, String> {
    let pool = args.pool();
    reset_executor(ctl, pool).await?;
    let present = first_use_of_present_images(ctl, s, args).await?;
    // The recent image's spare needs a place among the spares (bounded in count).
    reset_executor(ctl, pool).await?;
    let (recent, claimed) = new_keys_of_a_recent_image(ctl, s, args).await?;
    reset_executor(ctl, pool).await?;
    let burst_wall = burst_of_images_not_run(ctl, s, args).await?;
    reset_executor(ctl, pool).await?;
    let pools = Pools {
        pool,
        spares_on: args.spares_on(),
        runs: args.cold_runs,
        present,
        recent,
        claimed,
        burst_wall,
    };
    println!(
        "bench: first use of a present image (ms): {:?}, engine {:?}",
        pools.present.executor, pools.present.engine
    );
    println!(
        "bench: new key of a recent image (ms): {:?}, engine {:?}",
        pools.recent.executor, pools.recent.engine
    );
    Ok(pools.section())
}

/// Cold starts of one kind, each followed by a baseline start of the same memory, in ms.
struct Starts {
    executor: Vec<f64>,
    phases: Vec<std::collections::BTreeMap<String, f64>>,
    engine: Vec<f64>,
}

/// 8a: first use of an image already present on the host: no spare of it can exist; the
/// start joins a pooled sandbox (when the pool is on and refilled).
async fn first_use_of_present_images(
    ctl: &mut Conn,
    s: &Session,
    args: &Args,
) -> Result<Starts, String> {
    let input = Bytes::from_static(INPUT.as_bytes());
    let mut starts = Starts {
        executor: Vec::new(),
        phases: Vec::new(),
        engine: Vec::new(),
    };
    for i in 0..args.cold_runs {
        let image = pools_tag(&s.docker, &format!("first-{i}")).await?;
        wait_gauge(ctl, FREE_SANDBOXES, args.pool()).await?;
        tokio::time::sleep(COLD_SETTLE).await;
        let mem = POOLS_MEM_BASE + i as u64;
        // A fresh connection per start: waiting for the pools can outlast the executor's
        // keep-alive of an idle connection.
        let mut conn = Conn::open(s.addr).await?;
        let run = executor_cold_of(ctl, &mut conn, &image, COLD_CPU, mem, INPUT).await?;
        starts.executor.push(run.total_ms);
        starts.phases.push(run.phases);
        if args.spares_on() {
            // Let the spare of the image start before the baseline runs.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        starts
            .engine
            .push(settled_baseline(&s.docker, &s.bench_label, mem, &input).await?);
    }
    Ok(starts)
}

/// 8b: new keys of an image used recently: its spare, resized. Also the spares claimed.
async fn new_keys_of_a_recent_image(
    ctl: &mut Conn,
    s: &Session,
    args: &Args,
) -> Result<(Starts, f64), String> {
    let input = Bytes::from_static(INPUT.as_bytes());
    let recent = pools_tag(&s.docker, "recent").await?;
    let mut starts = Starts {
        executor: Vec::new(),
        phases: Vec::new(),
        engine: Vec::new(),
    };
    let claimed0 = scrape(ctl).await?.value(SPARES_CLAIMED);
    let mut conn = Conn::open(s.addr).await?;
    executor_cold_of(ctl, &mut conn, &recent, COLD_CPU, POOLS_MEM_BASE - 1, INPUT).await?;
    for i in 0..args.cold_runs {
        if args.spares_on() {
            wait_gauge(ctl, SPARES, 1.0).await?;
        }
        wait_gauge(ctl, FREE_SANDBOXES, args.pool()).await?;
        tokio::time::sleep(COLD_SETTLE).await;
        let mem = POOLS_MEM_BASE + 50 + i as u64;
        let mut conn = Conn::open(s.addr).await?;
        let run = executor_cold_of(ctl, &mut conn, &recent, COLD_CPU, mem, INPUT).await?;
        starts.executor.push(run.total_ms);
        starts.phases.push(run.phases);
        starts
            .engine
            .push(settled_baseline(&s.docker, &s.bench_label, mem, &input).await?);
    }
    let claimed = scrape(ctl).await?.value(SPARES_CLAIMED) - claimed0;
    Ok((starts, claimed))
}

/// 8c: [`PARALLEL`] new keys at once, of images the executor has not run; the wall, ms.
async fn burst_of_images_not_run(ctl: &mut Conn, s: &Session, args: &Args) -> Result<f64, String> {
    let mut images = Vec::new();
    for i in 0..PARALLEL {
        images.push(pools_tag(&s.docker, &format!("burst-{i}")).await?);
    }
    wait_gauge(ctl, FREE_SANDBOXES, args.pool()).await?;
    tokio::time::sleep(COLD_SETTLE).await;
    burst_of_new_keys(s.addr, images).await
}

/// What rows 8a-8c measured.
struct Pools {
    pool: f64,
    spares_on: bool,
    runs: usize,
    present: Starts,
    recent: Starts,
    /// Spares claimed by the recent image's new keys.
    claimed: f64,
    burst_wall: f64,
}

impl Pools {
    fn section(&self) -> Section {
        let (present, present_base) = (&self.present.executor, &self.present.engine);
        let (recent, claimed) = (&self.recent, self.claimed);
        let (recent_runs, recent_base) = (&recent.executor, &recent.engine);
        let (runs, burst_wall) = (self.runs, self.burst_wall);
        let present_median = median(present);
        let present_base_median = median(present_base);
        let recent_median = median(recent_runs);
        let recent_base_median = median(recent_base);
        let one_baseline = median(&[present_base.clone(), recent_base.clone()].concat());
        let present_ratio = present_median / present_base_median;
        let recent_ratio = recent_median / recent_base_median;
        let burst_ratio = burst_wall / one_baseline;
        let present_met = present_ratio <= PRESENT_TARGET_RATIO;
        let recent_met = recent_ratio <= RECENT_TARGET_RATIO;
        let burst_met = burst_ratio <= BURST_TARGET_RATIO;
        let present_phase_median = median_phases(self.present.phases.iter());
        let recent_phase_median = median_phases(recent.phases.iter());
        let rows = vec![
            row(
                "8a",
                format!("first use of an image present on the host, median of {runs}"),
                ms(present_median),
                format!("{} engine", ms(present_base_median)),
                format!("{present_ratio:.2}×"),
                format!("≤ {PRESENT_TARGET_RATIO}×: {}", verdict(present_met)),
            ),
            row(
                "",
                "  executor phases: image/reserve/create/start/first call (ms)",
                phases_text(&present_phase_median, &EXECUTOR_PHASES),
                "",
                "",
                "",
            ),
            row(
                "8b",
                format!(
                    "new key of an image used recently, median of {runs} ({claimed} spares claimed)"
                ),
                ms(recent_median),
                format!("{} engine", ms(recent_base_median)),
                format!("{recent_ratio:.2}×"),
                format!("≤ {RECENT_TARGET_RATIO}×: {}", verdict(recent_met)),
            ),
            row(
                "",
                "  executor phases: image/resize/first call (ms)",
                phases_text(&recent_phase_median, &["image", "resize", "first_call"]),
                "",
                "",
                "",
            ),
            row(
                "8c",
                format!("{PARALLEL} new keys (images not run before) at once, wall"),
                ms(burst_wall),
                format!("{} one engine start", ms(one_baseline)),
                format!("{burst_ratio:.2}×"),
                format!("≤ {BURST_TARGET_RATIO}×: {}", verdict(burst_met)),
            ),
        ];
        let json = json!({
            "sandbox_pool": self.pool,
            "spares": self.spares_on,
            "first_use_present_image": {
                "executor_ms": present, "engine_ms": present_base,
                "executor_median_ms": present_median, "engine_median_ms": present_base_median,
                "ratio": present_ratio, "executor_phases_median_ms": present_phase_median,
            },
            "new_key_recent_image": {
                "executor_ms": recent_runs, "engine_ms": recent_base,
                "executor_median_ms": recent_median, "engine_median_ms": recent_base_median,
                "ratio": recent_ratio, "spares_claimed": claimed,
                "executor_phases_median_ms": recent_phase_median,
            },
            "burst": {
                "count": PARALLEL, "wall_ms": burst_wall, "one_engine_start_ms": one_baseline,
                "ratio": burst_ratio,
            },
        });
        let targets = vec![
            json!({"name": "first_use_present_image", "target": format!("<= {PRESENT_TARGET_RATIO} x engine"), "value_ratio": present_ratio, "met": present_met}),
            json!({"name": "new_key_recent_image", "target": format!("<= {RECENT_TARGET_RATIO} x engine"), "value_ratio": recent_ratio, "met": recent_met}),
            json!({"name": "burst_of_new_keys", "target": format!("<= {BURST_TARGET_RATIO} x one engine start"), "value_ratio": burst_ratio, "met": burst_met}),
        ];
        Section {
            rows,
            json,
            targets,
        }
    }
}
