//! Benchmark: drives a real executor (this build's `mecanywhere-executor`, on the local Docker
//! daemon) and measures every figure side by side with a baseline taken in the same run:
//! warm latency and throughput against calling the task container directly, cold starts
//! against the bench's own create + start + ready + first call through the Docker API,
//! parallel cold starts, the executor's memory and idle CPU, warm latency with many image
//! tags, and prewarm. Prints one table, writes the figures as JSON.
//!
//! Usage: `cargo build --release && cargo run --release -p mecanywhere-tools --bin bench
//! [-- --seconds N --json PATH --cold-runs N ...]` (`--help` lists every flag; `--seconds 5`
//! per throughput point, JSON to `<target dir>/bench-results.json`, 11 cold starts). Builds
//! the task images with `scripts/build-task-images.sh` when `meca-echo:latest` is missing;
//! never pulls. Everything it creates (the executor process, its containers, the baseline
//! containers labelled `org.mecanywhere.bench=<pid>`, image tags, the temp dir) is removed at
//! the end, also on failure, panic or Ctrl-C.
//!
//! Modules, in the order of a run: [`session`] starts the executor, [`footprint`] (row 5),
//! [`cold`] (rows 3, 3b), [`prewarm`] (7), [`parallel`] (4), [`pools`] (8),
//! [`back_to_back`] (9), [`image_gc`] (10), [`warm`] (1, 6), [`throughput`] (2); [`baseline`] is the Docker
//! baseline, [`conn`] the HTTP connection, [`metrics`] the executor's `/metrics`, [`table`]
//! the printed table, [`cleanup`] what is removed at the end; [`fixture`] holds the image,
//! labels and keys the rows share, [`error`] the bench's error messages.

mod args;
mod back_to_back;
mod baseline;
mod cleanup;
mod cold;
mod conn;
mod error;
mod fixture;
mod footprint;
mod host;
mod image_gc;
mod metrics;
mod parallel;
mod pools;
mod prewarm;
mod session;
mod stats;
mod table;
mod throughput;
mod warm;

use std::path::Path;
use std::time::{Duration, Instant};

use hyper::Method;
use mecanywhere_tools::launch;
use serde_json::{json, Value};

use args::{Args, Only};
use cleanup::{cleanup, leftovers, CleanupGuard};
use conn::Conn;
use error::err;
use fixture::PARALLEL;
use table::print_table;

fn main() {
    let args = Args::parse_bounded();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        cleanup();
    }));
    // Worker count set here, so that TOKIO_WORKER_THREADS (inherited by the executor) only
    // changes the executor.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(host::cores())
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = {
        let _guard = CleanupGuard;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .map_err(err("SIGTERM handler"))?;
                tokio::select! {
                    result = run(args) => result,
                    _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
                    _ = term.recv() => Err("terminated".to_string()),
                }
            })
        }));
        match outcome {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                eprintln!("bench: FAILED: {e}");
                print_executor_log_tail();
                1
            }
            Err(_) => 101,
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

/// The last 20 lines of the executor's log, after a failed run.
fn print_executor_log_tail() {
    if let Some(dir) = leftovers().temp_dir.clone() {
        let log = std::fs::read_to_string(dir.join("executor.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        if !tail.is_empty() {
            eprintln!("bench: last lines of the executor's log:");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
    }
}

fn write_json(path: &Path, results: serde_json::Map<String, Value>) -> Result<(), String> {
    let text = serde_json::to_string_pretty(&Value::Object(results)).map_err(err("JSON"))?;
    std::fs::write(path, text + "\n").map_err(err(path.display()))
}

/// The whole run: the executor started, the rows in their order, the table, the JSON.
async fn run(args: Args) -> Result<(), String> {
    let run_started = Instant::now();
    let exe = std::env::current_exe().map_err(err("own path"))?;
    let executor_bin = launch::executor_binary().map_err(err("own path"))?;
    if !executor_bin.is_file() {
        return Err(format!(
            "{} not found: build it ({})",
            executor_bin.display(),
            launch::BUILD_HINT
        ));
    }
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| session::default_json_path(&exe));

    let (docker, docker_version) = session::connect_docker().await?;
    session::ensure_image()?;
    let cores = host::cores();
    let machine = host::describe_machine(cores, &docker_version);

    // --- the executor --------------------------------------------------------------------
    let (s, mut ctl) = session::Session::start(&args, docker, &executor_bin, cores).await?;
    let mut results = serde_json::Map::new();
    results.insert("schema".into(), json!("mecanywhere-executor-bench/1"));
    results.insert("machine".into(), machine);
    results.insert(
        "settings".into(),
        json!({
            "seconds_per_throughput_point": args.seconds,
            "cold_runs": args.cold_runs,
            "latency_calls": warm::LATENCY_CALLS,
            "latency_warm_up_calls": warm::WARM_UP_CALLS,
            "tagged_calls": warm::TAGGED_CALLS,
            "extra_tags": warm::EXTRA_TAGS,
            "parallel_cold_starts": PARALLEL,
            "executor_budget_cpu": cores,
        }),
    );

    // --- row 5a: idle memory and CPU -------------------------------------------------------
    let idle = footprint::Idle::measure(s.exec_pid).await;

    if let Some(only) = args.only {
        let (key, section) = match only {
            Only::BackToBack => (
                "cold_path_back_to_back",
                back_to_back::back_to_back_rows(&mut ctl, &s, &args).await?,
            ),
            Only::ImageGc => (
                "image_gc_off_the_request_path",
                image_gc::image_gc_rows(&mut ctl, &s, &args).await?,
            ),
        };
        println!();
        print_table(&section.rows);
        results.insert(key.into(), section.json);
        results.insert("targets".into(), Value::Array(section.targets));
        write_json(&json_path, results)?;
        ctl.control(Method::POST, "/stop").await?;
        println!(
            "bench: figures written to {}; run took {:.0} s",
            json_path.display(),
            run_started.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    // --- rows 3, 3b, 7, 4: cold starts ------------------------------------------------------
    let mut conn = Conn::open(s.addr).await?;
    let cold = cold::ColdStarts::measure(&mut ctl, &mut conn, &s, &args).await?;
    let eviction = cold::Eviction::measure(&mut ctl, &mut conn, &s, &args).await?;
    let prewarm = prewarm::Prewarm::measure(&mut ctl, &mut conn).await?;
    let parallel = parallel::Parallel::measure(&mut ctl, &s, &args, &cold).await?;

    // --- rows 8 and 9: the cold path's pools, and the same new keys back to back -------------
    let pools = pools::pools_rows(&mut ctl, &s, &args).await?;
    let b2b = back_to_back::back_to_back_rows(&mut ctl, &s, &args).await?;
    let gc = image_gc::image_gc_rows(&mut ctl, &s, &args).await?;
    // The request connection sat idle meanwhile, longer than the executor keeps one open.
    conn = Conn::open(s.addr).await?;

    // --- rows 1, 6, 2: the warm path ----------------------------------------------------------
    let mut warm = warm::WarmPath::open(&mut conn, &s).await?;
    let latency = warm::Latency::measure(&mut conn, &mut warm).await?;
    let many_images = warm::ManyImages::measure(&mut conn, &mut warm, &s.docker).await?;
    let throughput = throughput::Throughput::measure(&s, &args, &warm).await?;
    let footprint = footprint::Footprint {
        idle: &idle,
        rss_peak_kb: mecanywhere_tools::procfs::status_kb(s.exec_pid, "VmHWM:"),
        rss_during_max: throughput.rss_during_max,
    };

    // --- stop ---------------------------------------------------------------------------------
    drop(conn);
    let warm::WarmPath {
        direct, direct_id, ..
    } = warm;
    drop(direct);
    // The direct baseline's own container goes before the check that nothing is left.
    baseline::remove_baseline(&s.docker, &direct_id).await?;
    let stop = s.stop(&mut ctl).await?;

    // --- the table -----------------------------------------------------------------------------
    let mut rows = Vec::new();
    rows.extend(latency.rows());
    rows.extend(throughput.rows());
    rows.extend(cold.rows());
    rows.extend(eviction.rows(&cold));
    rows.extend(parallel.rows());
    rows.extend(pools.rows);
    rows.extend(b2b.rows);
    rows.extend(gc.rows);
    rows.extend(footprint.rows());
    rows.extend(many_images.rows());
    rows.extend(prewarm.rows());
    println!();
    print_table(&rows);
    println!(
        "* bench criterion, not from the issue: overhead p50 with tags ≤ without + max(20%, 50 µs)"
    );
    stop.print();

    // --- JSON --------------------------------------------------------------------------------
    results.insert("warm_latency".into(), latency.json());
    results.insert("throughput".into(), throughput.json());
    results.insert("cold_start_with_eviction".into(), eviction.json(&cold));
    results.insert("cold_start".into(), cold.json());
    results.insert("parallel_cold_start".into(), parallel.json());
    results.insert("cold_path_pools".into(), pools.json);
    results.insert("cold_path_back_to_back".into(), b2b.json);
    results.insert("image_gc_off_the_request_path".into(), gc.json);
    results.insert("memory".into(), footprint.json());
    results.insert("idle_cpu".into(), idle.json());
    results.insert("many_images".into(), many_images.json());
    results.insert("prewarm".into(), prewarm.json());
    results.insert("stop".into(), stop.json());
    let mut targets = latency.targets();
    targets.extend(throughput.targets());
    targets.push(footprint.target());
    targets.extend(pools.targets);
    targets.extend(b2b.targets);
    targets.extend(gc.targets);
    targets.push(cold.target());
    targets.push(parallel.target());
    targets.push(idle.target());
    targets.push(many_images.target());
    results.insert("targets".into(), Value::Array(targets));
    let run_seconds = run_started.elapsed().as_secs_f64();
    results.insert("run_seconds".into(), json!(run_seconds));
    if let Some(parent) = json_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    write_json(&json_path, results)?;
    println!(
        "bench: figures written to {}; run took {run_seconds:.0} s",
        json_path.display()
    );
    if !stop.clean() {
        return Err("the executor did not stop cleanly (see above)".into());
    }
    Ok(())
}
