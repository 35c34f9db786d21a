//! Row 2: throughput through the executor against straight to the task, 1, 8 and 64
//! clients, each its own keep-alive connection, in 1-second slices that alternate between
//! the two so that both see the same noise of the shared host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use mecanywhere_tools::procfs;
use serde_json::{json, Value};

use crate::args::Args;
use crate::conn::{open_conns, Conn};
use crate::error::err;
use crate::host::cpu_ns_schedstat;
use crate::session::Session;
use crate::table::{row, verdict, Row};
use crate::warm::WarmPath;

const THROUGHPUT_CLIENTS: [usize; 3] = [1, 8, 64];
const THROUGHPUT_WARM_UP: Duration = Duration::from_millis(300);
/// Target from the issue (from 8 clients on).
const THROUGHPUT_TARGET_RATIO: f64 = 0.4;

/// What one throughput slice counted.
#[derive(Default, Clone, Copy)]
struct Counted {
    /// Correct answers completed inside the counted window.
    ok: u64,
    /// Wrong answers or transport errors inside the window.
    failed: u64,
    /// Correct answers over the whole slice (warm-up and tail included).
    all: u64,
}

/// Runs every connection as one client (one request at a time each, keep-alive) for `warm`
/// plus `window`, counting the answers completed within `window`. Hands the connections back.
async fn throughput_slice(
    conns: Vec<Conn>,
    body: &Bytes,
    expect: &Bytes,
    warm: Duration,
    window: Duration,
) -> Result<(Vec<Conn>, Counted), String> {
    let count_from = Instant::now() + warm;
    let stop_at = count_from + window;
    let mut tasks = Vec::with_capacity(conns.len());
    for mut conn in conns {
        let body = body.clone();
        let expect = expect.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Counted::default();
            while Instant::now() < stop_at {
                let result = conn.send(Method::POST, "/", body.clone()).await;
                let end = Instant::now();
                let good = matches!(&result, Ok((status, answer)) if *status == StatusCode::OK && *answer == expect);
                c.all += u64::from(good);
                if end >= count_from && end <= stop_at {
                    if good {
                        c.ok += 1;
                    } else {
                        c.failed += 1;
                    }
                }
                if result.is_err() {
                    match Conn::open(conn.addr).await {
                        Ok(fresh) => conn = fresh,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
            (conn, c)
        }));
    }
    let mut conns = Vec::with_capacity(tasks.len());
    let mut total = Counted::default();
    for task in tasks {
        let (conn, c) = task.await.map_err(err("client task"))?;
        conns.push(conn);
        total.ok += c.ok;
        total.failed += c.failed;
        total.all += c.all;
    }
    Ok((conns, total))
}

/// One number of clients.
struct Point {
    clients: usize,
    exec_rps: f64,
    direct_rps: f64,
    exec_failed: u64,
    direct_failed: u64,
    /// CPU per request of the executor's path (executor + relay) and of the task, µs.
    exec_cpu_us: f64,
    task_cpu_us: f64,
}

impl Point {
    fn ratio(&self) -> f64 {
        self.exec_rps / self.direct_rps
    }
}

pub struct Throughput {
    seconds: u64,
    points: Vec<Point>,
    /// The largest RSS of the executor sampled meanwhile, kB.
    pub rss_during_max: u64,
}

impl Throughput {
    pub async fn measure(s: &Session, args: &Args, warm: &WarmPath) -> Result<Throughput, String> {
        let mut points = Vec::new();
        let mut rss_during_max = 0;
        for clients in THROUGHPUT_CLIENTS {
            let (point, rss) = measure_point(s, args.seconds, warm, clients).await?;
            rss_during_max = rss_during_max.max(rss);
            points.push(point);
        }
        Ok(Throughput {
            seconds: args.seconds,
            points,
            rss_during_max,
        })
    }

    pub fn rows(&self) -> Vec<Row> {
        self.points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let failed = p.exec_failed + p.direct_failed;
                let target = if p.clients >= 8 {
                    format!(
                        "≥ {THROUGHPUT_TARGET_RATIO}×: {}",
                        verdict(p.ratio() >= THROUGHPUT_TARGET_RATIO)
                    )
                } else {
                    String::new()
                };
                row(
                    if i == 0 { "2" } else { "" },
                    format!(
                        "throughput, {} client{} ({} s; CPU µs/req executor+relay {:.0}, task {:.0}){}",
                        p.clients,
                        if p.clients == 1 { "" } else { "s" },
                        self.seconds,
                        p.exec_cpu_us,
                        p.task_cpu_us,
                        if failed > 0 {
                            format!(", {failed} failed")
                        } else {
                            String::new()
                        }
                    ),
                    format!("{:.0} req/s", p.exec_rps),
                    format!("{:.0} req/s direct", p.direct_rps),
                    format!("{:.2}×", p.ratio()),
                    target,
                )
            })
            .collect()
    }

    /// The JSON's `throughput`.
    pub fn json(&self) -> Value {
        let mut throughput = serde_json::Map::new();
        for p in &self.points {
            throughput.insert(
                format!("clients_{}", p.clients),
                json!({
                    "clients": p.clients,
                    "executor_rps": p.exec_rps,
                    "direct_rps": p.direct_rps,
                    "ratio": p.ratio(),
                    "executor_failed": p.exec_failed,
                    "executor_cpu_us_per_request": p.exec_cpu_us,
                    "task_cpu_us_per_request": p.task_cpu_us,
                    "direct_failed": p.direct_failed,
                }),
            );
        }
        Value::Object(throughput)
    }

    /// Targets from 8 clients on.
    pub fn targets(&self) -> Vec<Value> {
        self.points
            .iter()
            .filter(|p| p.clients >= 8)
            .map(|p| {
                json!({
                    "name": format!("throughput_{}_clients", p.clients),
                    "target": format!("executor >= {THROUGHPUT_TARGET_RATIO} x direct"),
                    "value_ratio": p.ratio(),
                    "met": p.ratio() >= THROUGHPUT_TARGET_RATIO,
                })
            })
            .collect()
    }
}

/// `clients` clients for a warm-up slice and `seconds` counted 1-second slices on each side;
/// the point and the largest RSS sampled meanwhile (kB).
async fn measure_point(
    s: &Session,
    seconds: u64,
    warm: &WarmPath,
    clients: usize,
) -> Result<(Point, u64), String> {
    let exec_pid = s.exec_pid;
    let window = Duration::from_secs(seconds);
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                let rss = procfs::status_kb(exec_pid, "VmRSS:");
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let bodies = &warm.bodies;
    // Executor and direct alternate in 1-second slices over the same connections, so that
    // both see the same noise of the shared host.
    let mut exec_conns = open_conns(s.addr, clients).await?;
    let mut direct_conns = open_conns(warm.task_addr, clients).await?;
    let mut exec_count = Counted::default();
    let mut direct_count = Counted::default();
    let mut exec_cpu_ns = 0;
    let mut task_cpu_ns = 0;
    for slice in 0..=seconds {
        // Slice 0 only warms both paths up (connections to the task, buffers).
        let (warm_up, counted) = if slice == 0 {
            (THROUGHPUT_WARM_UP, Duration::ZERO)
        } else {
            (Duration::ZERO, Duration::from_secs(1))
        };
        let cpu0 = warm.path_cpu_ns();
        let task0 = cpu_ns_schedstat(warm.task_pid);
        let (conns, c) = throughput_slice(
            exec_conns,
            &bodies.exec,
            &bodies.exec_answer,
            warm_up,
            counted,
        )
        .await?;
        exec_cpu_ns += warm.path_cpu_ns().saturating_sub(cpu0);
        task_cpu_ns += cpu_ns_schedstat(warm.task_pid).saturating_sub(task0);
        exec_conns = conns;
        let (conns, d) =
            throughput_slice(direct_conns, &bodies.input, &bodies.input, warm_up, counted).await?;
        direct_conns = conns;
        if slice > 0 {
            for (total, part) in [(&mut exec_count, c), (&mut direct_count, d)] {
                total.ok += part.ok;
                total.failed += part.failed;
            }
        }
        exec_count.all += c.all;
        direct_count.all += d.all;
    }
    drop(exec_conns);
    drop(direct_conns);
    sampler.abort();
    let point = Point {
        clients,
        exec_rps: exec_count.ok as f64 / window.as_secs_f64(),
        direct_rps: direct_count.ok as f64 / window.as_secs_f64(),
        exec_failed: exec_count.failed,
        direct_failed: direct_count.failed,
        exec_cpu_us: exec_cpu_ns as f64 / 1000.0 / exec_count.all.max(1) as f64,
        task_cpu_us: task_cpu_ns as f64 / 1000.0 / exec_count.all.max(1) as f64,
    };
    println!(
        "bench: {clients:>2} clients: executor {:.0} req/s \
         ({:.0} µs executor+relay CPU per request), direct {:.0} req/s",
        point.exec_rps, point.exec_cpu_us, point.direct_rps
    );
    Ok((point, peak.load(Ordering::Relaxed)))
}
