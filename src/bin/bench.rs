//! Benchmark: drives a real executor (this build's `mecanywhere-executor`, on the local Docker
//! daemon) and measures every figure side by side with a baseline taken in the same run:
//! warm latency and throughput against calling the task container directly, cold starts
//! against the bench's own create + start + ready + first call through the Docker API,
//! parallel cold starts, the executor's memory and idle CPU, warm latency with many image
//! tags, and prewarm. Prints one table, writes the figures as JSON.
//!
//! Usage: `cargo run --release --bin bench [-- --seconds N --json PATH --cold-runs N]`
//! (`--seconds 5` per throughput point, JSON to `<target dir>/bench-results.json`, 11 cold
//! starts). Builds the task images with `scripts/build-task-images.sh` when `meca-echo:latest`
//! is missing; never pulls. Everything it creates (the executor process, its containers, the
//! baseline containers labelled `org.mecanywhere.bench=<pid>`, image tags, the temp dir) is
//! removed at the end, also on failure, panic or Ctrl-C.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, LogsOptions, RemoveContainerOptions,
    StartContainerOptions, TagImageOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const IMAGE: &str = "meca-echo:latest";
const INPUT: &str = "{\"name\":\"sbip\"}";
const LABEL_EXECUTOR: &str = "org.mecanywhere.executor";
const LABEL_MEM: &str = "org.mecanywhere.mem-mb";
const LABEL_ROLE: &str = "org.mecanywhere.role";
const LABEL_BENCH: &str = "org.mecanywhere.bench";
const READY_LINE: &str = "meca-init-done";
/// The prewarmed key (row 7) and its non-prewarmed twin (same cpu, next mem).
const PREWARM_CPU: f64 = 0.25;
const PREWARM_MEM: u64 = 48;
/// Keys of rows 3 and 4 (new keys by memory).
const COLD_CPU: f64 = 0.1;
const COLD_MEM_BASE: u64 = 40;
/// Cold starts that each evict the previous one's idle container (row 3b), and their memory.
const EVICT_RUNS: usize = 7;
const EVICT_MEM_BASE: u64 = 60;
const PARALLEL_MEM_BASE: u64 = 80;
const PARALLEL: usize = 8;
/// Pause before each cold start, so that the previous one's aftermath has settled.
const COLD_SETTLE: Duration = Duration::from_millis(500);
const WARM_UP_CALLS: usize = 200;
const LATENCY_CALLS: usize = 2000;
const TAGGED_CALLS: usize = 1000;
const EXTRA_TAGS: usize = 50;
const IDLE_SECONDS: u64 = 10;
const THROUGHPUT_CLIENTS: [usize; 3] = [1, 8, 64];
const THROUGHPUT_WARM_UP: Duration = Duration::from_millis(300);
/// Targets from the issue.
const COLD_TARGET_MS: f64 = 15.0;
const PARALLEL_TARGET_RATIO: f64 = 2.0;
const IDLE_CPU_TARGET_PERCENT: f64 = 0.1;
const P50_OVERHEAD_TARGET_US: f64 = 200.0;
const P99_OVERHEAD_TARGET_US: f64 = 1000.0;
const THROUGHPUT_TARGET_RATIO: f64 = 0.4;
const RSS_IDLE_TARGET_MB: f64 = 20.0;
const RSS_LOAD_TARGET_MB: f64 = 64.0;

struct Args {
    seconds: u64,
    json: Option<PathBuf>,
    cold_runs: usize,
    /// `background_eviction` in the executor's config (`--background-eviction false`).
    background_eviction: bool,
    /// `sandbox_pool` and `spare_containers` in the executor's config; `None` = its defaults.
    sandbox_pool: Option<u64>,
    spare_containers: Option<u64>,
    /// `--only back-to-back`: only the back-to-back cold-path rows (row 9).
    only_back_to_back: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 5,
        json: None,
        cold_runs: 11,
        background_eviction: true,
        sandbox_pool: None,
        spare_containers: None,
        only_back_to_back: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("bench: {flag} needs a value");
            std::process::exit(2)
        };
        let number = || -> u64 {
            value.parse().unwrap_or_else(|_| {
                eprintln!("bench: {flag} needs a number, got {value:?}");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--seconds" => args.seconds = number().max(1),
            "--cold-runs" => args.cold_runs = (number() as usize).max(5),
            "--json" => args.json = Some(PathBuf::from(&value)),
            "--sandbox-pool" => args.sandbox_pool = Some(number().min(64)),
            "--spare-containers" => args.spare_containers = Some(number().min(64)),
            "--only" if value == "back-to-back" => args.only_back_to_back = true,
            "--background-eviction" => {
                args.background_eviction = value.parse().unwrap_or_else(|_| {
                    eprintln!("bench: {flag} needs true or false, got {value:?}");
                    std::process::exit(2)
                })
            }
            other => {
                eprintln!(
                    "bench: unknown flag {other} (use --seconds N, --json PATH, --cold-runs N, \
                     --background-eviction true|false, --sandbox-pool N, --spare-containers N, \
                     --only back-to-back)"
                );
                std::process::exit(2)
            }
        }
    }
    args
}

// ---------------------------------------------------------------------------------------
// Cleanup: everything the bench creates is registered here before it exists, and removed by
// `cleanup()` from the guard in `main`, from the panic hook, and on Ctrl-C / SIGTERM.

struct Leftovers {
    executor: Option<Child>,
    executor_name: Option<String>,
    bench_label: Option<String>,
    tags: Vec<String>,
    temp_dir: Option<PathBuf>,
}

static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers {
    executor: None,
    executor_name: None,
    bench_label: None,
    tags: Vec::new(),
    temp_dir: None,
});

fn leftovers() -> std::sync::MutexGuard<'static, Leftovers> {
    LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes whatever is still registered; idempotent. Never panics.
fn cleanup() {
    // try_lock: a panic inside cleanup must not deadlock the panic hook.
    let mut state = match LEFTOVERS.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if let Some(mut child) = state.executor.take() {
        if let Ok(None) = child.try_wait() {
            eprintln!("bench: cleanup: killing executor (pid {})", child.id());
            let _ = child.kill();
        }
        let _ = child.wait();
    }
    if let Some(name) = state.executor_name.take() {
        let ids = docker_lines(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={LABEL_EXECUTOR}={name}"),
        ]);
        if !ids.is_empty() {
            eprintln!(
                "bench: cleanup: removing {} executor container(s)",
                ids.len()
            );
            docker_rm(&ids);
        }
    }
    if let Some(label) = state.bench_label.take() {
        let ids = docker_lines(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={LABEL_BENCH}={label}"),
        ]);
        if !ids.is_empty() {
            eprintln!(
                "bench: cleanup: removing {} baseline container(s)",
                ids.len()
            );
            docker_rm(&ids);
        }
    }
    let tags = std::mem::take(&mut state.tags);
    if !tags.is_empty() {
        let present: Vec<&String> = tags
            .iter()
            .filter(|t| !docker_cli(&["image", "inspect", "-f", "{{.Id}}", t]).is_empty())
            .collect();
        if !present.is_empty() {
            let mut rmi = vec!["rmi"];
            rmi.extend(present.iter().map(|t| t.as_str()));
            docker_cli(&rmi);
            eprintln!("bench: cleanup: removed {} image tag(s)", present.len());
        }
    }
    if let Some(dir) = state.temp_dir.take() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup();
    }
}

// ---------------------------------------------------------------------------------------
// Docker CLI (cleanup, lookups) and small /proc readers.

fn docker_cli(args: &[&str]) -> String {
    match Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(_) => String::new(),
    }
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    docker_cli(args)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn docker_rm(ids: &[String]) {
    let mut rm = vec!["rm", "-f", "-v"];
    rm.extend(ids.iter().map(String::as_str));
    docker_cli(&rm);
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of the process (all threads, dead ones included), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime field 14, stime field 15.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Time on CPU of the live threads, in nanoseconds (schedstat: finer than clock ticks).
fn cpu_ns_schedstat(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Busy time of the whole host (all CPUs: user, nice, system, irq, softirq; not idle, iowait
/// or steal), in clock ticks.
fn host_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    get(0) + get(1) + get(2) + get(5) + get(6)
}

/// Clock ticks per second (`getconf CLK_TCK`, else 100), read once.
fn ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(clock_ticks)
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------------------
// HTTP: one keep-alive HTTP/1.1 connection per `Conn`, so "each client its own connection"
// holds by construction.

fn err<E: std::fmt::Display>(context: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{context}: {e}")
}

struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(err(format!("connect to {addr}")))?;
        stream.set_nodelay(true).map_err(err("TCP_NODELAY"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(err(format!("HTTP handshake with {addr}")))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).map_err(err("host header"))?,
            sender,
        })
    }

    /// One request on this connection; no retry (measured calls and non-idempotent ones).
    async fn send(
        &mut self,
        method: Method,
        path: &'static str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        self.sender
            .ready()
            .await
            .map_err(err(format!("connection to {}", self.addr)))?;
        let request = Request::builder()
            .method(method)
            .uri(Uri::from_static(path))
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .map_err(err("request"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(err(format!("{path} on {}", self.addr)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(err(format!("answer of {path} on {}", self.addr)))?
            .to_bytes();
        Ok((status, body))
    }

    /// An idempotent control request: reconnects once when the connection went away.
    async fn control(&mut self, method: Method, path: &'static str) -> Result<Bytes, String> {
        if self.sender.is_closed() {
            *self = Conn::open(self.addr).await?;
        }
        let result = match self.send(method.clone(), path, Bytes::new()).await {
            Ok(r) => Ok(r),
            Err(_) => {
                *self = Conn::open(self.addr).await?;
                self.send(method, path, Bytes::new()).await
            }
        };
        let (status, body) = result?;
        if !status.is_success() {
            return Err(format!(
                "{path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body)
    }
}

fn execute_body(cpu: Option<f64>, mem: Option<u64>, input: &str) -> Bytes {
    execute_body_of(IMAGE, cpu, mem, input)
}

fn execute_body_of(image: &str, cpu: Option<f64>, mem: Option<u64>, input: &str) -> Bytes {
    let mut v = json!({"id": image, "input": input});
    if let (Some(cpu), Some(mem)) = (cpu, mem) {
        v["resource"] = json!({"cpu": cpu, "mem": mem});
    }
    Bytes::from(v.to_string())
}

fn execute_answer(input: &str) -> Bytes {
    // The executor's field order (serde_json's map would sort the keys).
    Bytes::from(format!(
        "{{\"success\":true,\"msg\":{}}}",
        Value::from(input)
    ))
}

/// Sends `n` requests and records each latency in nanoseconds; every answer is checked.
async fn timed_calls(
    conn: &mut Conn,
    body: &Bytes,
    expect: &Bytes,
    n: usize,
    out: &mut Vec<u64>,
) -> Result<(), String> {
    for _ in 0..n {
        let started = Instant::now();
        let (status, answer) = conn.send(Method::POST, "/", body.clone()).await?;
        let elapsed = started.elapsed().as_nanos() as u64;
        if status != StatusCode::OK || answer != *expect {
            return Err(format!(
                "unexpected answer from {}: HTTP {status}: {}",
                conn.addr,
                String::from_utf8_lossy(&answer)
            ));
        }
        out.push(elapsed);
    }
    Ok(())
}

/// `n` calls through the executor and `n` straight to the task, interleaved in blocks of 100
/// so that both see the same noise on the shared cores.
async fn interleaved_latency(
    executor: &mut Conn,
    direct: &mut Conn,
    bodies: &Bodies,
    n: usize,
) -> Result<(Vec<u64>, Vec<u64>), String> {
    let mut via = Vec::with_capacity(n);
    let mut straight = Vec::with_capacity(n);
    let block = 100;
    let mut done = 0;
    while done < n {
        let k = block.min(n - done);
        timed_calls(executor, &bodies.exec, &bodies.exec_answer, k, &mut via).await?;
        timed_calls(direct, &bodies.input, &bodies.input, k, &mut straight).await?;
        done += k;
    }
    Ok((via, straight))
}

struct Bodies {
    /// `POST /` to the executor, default resources.
    exec: Bytes,
    exec_answer: Bytes,
    /// The input, as sent straight to the task (and echoed back).
    input: Bytes,
}

#[derive(Clone, Copy, Default)]
struct Percentiles {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
}

fn percentiles(samples: &mut [u64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    Percentiles {
        p50_us: at(0.50),
        p99_us: at(0.99),
        mean_us: samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0,
    }
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

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

async fn open_conns(addr: SocketAddr, n: usize) -> Result<Vec<Conn>, String> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(addr).await?);
    }
    Ok(conns)
}

// ---------------------------------------------------------------------------------------
// /metrics of the executor.

/// `name{labels}` → value, from the text exposition format.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn phase_sums(metrics: &BTreeMap<String, f64>) -> BTreeMap<String, (f64, f64)> {
    let mut out = BTreeMap::new();
    for (key, value) in metrics {
        for (suffix, slot) in [("_sum{phase=\"", 0), ("_count{phase=\"", 1)] {
            let prefix = format!("meca_cold_start_phase_seconds{suffix}");
            if let Some(rest) = key.strip_prefix(&prefix) {
                let phase = rest.trim_end_matches("\"}").to_string();
                let entry: &mut (f64, f64) = out.entry(phase).or_default();
                if slot == 0 {
                    entry.0 = *value;
                } else {
                    entry.1 = *value;
                }
            }
        }
    }
    out
}

/// Per phase: (seconds, count) added between two scrapes.
fn phase_diff(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, (f64, f64)> {
    let b = phase_sums(before);
    phase_sums(after)
        .into_iter()
        .map(|(phase, (sum, count))| {
            let (sum0, count0) = b.get(&phase).copied().unwrap_or_default();
            (phase, (sum - sum0, count - count0))
        })
        .filter(|(_, (_, count))| *count > 0.0)
        .collect()
}

const PHASE_ORDER: [&str; 4] = ["image", "reserve", "create", "start"];

async fn scrape(ctl: &mut Conn) -> Result<BTreeMap<String, f64>, String> {
    let body = ctl.control(Method::GET, "/metrics").await?;
    Ok(parse_metrics(&String::from_utf8_lossy(&body)))
}

fn gauge(metrics: &BTreeMap<String, f64>, key: &str) -> f64 {
    metrics.get(key).copied().unwrap_or(0.0)
}

/// Waits until the executor holds exactly `idle` idle containers and nothing is starting,
/// busy or being removed (e.g. the prewarmed container is ready).
async fn wait_settled(ctl: &mut Conn, idle: f64, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let m = scrape(ctl).await?;
        if gauge(&m, "meca_containers{state=\"idle\"}") == idle
            && gauge(&m, "meca_containers{state=\"starting\"}") == 0.0
            && gauge(&m, "meca_containers{state=\"busy\"}") == 0.0
            && gauge(&m, "meca_containers{state=\"removing\"}") == 0.0
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "executor did not settle with {idle} idle container(s) within {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes every warm container and spare (pause), then lets the prewarm keeper start its
/// key again and the sandbox pool (`sandbox_pool` holders) refill: every cold start measured
/// after it meets the same host, in the executor's steady state.
async fn reset_executor(ctl: &mut Conn, sandbox_pool: f64) -> Result<(), String> {
    ctl.control(Method::POST, "/pause").await?;
    ctl.control(Method::POST, "/unpause").await?;
    wait_settled(ctl, 1.0, Duration::from_secs(60)).await?;
    wait_gauge(ctl, FREE_SANDBOXES, sandbox_pool).await?;
    // Let dockerd finish its own cleanup of the removed containers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Cold starts.

#[derive(Clone, Default)]
struct ExecCold {
    total_ms: f64,
    /// CPU the whole host spent meanwhile (executor, dockerd, containerd, runc, kernel), ms.
    host_cpu_ms: f64,
    /// image, reserve, create, start, first_call (ms).
    phases: BTreeMap<String, f64>,
}

/// One cold start through the executor: a new key, its breakdown from /metrics.
async fn executor_cold(
    ctl: &mut Conn,
    conn: &mut Conn,
    cpu: f64,
    mem: u64,
    input: &str,
) -> Result<ExecCold, String> {
    executor_cold_of(ctl, conn, IMAGE, cpu, mem, input).await
}

/// [`executor_cold`] of a key of `image`.
async fn executor_cold_of(
    ctl: &mut Conn,
    conn: &mut Conn,
    image: &str,
    cpu: f64,
    mem: u64,
    input: &str,
) -> Result<ExecCold, String> {
    let body = execute_body_of(image, Some(cpu), Some(mem), input);
    let expect = execute_answer(input);
    let before = scrape(ctl).await?;
    let busy0 = host_busy_ticks();
    let started = Instant::now();
    let (status, answer) = conn.send(Method::POST, "/", body).await?;
    let total = started.elapsed().as_secs_f64() * 1000.0;
    let host_cpu_ms =
        host_busy_ticks().saturating_sub(busy0) as f64 * 1000.0 / ticks_per_second() as f64;
    if status != StatusCode::OK || answer != expect {
        return Err(format!(
            "cold start (cpu {cpu}, mem {mem}) failed: HTTP {status}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    let after = scrape(ctl).await?;
    let diff = phase_diff(&before, &after);
    let mut phases = BTreeMap::new();
    let mut accounted = 0.0;
    for (phase, (seconds, count)) in diff {
        if count != 1.0 {
            eprintln!("bench: note: phase {phase} recorded {count} times during one cold start");
        }
        accounted += seconds * 1000.0;
        phases.insert(phase, seconds * 1000.0);
    }
    phases.insert("first_call".into(), total - accounted);
    Ok(ExecCold {
        total_ms: total,
        host_cpu_ms,
        phases,
    })
}

#[derive(Clone)]
struct EngineCold {
    total_ms: f64,
    host_cpu_ms: f64,
    /// create, start, ready (log line), inspect (address), first_call (ms).
    phases: BTreeMap<String, f64>,
    answered_at: Instant,
}

async fn remove_baseline(docker: &Docker, id: &str) -> Result<(), String> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    docker
        .remove_container(id, Some(options))
        .await
        .map_err(err("baseline: remove"))
}

/// The engine baseline: the same container (limits and hardening as the executor sets them)
/// created, started, followed to its ready line and called once, through the Docker API.
/// Returns the container's id too: the caller removes it (outside the timed part); on error
/// it is removed here.
async fn engine_cold(
    docker: &Docker,
    bench_label: &str,
    cpu: f64,
    mem: u64,
    input: &Bytes,
) -> Result<(EngineCold, String), String> {
    let memory = mem as i64 * 1024 * 1024;
    let host_config = HostConfig {
        nano_cpus: Some((cpu * 1e9) as i64),
        memory: Some(memory),
        memory_swap: Some(memory),
        privileged: Some(false),
        security_opt: Some(vec!["no-new-privileges".into()]),
        cap_drop: Some(vec!["ALL".into()]),
        pids_limit: Some(1024),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("nofile".into()),
            soft: Some(4096),
            hard: Some(4096),
        }]),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(std::collections::HashMap::from([
                ("max-size".to_string(), "10m".to_string()),
                ("max-file".to_string(), "2".to_string()),
            ])),
        }),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        labels: Some(std::collections::HashMap::from([(
            LABEL_BENCH.to_string(),
            bench_label.to_string(),
        )])),
        exposed_ports: Some(std::collections::HashMap::from([(
            "8080/tcp".to_string(),
            std::collections::HashMap::new(),
        )])),
        host_config: Some(host_config),
        ..Default::default()
    };
    let busy0 = host_busy_ticks();
    let t0 = Instant::now();
    let id = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(err("baseline: create"))?
        .id;
    let t_created = Instant::now();
    let result = async {
        docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .map_err(err("baseline: start"))?;
        let t_started = Instant::now();
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut logs = docker.logs(&id, Some(options));
        let mut pending: Vec<u8> = Vec::new();
        let mut ready = false;
        while let Some(item) = logs.next().await {
            if let LogOutput::StdOut { message } | LogOutput::Console { message } =
                item.map_err(err("baseline: logs"))?
            {
                pending.extend_from_slice(&message);
                if pending
                    .split(|b| *b == b'\n')
                    .any(|line| line.trim_ascii() == READY_LINE.as_bytes())
                {
                    ready = true;
                    break;
                }
            }
        }
        drop(logs);
        if !ready {
            return Err("baseline: the container's output ended before its ready line".into());
        }
        let t_ready = Instant::now();
        let info = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .map_err(err("baseline: inspect"))?;
        let ip: IpAddr = info
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|n| n.get("bridge").and_then(|e| e.ip_address.clone()))
            .and_then(|ip| ip.parse().ok())
            .ok_or("baseline: container has no address on the bridge network")?;
        let t_inspected = Instant::now();
        let mut conn = Conn::open(SocketAddr::new(ip, 8080)).await?;
        let (status, answer) = conn.send(Method::POST, "/", input.clone()).await?;
        let t_answered = Instant::now();
        if status != StatusCode::OK || answer != *input {
            return Err(format!("baseline: task answered HTTP {status}"));
        }
        let host_cpu_ms =
            host_busy_ticks().saturating_sub(busy0) as f64 * 1000.0 / ticks_per_second() as f64;
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
        Ok(EngineCold {
            total_ms: ms(t0, t_answered),
            host_cpu_ms,
            phases: BTreeMap::from([
                ("create".to_string(), ms(t0, t_created)),
                ("start".to_string(), ms(t_created, t_started)),
                ("ready".to_string(), ms(t_started, t_ready)),
                ("inspect".to_string(), ms(t_ready, t_inspected)),
                ("first_call".to_string(), ms(t_inspected, t_answered)),
            ]),
            answered_at: t_answered,
        })
    }
    .await;
    match result {
        Ok(run) => Ok((run, id)),
        Err(e) => {
            let _ = remove_baseline(docker, &id).await;
            Err(e)
        }
    }
}

fn median_phases<'a>(
    runs: impl Iterator<Item = &'a BTreeMap<String, f64>>,
) -> BTreeMap<String, f64> {
    let mut by_phase: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for (phase, ms) in run {
            by_phase.entry(phase.clone()).or_default().push(*ms);
        }
    }
    by_phase
        .into_iter()
        .map(|(phase, values)| (phase, median(&values)))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The table.

struct Row {
    n: &'static str,
    measure: String,
    executor: String,
    baseline: String,
    diff: String,
    target: String,
}

fn row(
    n: &'static str,
    measure: impl Into<String>,
    executor: impl Into<String>,
    baseline: impl Into<String>,
    diff: impl Into<String>,
    target: impl Into<String>,
) -> Row {
    Row {
        n,
        measure: measure.into(),
        executor: executor.into(),
        baseline: baseline.into(),
        diff: diff.into(),
        target: target.into(),
    }
}

fn print_table(rows: &[Row]) {
    let head = row(
        "#",
        "measure",
        "executor",
        "baseline",
        "difference",
        "target",
    );
    let all: Vec<&Row> = std::iter::once(&head).chain(rows.iter()).collect();
    let w = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let widths = [
        w(|r| r.n),
        w(|r| &r.measure),
        w(|r| &r.executor),
        w(|r| &r.baseline),
        w(|r| &r.diff),
    ];
    let line = |r: &Row| {
        format!(
            "{:<a$}  {:<b$}  {:>c$}  {:>d$}  {:>e$}  {}",
            r.n,
            r.measure,
            r.executor,
            r.baseline,
            r.diff,
            r.target,
            a = widths[0],
            b = widths[1],
            c = widths[2],
            d = widths[3],
            e = widths[4],
        )
        .trim_end()
        .to_string()
    };
    let header = line(&head);
    println!("{header}");
    println!("{}", "-".repeat(header.chars().count().max(100)));
    for r in rows {
        println!("{}", line(r));
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn us(x: f64) -> String {
    format!("{x:.0} µs")
}

fn ms(x: f64) -> String {
    format!("{x:.1} ms")
}

fn signed_ms(x: f64) -> String {
    format!("{x:+.1} ms")
}

fn phases_text(phases: &BTreeMap<String, f64>, order: &[&str]) -> String {
    order
        .iter()
        .map(|p| format!("{:.1}", phases.get(*p).copied().unwrap_or(0.0)))
        .collect::<Vec<_>>()
        .join(" / ")
}

// ---------------------------------------------------------------------------------------

fn main() {
    let args = parse_args();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        cleanup();
    }));
    // Worker count set here, so that TOKIO_WORKER_THREADS (inherited by the executor) only
    // changes the executor.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
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
                1
            }
            Err(_) => 101,
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

async fn run(args: Args) -> Result<(), String> {
    let run_started = Instant::now();
    let pid = std::process::id();
    let exe = std::env::current_exe().map_err(err("own path"))?;
    let executor_bin = exe.with_file_name("mecanywhere-executor");
    if !executor_bin.is_file() {
        return Err(format!(
            "{} not found: build it (cargo build --release --bins)",
            executor_bin.display()
        ));
    }
    let json_path = args.json.clone().unwrap_or_else(|| {
        // <target>/release/bench → <target>/bench-results.json
        exe.parent()
            .and_then(|p| p.parent())
            .map(|t| t.join("bench-results.json"))
            .unwrap_or_else(|| PathBuf::from("target/bench-results.json"))
    });

    let docker = Docker::connect_with_defaults()
        .map_err(err("Docker"))?
        .negotiate_version()
        .await
        .map_err(err("Docker API version"))?;
    let version = docker.version().await.map_err(err("Docker version"))?;
    let docker_version = format!(
        "{} (API {})",
        version.version.clone().unwrap_or_default(),
        version.api_version.clone().unwrap_or_default()
    );
    if docker_cli(&["image", "inspect", "-f", "{{.Id}}", IMAGE]).is_empty() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/build-task-images.sh");
        eprintln!("bench: {IMAGE} missing: running {}", script.display());
        let status = Command::new(&script)
            .status()
            .map_err(err(script.display()))?;
        if !status.success() || docker_cli(&["image", "inspect", "-f", "{{.Id}}", IMAGE]).is_empty()
        {
            return Err(format!("{} failed to build {IMAGE}", script.display()));
        }
    }

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let machine = json!({
        "cpu_model": cpu_model(),
        "cores": cores,
        "kernel": kernel(),
        "docker": docker_version,
    });
    println!(
        "bench: {} · {} cores · kernel {} · Docker {}",
        machine["cpu_model"].as_str().unwrap_or(""),
        cores,
        machine["kernel"].as_str().unwrap_or(""),
        docker_version
    );

    // --- the executor --------------------------------------------------------------------
    let name = format!("bench-{pid}");
    let bench_label = pid.to_string();
    let dir = std::env::temp_dir().join(format!("meca-{name}"));
    {
        let mut state = leftovers();
        state.temp_dir = Some(dir.clone());
        state.executor_name = Some(name.clone());
        state.bench_label = Some(bench_label.clone());
    }
    std::fs::create_dir_all(&dir).map_err(err(dir.display()))?;
    let config = dir.join("mecanywhere_executor.yaml");
    std::fs::write(
        &config,
        format!(
            "name: {name}\ncpu: {cores}\nmem: 4096\nidle_timeout: 10m\nprewarm:\n  \
             - image: {IMAGE}\n    cpu: {PREWARM_CPU}\n    mem: {PREWARM_MEM}\n\
             background_eviction: {}\n{}{}",
            args.background_eviction,
            args.sandbox_pool
                .map(|n| format!("sandbox_pool: {n}\n"))
                .unwrap_or_default(),
            args.spare_containers
                .map(|n| format!("spare_containers: {n}\n"))
                .unwrap_or_default(),
        ),
    )
    .map_err(err(config.display()))?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(err("free port"))?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(dir.join("executor.log")).map_err(err("log file"))?;
    let log2 = log.try_clone().map_err(err("log file"))?;
    let child = Command::new(&executor_bin)
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(err(executor_bin.display()))?;
    let exec_pid = child.id();
    leftovers().executor = Some(child);
    let exited = || {
        leftovers()
            .executor
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    };

    let started = Instant::now();
    let mut ctl = loop {
        if let Ok(mut c) = Conn::open(addr).await {
            if c.control(Method::GET, "/health").await.is_ok() {
                break c;
            }
        }
        if started.elapsed() > Duration::from_secs(30) || exited() {
            return Err("the executor did not become healthy".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The prewarmed container ready, nothing else: the executor is at rest.
    wait_settled(&mut ctl, 1.0, Duration::from_secs(60)).await?;
    println!(
        "bench: executor pid {exec_pid} on {addr}, name {name}; prewarmed key ready after {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let mut rows = Vec::new();
    let mut results = serde_json::Map::new();
    results.insert("schema".into(), json!("mecanywhere-executor-bench/1"));
    results.insert("machine".into(), machine);
    results.insert(
        "settings".into(),
        json!({
            "seconds_per_throughput_point": args.seconds,
            "cold_runs": args.cold_runs,
            "latency_calls": LATENCY_CALLS,
            "latency_warm_up_calls": WARM_UP_CALLS,
            "tagged_calls": TAGGED_CALLS,
            "extra_tags": EXTRA_TAGS,
            "parallel_cold_starts": PARALLEL,
            "executor_budget_cpu": cores,
        }),
    );
    let mut targets = Vec::new();

    // --- row 5a: idle memory and CPU ---------------------------------------------------------
    let rss_idle_kb = proc_status_kb(exec_pid, "VmRSS:");
    let ticks = ticks_per_second();
    let (t0, ns0, w0) = (
        cpu_ticks(exec_pid),
        cpu_ns_schedstat(exec_pid),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(IDLE_SECONDS)).await;
    let (t1, ns1, wall) = (
        cpu_ticks(exec_pid),
        cpu_ns_schedstat(exec_pid),
        w0.elapsed(),
    );
    let idle_ticks = t1.saturating_sub(t0);
    let idle_cpu_percent = idle_ticks as f64 / ticks as f64 / wall.as_secs_f64() * 100.0;
    let idle_cpu_percent_ns = ns1.saturating_sub(ns0) as f64 / 1e9 / wall.as_secs_f64() * 100.0;
    println!(
        "bench: idle: RSS {:.1} MB, CPU {idle_cpu_percent:.3}% of a core over {IDLE_SECONDS} s \
         ({idle_ticks} ticks; schedstat {idle_cpu_percent_ns:.4}%)",
        rss_idle_kb as f64 / 1024.0
    );

    // Holders the executor keeps free (its default unless set).
    let pool = args.sandbox_pool.unwrap_or(8) as f64;

    if args.only_back_to_back {
        let (b2b_rows, b2b_json, b2b_targets) =
            back_to_back_rows(&mut ctl, addr, &docker, &bench_label, &args).await?;
        println!();
        print_table(&b2b_rows);
        results.insert("cold_path_back_to_back".into(), b2b_json);
        results.insert("targets".into(), Value::Array(b2b_targets));
        let text = serde_json::to_string_pretty(&Value::Object(results)).map_err(err("JSON"))?;
        std::fs::write(&json_path, text + "\n").map_err(err(json_path.display()))?;
        ctl.control(Method::POST, "/stop").await?;
        println!(
            "bench: figures written to {}; run took {:.0} s",
            json_path.display(),
            run_started.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    // --- row 3: cold starts, executor vs engine --------------------------------------------
    let mut conn = Conn::open(addr).await?;
    let input = Bytes::from_static(INPUT.as_bytes());
    wait_gauge(&mut ctl, FREE_SANDBOXES, pool).await?;
    // Warm-up of the baseline's Docker connection (the executor's is warm already).
    let (_, id) = engine_cold(&docker, &bench_label, COLD_CPU, COLD_MEM_BASE, &input).await?;
    remove_baseline(&docker, &id).await?;
    let mut exec_runs = Vec::new();
    let mut engine_runs = Vec::new();
    for i in 0..args.cold_runs {
        let mem = COLD_MEM_BASE + i as u64;
        // Alternate who goes first, so that each side follows a baseline removal (dockerd
        // and the kernel tear down a container's network after `rm` returns) equally often.
        for executor_turn in [i % 2 == 0, i % 2 == 1] {
            tokio::time::sleep(COLD_SETTLE).await;
            if executor_turn {
                exec_runs.push(executor_cold(&mut ctl, &mut conn, COLD_CPU, mem, INPUT).await?);
                // Remove it again (the baseline removes its own), so that every run starts
                // from the same host: only the prewarmed container running.
                reset_executor(&mut ctl, pool).await?;
            } else {
                let (run, id) = engine_cold(&docker, &bench_label, COLD_CPU, mem, &input).await?;
                remove_baseline(&docker, &id).await?;
                engine_runs.push(run);
            }
        }
    }
    let exec_totals: Vec<f64> = exec_runs.iter().map(|r| r.total_ms).collect();
    let engine_totals: Vec<f64> = engine_runs.iter().map(|r| r.total_ms).collect();
    let exec_cold_median = median(&exec_totals);
    let engine_cold_median = median(&engine_totals);
    let exec_phases = median_phases(exec_runs.iter().map(|r| &r.phases));
    let engine_phases = median_phases(engine_runs.iter().map(|r| &r.phases));
    let cold_diff = exec_cold_median - engine_cold_median;
    let paired: Vec<f64> = exec_totals
        .iter()
        .zip(&engine_totals)
        .map(|(e, g)| e - g)
        .collect();
    let cold_paired_median = median(&paired);
    let exec_cold_cpu = median(&exec_runs.iter().map(|r| r.host_cpu_ms).collect::<Vec<_>>());
    let engine_cold_cpu = median(
        &engine_runs
            .iter()
            .map(|r| r.host_cpu_ms)
            .collect::<Vec<_>>(),
    );
    let cold_met = cold_diff <= COLD_TARGET_MS;
    println!(
        "bench: cold starts (ms): executor {:?}, engine {:?}",
        exec_totals
            .iter()
            .map(|x| (x * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        engine_totals
            .iter()
            .map(|x| (x * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );

    // --- row 3b: a cold start that must evict an idle container first ----------------------
    // Keys as large as the whole CPU budget: each run's container stays idle, and the next
    // run's new key can only start after evicting it (the prewarmed one goes on the first).
    let whole = cores as f64;
    executor_cold(&mut ctl, &mut conn, whole, EVICT_MEM_BASE, INPUT).await?;
    let mut evict_runs = Vec::new();
    for i in 1..=EVICT_RUNS {
        tokio::time::sleep(COLD_SETTLE).await;
        evict_runs.push(
            executor_cold(&mut ctl, &mut conn, whole, EVICT_MEM_BASE + i as u64, INPUT).await?,
        );
    }
    let evict_totals: Vec<f64> = evict_runs.iter().map(|r| r.total_ms).collect();
    let evict_median = median(&evict_totals);
    let evict_phases = median_phases(evict_runs.iter().map(|r| &r.phases));
    println!("bench: cold starts with an eviction (ms): {evict_totals:?}");
    reset_executor(&mut ctl, pool).await?;

    // --- row 7: prewarm --------------------------------------------------------------------
    let before = scrape(&mut ctl).await?;
    let prewarm_body = execute_body(Some(PREWARM_CPU), Some(PREWARM_MEM), INPUT);
    let answer = execute_answer(INPUT);
    let t = Instant::now();
    let (status, got) = conn.send(Method::POST, "/", prewarm_body).await?;
    let prewarm_first_ms = t.elapsed().as_secs_f64() * 1000.0;
    if status != StatusCode::OK || got != answer {
        return Err(format!(
            "prewarmed key answered HTTP {status}: {}",
            String::from_utf8_lossy(&got)
        ));
    }
    let after = scrape(&mut ctl).await?;
    let warm_key = "meca_request_duration_seconds_count{path=\"warm\"}";
    let prewarm_was_warm = gauge(&after, warm_key) - gauge(&before, warm_key) == 1.0;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = executor_cold(&mut ctl, &mut conn, PREWARM_CPU, PREWARM_MEM + 1, INPUT).await?;

    // --- row 4: parallel cold starts --------------------------------------------------------
    reset_executor(&mut ctl, pool).await?;
    let conns = open_conns(addr, PARALLEL).await?;
    let before = scrape(&mut ctl).await?;
    let busy0 = host_busy_ticks();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let body = execute_body(Some(COLD_CPU), Some(PARALLEL_MEM_BASE + i as u64), INPUT);
        let answer = answer.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let (status, got) = c.send(Method::POST, "/", body).await?;
            if status != StatusCode::OK || got != answer {
                return Err(format!(
                    "parallel cold start {i}: HTTP {status}: {}",
                    String::from_utf8_lossy(&got)
                ));
            }
            Ok::<f64, String>(started.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut parallel_each = Vec::new();
    for task in tasks {
        parallel_each.push(task.await.map_err(err("parallel client"))??);
    }
    let parallel_wall = t.elapsed().as_secs_f64() * 1000.0;
    let parallel_cpu_ms =
        host_busy_ticks().saturating_sub(busy0) as f64 * 1000.0 / ticks_per_second() as f64;
    let parallel_busy_percent = parallel_cpu_ms / parallel_wall / cores as f64 * 100.0;
    // If starts were CPU-bound, 8 at once could not take less than this on these cores.
    let parallel_cpu_floor = PARALLEL as f64 * engine_cold_cpu / cores as f64;
    let after = scrape(&mut ctl).await?;
    let parallel_phase_means: BTreeMap<String, f64> = phase_diff(&before, &after)
        .into_iter()
        .map(|(p, (s, n))| (p, s * 1000.0 / n))
        .collect();
    let parallel_ratio = parallel_wall / exec_cold_median;
    let parallel_met = parallel_ratio <= PARALLEL_TARGET_RATIO;
    // The same through the engine alone: how much of it is Docker serialising.
    let mut leftover_ids = Vec::new();
    tokio::time::sleep(COLD_SETTLE).await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..PARALLEL {
        let docker = docker.clone();
        let label = bench_label.clone();
        let input = input.clone();
        tasks.push(tokio::spawn(async move {
            engine_cold(
                &docker,
                &label,
                COLD_CPU,
                PARALLEL_MEM_BASE + i as u64,
                &input,
            )
            .await
        }));
    }
    let mut engine_parallel = Vec::new();
    let mut failure = None;
    for task in tasks {
        match task.await.map_err(err("parallel baseline")).and_then(|r| r) {
            Ok((run, id)) => {
                engine_parallel.push(run);
                leftover_ids.push(id);
            }
            Err(e) => failure = Some(e),
        }
    }
    // Removed only once all answered, so no removal slows the others down.
    for id in leftover_ids.drain(..) {
        remove_baseline(&docker, &id).await?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let engine_parallel_wall = engine_parallel
        .iter()
        .map(|r| (r.answered_at - t).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    let engine_parallel_phase_means: BTreeMap<String, f64> = {
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for r in &engine_parallel {
            for (p, v) in &r.phases {
                *sums.entry(p.clone()).or_default() += v / PARALLEL as f64;
            }
        }
        sums
    };
    reset_executor(&mut ctl, pool).await?;

    // --- row 8: the cold path's pools ---------------------------------------------------------
    let (pools_table, pools_json, pools_targets) =
        pools_rows(&mut ctl, addr, &docker, &bench_label, &args).await?;
    // --- row 9: the same new keys back to back ------------------------------------------------
    let (b2b_table, b2b_json, b2b_targets) =
        back_to_back_rows(&mut ctl, addr, &docker, &bench_label, &args).await?;
    // The request connection sat idle meanwhile, longer than the executor keeps one open.
    conn = Conn::open(addr).await?;

    // --- row 1: warm latency ----------------------------------------------------------------
    let bodies = Bodies {
        exec: execute_body(None, None, INPUT),
        exec_answer: answer.clone(),
        input: input.clone(),
    };
    // The first call starts the default key's container (1 core, 128 MB).
    let mut scratch = Vec::with_capacity(WARM_UP_CALLS);
    timed_calls(
        &mut conn,
        &bodies.exec,
        &bodies.exec_answer,
        1,
        &mut scratch,
    )
    .await?;
    // The key's container, not a spare of its image started since (also 128 MB).
    let ids: Vec<String> = docker_lines(&[
        "ps",
        "--filter",
        &format!("label={LABEL_EXECUTOR}={name}"),
        "--filter",
        &format!("label={LABEL_MEM}=128"),
        "--format",
        &format!("{{{{.ID}}}} {{{{.Label \"{LABEL_ROLE}\"}}}}"),
    ])
    .into_iter()
    .filter(|l| l.split_whitespace().nth(1) != Some("spare"))
    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
    .collect();
    let [id] = ids.as_slice() else {
        return Err(format!(
            "expected one task container for the default key, found {ids:?}"
        ));
    };
    // The executor's task is isolated (no network; the executor reaches it through its
    // sandbox's relay socket), so "direct" is a container of the same image and limits that
    // the bench starts on Docker's default bridge and calls at its address.
    let mode = docker_cli(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", id]);
    let holder = mode
        .strip_prefix("container:")
        .ok_or_else(|| format!("the task is not in a sandbox: network mode {mode:?}"))?
        .to_string();
    let relay_pid: u32 = docker_cli(&["inspect", "-f", "{{.State.Pid}}", &holder])
        .parse()
        .map_err(err("sandbox holder pid"))?;
    let (_, direct_id) = engine_cold(&docker, &bench_label, 1.0, 128, &input).await?;
    let ip: IpAddr = docker_cli(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &direct_id,
    ])
    .parse()
    .map_err(err("direct container address"))?;
    let task_addr = SocketAddr::new(ip, 8080);
    // The executor's path: the executor and its task's relay.
    let path_cpu_ns = || cpu_ns_schedstat(exec_pid) + cpu_ns_schedstat(relay_pid);
    // The task's own process (host PID), to compare its CPU per request with the executor's.
    let task_pid: u32 = docker_cli(&["inspect", "-f", "{{.State.Pid}}", id])
        .parse()
        .map_err(err("task container pid"))?;
    let mut direct = Conn::open(task_addr).await?;
    scratch.clear();
    timed_calls(
        &mut conn,
        &bodies.exec,
        &bodies.exec_answer,
        WARM_UP_CALLS,
        &mut scratch,
    )
    .await?;
    scratch.clear();
    timed_calls(
        &mut direct,
        &bodies.input,
        &bodies.input,
        WARM_UP_CALLS,
        &mut scratch,
    )
    .await?;
    let cpu0 = path_cpu_ns();
    let (mut via, mut straight) = tokio::time::timeout(
        Duration::from_secs(120),
        interleaved_latency(&mut conn, &mut direct, &bodies, LATENCY_CALLS),
    )
    .await
    .map_err(err("warm latency"))??;
    let warm_cpu_us = path_cpu_ns().saturating_sub(cpu0) as f64 / 1000.0 / LATENCY_CALLS as f64;
    let lat_exec = percentiles(&mut via);
    let lat_direct = percentiles(&mut straight);

    // --- row 6: warm latency with many image tags --------------------------------------------
    let (mut via0, mut straight0) = tokio::time::timeout(
        Duration::from_secs(120),
        interleaved_latency(&mut conn, &mut direct, &bodies, TAGGED_CALLS),
    )
    .await
    .map_err(err("warm latency before tagging"))??;
    let untagged_exec = percentiles(&mut via0);
    let untagged_direct = percentiles(&mut straight0);
    for i in 0..EXTRA_TAGS {
        let tag = format!("meca-bench-extra:{i}");
        leftovers().tags.push(tag);
        let options = TagImageOptions {
            repo: Some("meca-bench-extra".into()),
            tag: Some(i.to_string()),
        };
        docker
            .tag_image(IMAGE, Some(options))
            .await
            .map_err(err("docker tag"))?;
    }
    let image_entries = docker_lines(&["images", "-q"]).len();
    let (mut via1, mut straight1) = tokio::time::timeout(
        Duration::from_secs(120),
        interleaved_latency(&mut conn, &mut direct, &bodies, TAGGED_CALLS),
    )
    .await
    .map_err(err("warm latency with tags"))??;
    let tagged_exec = percentiles(&mut via1);
    let tagged_direct = percentiles(&mut straight1);
    {
        let tags = std::mem::take(&mut leftovers().tags);
        let mut rmi = vec!["rmi"];
        rmi.extend(tags.iter().map(String::as_str));
        docker_cli(&rmi);
        // Anything that did not go stays registered for the final cleanup.
        let left: Vec<String> = tags
            .into_iter()
            .filter(|t| !docker_cli(&["image", "inspect", "-f", "{{.Id}}", t]).is_empty())
            .collect();
        leftovers().tags = left;
    }
    // Growth of the executor's own overhead (executor − direct), which cancels shared noise.
    let overhead0 = untagged_exec.p50_us - untagged_direct.p50_us;
    let overhead1 = tagged_exec.p50_us - tagged_direct.p50_us;
    let tags_met = overhead1 <= overhead0 + (0.2 * overhead0.abs()).max(50.0);

    // --- row 2: throughput --------------------------------------------------------------------
    let window = Duration::from_secs(args.seconds);
    let mut throughput_json = serde_json::Map::new();
    let mut throughput_rows = Vec::new();
    let mut rss_during_max = 0;
    for clients in THROUGHPUT_CLIENTS {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampler = {
            let peak = std::sync::Arc::clone(&peak);
            tokio::spawn(async move {
                loop {
                    let rss = proc_status_kb(exec_pid, "VmRSS:");
                    peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        // Executor and direct alternate in 1-second slices over the same connections, so that
        // both see the same noise of the shared host.
        let mut exec_conns = open_conns(addr, clients).await?;
        let mut direct_conns = open_conns(task_addr, clients).await?;
        let mut exec_count = Counted::default();
        let mut direct_count = Counted::default();
        let mut exec_cpu_ns = 0;
        let mut task_cpu_ns = 0;
        for slice in 0..=args.seconds {
            // Slice 0 only warms both paths up (connections to the task, buffers).
            let (warm, counted) = if slice == 0 {
                (THROUGHPUT_WARM_UP, Duration::ZERO)
            } else {
                (Duration::ZERO, Duration::from_secs(1))
            };
            let cpu0 = path_cpu_ns();
            let task0 = cpu_ns_schedstat(task_pid);
            let (conns, c) =
                throughput_slice(exec_conns, &bodies.exec, &answer, warm, counted).await?;
            exec_cpu_ns += path_cpu_ns().saturating_sub(cpu0);
            task_cpu_ns += cpu_ns_schedstat(task_pid).saturating_sub(task0);
            exec_conns = conns;
            let (conns, d) = throughput_slice(direct_conns, &input, &input, warm, counted).await?;
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
        rss_during_max = rss_during_max.max(peak.load(std::sync::atomic::Ordering::Relaxed));
        let exec_rps = exec_count.ok as f64 / window.as_secs_f64();
        let direct_rps = direct_count.ok as f64 / window.as_secs_f64();
        let exec_failed = exec_count.failed;
        let direct_failed = direct_count.failed;
        let exec_cpu_us = exec_cpu_ns as f64 / 1000.0 / exec_count.all.max(1) as f64;
        let task_cpu_us = task_cpu_ns as f64 / 1000.0 / exec_count.all.max(1) as f64;
        let ratio = exec_rps / direct_rps;
        println!(
            "bench: {clients:>2} clients: executor {exec_rps:.0} req/s \
             ({exec_cpu_us:.0} µs executor+relay CPU per request), direct {direct_rps:.0} req/s"
        );
        throughput_json.insert(
            format!("clients_{clients}"),
            json!({
                "clients": clients,
                "executor_rps": exec_rps,
                "direct_rps": direct_rps,
                "ratio": ratio,
                "executor_failed": exec_failed,
                "executor_cpu_us_per_request": exec_cpu_us,
                "task_cpu_us_per_request": task_cpu_us,
                "direct_failed": direct_failed,
            }),
        );
        throughput_rows.push((
            clients,
            exec_rps,
            direct_rps,
            ratio,
            exec_failed + direct_failed,
            exec_cpu_us,
            task_cpu_us,
        ));
    }
    let rss_peak_kb = proc_status_kb(exec_pid, "VmHWM:");

    // --- stop ---------------------------------------------------------------------------------
    drop(conn);
    drop(direct);
    // The direct baseline's own container goes before the check that nothing is left.
    remove_baseline(&docker, &direct_id).await?;
    let t = Instant::now();
    ctl.control(Method::POST, "/stop").await?;
    let exit = loop {
        let status = {
            let mut state = leftovers();
            match state.executor.as_mut() {
                Some(child) => child.try_wait().map_err(err("executor wait"))?,
                None => return Err("executor handle lost".into()),
            }
        };
        if let Some(status) = status {
            leftovers().executor = None;
            break status;
        }
        if t.elapsed() > Duration::from_secs(60) {
            return Err("the executor did not exit within 60 s of /stop".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stop_ms = t.elapsed().as_secs_f64() * 1000.0;
    let left_executor = docker_lines(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={LABEL_EXECUTOR}={name}"),
    ]);
    if !left_executor.is_empty() {
        eprintln!(
            "bench: PROBLEM: {} container(s) labelled {LABEL_EXECUTOR}={name} left after /stop: {left_executor:?}; removing",
            left_executor.len()
        );
        docker_rm(&left_executor);
    }
    let left_bench = docker_lines(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={LABEL_BENCH}={bench_label}"),
    ]);
    if !left_bench.is_empty() {
        eprintln!(
            "bench: removing {} leftover baseline container(s)",
            left_bench.len()
        );
        docker_rm(&left_bench);
    }
    let left_tags = leftovers().tags.len();

    // --- the table -----------------------------------------------------------------------------
    let p50_overhead = lat_exec.p50_us - lat_direct.p50_us;
    let p99_overhead = lat_exec.p99_us - lat_direct.p99_us;
    let p50_met = p50_overhead <= P50_OVERHEAD_TARGET_US;
    let p99_met = p99_overhead <= P99_OVERHEAD_TARGET_US;
    rows.push(row(
        "1",
        format!(
            "warm latency p50 ({LATENCY_CALLS} seq. calls; executor+relay CPU {warm_cpu_us:.0} µs/req)"
        ),
        us(lat_exec.p50_us),
        format!("{} direct", us(lat_direct.p50_us)),
        format!("{p50_overhead:+.0} µs"),
        format!("≤ +{P50_OVERHEAD_TARGET_US:.0} µs: {}", verdict(p50_met)),
    ));
    rows.push(row(
        "",
        "warm latency p99",
        us(lat_exec.p99_us),
        format!("{} direct", us(lat_direct.p99_us)),
        format!("{p99_overhead:+.0} µs"),
        format!("≤ +{P99_OVERHEAD_TARGET_US:.0} µs: {}", verdict(p99_met)),
    ));
    let mut throughput_targets = Vec::new();
    for (i, (clients, e, d, ratio, failed, cpu, task_cpu)) in throughput_rows.iter().enumerate() {
        let target = if *clients >= 8 {
            let met = *ratio >= THROUGHPUT_TARGET_RATIO;
            throughput_targets.push(json!({
                "name": format!("throughput_{clients}_clients"),
                "target": format!("executor >= {THROUGHPUT_TARGET_RATIO} x direct"),
                "value_ratio": ratio,
                "met": met,
            }));
            format!("≥ {THROUGHPUT_TARGET_RATIO}×: {}", verdict(met))
        } else {
            String::new()
        };
        rows.push(row(
            if i == 0 { "2" } else { "" },
            format!(
                "throughput, {clients} client{} ({} s; CPU µs/req executor+relay {cpu:.0}, task {task_cpu:.0}){}",
                if *clients == 1 { "" } else { "s" },
                args.seconds,
                if *failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                }
            ),
            format!("{e:.0} req/s"),
            format!("{d:.0} req/s direct"),
            format!("{ratio:.2}×"),
            target,
        ));
    }
    rows.push(row(
        "3",
        format!("cold start, median of {}", args.cold_runs),
        ms(exec_cold_median),
        format!("{} engine", ms(engine_cold_median)),
        signed_ms(cold_diff),
        format!("≤ +{COLD_TARGET_MS:.0} ms: {}", verdict(cold_met)),
    ));
    rows.push(row(
        "",
        "  paired difference (median of executor − engine per run)",
        "",
        "",
        signed_ms(cold_paired_median),
        "",
    ));
    rows.push(row(
        "",
        "  host CPU per cold start (all processes, median)",
        ms(exec_cold_cpu),
        format!("{} engine", ms(engine_cold_cpu)),
        signed_ms(exec_cold_cpu - engine_cold_cpu),
        "",
    ));
    rows.push(row(
        "",
        "  executor phases: image/reserve/create/start/first call (ms)",
        phases_text(
            &exec_phases,
            &["image", "reserve", "create", "start", "first_call"],
        ),
        "",
        "",
        "",
    ));
    rows.push(row(
        "",
        "  engine phases: create/start/ready/inspect/first call (ms)",
        "",
        phases_text(
            &engine_phases,
            &["create", "start", "ready", "inspect", "first_call"],
        ),
        "",
        "",
    ));
    rows.push(row(
        "3b",
        format!("cold start evicting an idle container first, median of {EVICT_RUNS}"),
        ms(evict_median),
        format!("{} row-3 engine", ms(engine_cold_median)),
        signed_ms(evict_median - engine_cold_median),
        "",
    ));
    rows.push(row(
        "",
        "  executor phases: image/reserve (eviction)/create/start/first call (ms)",
        phases_text(
            &evict_phases,
            &["image", "reserve", "create", "start", "first_call"],
        ),
        "",
        "",
        "",
    ));
    rows.push(row(
        "4",
        format!("{PARALLEL} cold starts at once, wall"),
        ms(parallel_wall),
        format!("{} row-3 median", ms(exec_cold_median)),
        format!("{parallel_ratio:.2}×"),
        format!("≤ {PARALLEL_TARGET_RATIO:.0}×: {}", verdict(parallel_met)),
    ));
    rows.push(row(
        "",
        format!("  same {PARALLEL} at once through the engine alone, wall"),
        ms(parallel_wall),
        format!("{} engine", ms(engine_parallel_wall)),
        format!("{:.2}×", parallel_wall / engine_parallel_wall),
        "",
    ));
    rows.push(row(
        "",
        format!("  host CPU busy during the {PARALLEL} starts / CPU-bound floor"),
        format!("{parallel_busy_percent:.0}% of {cores} cores"),
        format!("{} floor", ms(parallel_cpu_floor)),
        format!("{:.2}×", parallel_wall / parallel_cpu_floor),
        "",
    ));
    rows.push(row(
        "",
        "  executor phase means: image/reserve/create/start (ms)",
        phases_text(&parallel_phase_means, &PHASE_ORDER),
        "",
        "",
        "",
    ));
    rows.push(row(
        "",
        "  engine phase means: create/start/ready/inspect/first call (ms)",
        "",
        phases_text(
            &engine_parallel_phase_means,
            &["create", "start", "ready", "inspect", "first_call"],
        ),
        "",
        "",
    ));
    rows.extend(pools_table);
    rows.extend(b2b_table);
    let rss_met = rss_idle_kb as f64 / 1024.0 <= RSS_IDLE_TARGET_MB
        && rss_peak_kb as f64 / 1024.0 <= RSS_LOAD_TARGET_MB;
    rows.push(row(
        "5",
        "executor RSS idle / peak (VmHWM after 64 clients)",
        format!(
            "{:.1} / {:.1} MB",
            rss_idle_kb as f64 / 1024.0,
            rss_peak_kb as f64 / 1024.0
        ),
        "",
        "",
        format!(
            "≤ {RSS_IDLE_TARGET_MB:.0} / {RSS_LOAD_TARGET_MB:.0} MB: {}",
            verdict(rss_met)
        ),
    ));
    let idle_met = idle_cpu_percent <= IDLE_CPU_TARGET_PERCENT;
    rows.push(row(
        "",
        format!("executor idle CPU over {IDLE_SECONDS} s (utime+stime)"),
        format!("{idle_cpu_percent:.2}% ({idle_ticks} ticks)"),
        format!("schedstat {idle_cpu_percent_ns:.3}%"),
        "",
        format!("≤ {IDLE_CPU_TARGET_PERCENT}%: {}", verdict(idle_met)),
    ));
    rows.push(row(
        "6",
        format!("warm p50 / p99, {EXTRA_TAGS} extra tags ({image_entries} image list entries)"),
        format!("{:.0} / {:.0} µs", tagged_exec.p50_us, tagged_exec.p99_us),
        format!(
            "{:.0} / {:.0} µs no tags",
            untagged_exec.p50_us, untagged_exec.p99_us
        ),
        format!("{:+.0} µs", tagged_exec.p50_us - untagged_exec.p50_us),
        format!("no growth*: {}", verdict(tags_met)),
    ));
    rows.push(row(
        "",
        "  overhead p50 (executor − direct), tags / no tags",
        us(overhead1),
        us(overhead0),
        format!("{:+.0} µs", overhead1 - overhead0),
        "",
    ));
    rows.push(row(
        "7",
        format!(
            "first request, prewarmed key{}",
            if prewarm_was_warm {
                ""
            } else {
                " (NOT served warm)"
            }
        ),
        ms(prewarm_first_ms),
        format!("{} fresh key", ms(fresh.total_ms)),
        signed_ms(prewarm_first_ms - fresh.total_ms),
        "",
    ));
    println!();
    print_table(&rows);
    println!(
        "* bench criterion, not from the issue: overhead p50 with tags ≤ without + max(20%, 50 µs)"
    );
    let exit_ok = exit.success();
    println!(
        "stop: executor exited {exit} after {stop_ms:.0} ms; labelled containers left {}, \
         baseline containers left {}, tags left {left_tags}",
        left_executor.len(),
        left_bench.len()
    );

    // --- JSON --------------------------------------------------------------------------------
    let pct =
        |p: Percentiles| json!({"p50_us": p.p50_us, "p99_us": p.p99_us, "mean_us": p.mean_us});
    results.insert(
        "warm_latency".into(),
        json!({
            "calls": LATENCY_CALLS,
            "executor": pct(lat_exec),
            "direct": pct(lat_direct),
            "overhead_p50_us": lat_exec.p50_us - lat_direct.p50_us,
            "overhead_p99_us": lat_exec.p99_us - lat_direct.p99_us,
            "executor_cpu_us_per_request": warm_cpu_us,
        }),
    );
    results.insert("throughput".into(), Value::Object(throughput_json));
    results.insert(
        "cold_start_with_eviction".into(),
        json!({
            "runs": EVICT_RUNS,
            "executor_ms": evict_totals,
            "executor_median_ms": evict_median,
            "engine_median_ms": engine_cold_median,
            "executor_phases_median_ms": evict_phases,
        }),
    );
    results.insert(
        "cold_start".into(),
        json!({
            "runs": args.cold_runs,
            "executor_ms": exec_totals,
            "engine_ms": engine_totals,
            "executor_median_ms": exec_cold_median,
            "engine_median_ms": engine_cold_median,
            "difference_ms": cold_diff,
            "paired_difference_median_ms": cold_paired_median,
            "executor_host_cpu_median_ms": exec_cold_cpu,
            "engine_host_cpu_median_ms": engine_cold_cpu,
            "executor_phases_median_ms": exec_phases,
            "engine_phases_median_ms": engine_phases,
        }),
    );
    results.insert(
        "parallel_cold_start".into(),
        json!({
            "count": PARALLEL,
            "wall_ms": parallel_wall,
            "each_ms": parallel_each,
            "single_median_ms": exec_cold_median,
            "ratio": parallel_ratio,
            "host_cpu_ms": parallel_cpu_ms,
            "host_busy_percent": parallel_busy_percent,
            "cpu_bound_floor_ms": parallel_cpu_floor,
            "executor_phase_means_ms": parallel_phase_means,
            "engine_wall_ms": engine_parallel_wall,
            "engine_phase_means_ms": engine_parallel_phase_means,
        }),
    );
    results.insert("cold_path_pools".into(), pools_json);
    results.insert("cold_path_back_to_back".into(), b2b_json);
    results.insert(
        "memory".into(),
        json!({
            "rss_idle_kb": rss_idle_kb,
            "rss_peak_kb": rss_peak_kb,
            "rss_max_sampled_under_load_kb": rss_during_max,
        }),
    );
    results.insert(
        "idle_cpu".into(),
        json!({
            "seconds": wall.as_secs_f64(),
            "ticks": idle_ticks,
            "clock_ticks_per_second": ticks,
            "percent_of_core": idle_cpu_percent,
            "percent_of_core_schedstat": idle_cpu_percent_ns,
        }),
    );
    results.insert(
        "many_images".into(),
        json!({
            "extra_tags": EXTRA_TAGS,
            "calls": TAGGED_CALLS,
            "image_list_entries": image_entries,
            "without_tags": {"executor": pct(untagged_exec), "direct": pct(untagged_direct)},
            "with_tags": {"executor": pct(tagged_exec), "direct": pct(tagged_direct)},
            "overhead_p50_growth_us": overhead1 - overhead0,
        }),
    );
    results.insert(
        "prewarm".into(),
        json!({
            "prewarmed_first_request_ms": prewarm_first_ms,
            "prewarmed_served_warm": prewarm_was_warm,
            "fresh_key_first_request_ms": fresh.total_ms,
            "fresh_key_phases_ms": fresh.phases,
        }),
    );
    results.insert(
        "stop".into(),
        json!({
            "exit_ok": exit_ok,
            "stop_ms": stop_ms,
            "labelled_containers_left": left_executor.len(),
            "baseline_containers_left": left_bench.len(),
            "tags_left": left_tags,
        }),
    );
    targets.push(json!({"name": "warm_p50_overhead", "target": format!("<= {P50_OVERHEAD_TARGET_US} us"), "value_us": p50_overhead, "met": p50_met}));
    targets.push(json!({"name": "warm_p99_overhead", "target": format!("<= {P99_OVERHEAD_TARGET_US} us"), "value_us": p99_overhead, "met": p99_met}));
    targets.extend(throughput_targets);
    targets.push(json!({"name": "rss", "target": format!("idle <= {RSS_IDLE_TARGET_MB} MB, under load <= {RSS_LOAD_TARGET_MB} MB"), "idle_kb": rss_idle_kb, "peak_kb": rss_peak_kb, "met": rss_met}));
    targets.extend(pools_targets);
    targets.extend(b2b_targets);
    targets.push(json!({"name": "cold_start_vs_engine", "target": format!("executor median <= engine median + {COLD_TARGET_MS} ms"), "value_ms": cold_diff, "met": cold_met}));
    targets.push(json!({"name": "parallel_cold_starts", "target": format!("{PARALLEL} at once <= {PARALLEL_TARGET_RATIO} x single median"), "value_ratio": parallel_ratio, "met": parallel_met}));
    targets.push(json!({"name": "idle_cpu", "target": format!("<= {IDLE_CPU_TARGET_PERCENT}% of a core"), "value_percent": idle_cpu_percent, "met": idle_met}));
    targets.push(json!({"name": "warm_latency_with_many_images", "target": "overhead p50 with tags <= without + max(20%, 50 us) (bench criterion)", "value_us": overhead1 - overhead0, "met": tags_met}));
    results.insert("targets".into(), Value::Array(targets));
    let run_seconds = run_started.elapsed().as_secs_f64();
    results.insert("run_seconds".into(), json!(run_seconds));
    if let Some(parent) = json_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let text = serde_json::to_string_pretty(&Value::Object(results)).map_err(err("JSON"))?;
    std::fs::write(&json_path, text + "\n").map_err(err(json_path.display()))?;
    println!(
        "bench: figures written to {}; run took {run_seconds:.0} s",
        json_path.display()
    );
    if !exit_ok || !left_executor.is_empty() {
        return Err("the executor did not stop cleanly (see above)".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Row 8: the cold path's pools (pooled network sandboxes, spares resized on claim).

/// Keys of row 8 (new keys by memory).
const POOLS_MEM_BASE: u64 = 100;
/// Images of row 8: tags of the sample image, so that each is an image the executor has or
/// has not run, with the same content as the baseline's.
const POOLS_REPO: &str = "meca-bench-cold";
/// Targets of the cold path, as ratios to Docker's default start of the same image.
const RECENT_TARGET_RATIO: f64 = 0.3;
const PRESENT_TARGET_RATIO: f64 = 0.7;
const BURST_TARGET_RATIO: f64 = 2.0;

/// Tags [`IMAGE`] as `meca-bench-cold:<tag>` (removed at the end); returns the reference.
async fn pools_tag(docker: &Docker, tag: &str) -> Result<String, String> {
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

/// Waits until the executor's gauge `key` reads `value`.
async fn wait_gauge(ctl: &mut Conn, key: &str, value: f64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if gauge(&scrape(ctl).await?, key) == value {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{key} did not reach {value} within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const FREE_SANDBOXES: &str = "meca_sandboxes{state=\"free\"}";
const SPARES: &str = "meca_containers{state=\"spare\"}";
const SPARES_CLAIMED: &str = "meca_spares_claimed_total";

/// One new key (cpu 0.1) of each of `images` at once, each on its own connection; the wall
/// time until the last answered, in ms. Every answer is checked.
async fn burst_of_new_keys(addr: SocketAddr, images: Vec<String>) -> Result<f64, String> {
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
async fn pools_rows(
    ctl: &mut Conn,
    addr: SocketAddr,
    docker: &Docker,
    bench_label: &str,
    args: &Args,
) -> Result<(Vec<Row>, Value, Vec<Value>), String> {
    let pool = args.sandbox_pool.unwrap_or(8) as f64;
    let spares_on = args.spare_containers.unwrap_or(4) > 0;
    let runs = args.cold_runs;
    let input = Bytes::from_static(INPUT.as_bytes());
    // A fresh connection per start: waiting for the pools can outlast the executor's
    // keep-alive of an idle connection.
    let fresh = || Conn::open(addr);
    let baseline = |mem: u64| {
        let input = input.clone();
        async move {
            tokio::time::sleep(COLD_SETTLE).await;
            let (run, id) = engine_cold(docker, bench_label, COLD_CPU, mem, &input).await?;
            remove_baseline(docker, &id).await?;
            Ok::<f64, String>(run.total_ms)
        }
    };

    // 8a: first use of an image already present on the host: no spare of it can exist;
    // the start joins a pooled sandbox (when the pool is on and refilled).
    reset_executor(ctl, pool).await?;
    let mut present = Vec::new();
    let mut present_phases = Vec::new();
    let mut present_base = Vec::new();
    for i in 0..runs {
        let image = pools_tag(docker, &format!("first-{i}")).await?;
        wait_gauge(ctl, FREE_SANDBOXES, pool).await?;
        tokio::time::sleep(COLD_SETTLE).await;
        let mem = POOLS_MEM_BASE + i as u64;
        let run = executor_cold_of(ctl, &mut fresh().await?, &image, COLD_CPU, mem, INPUT).await?;
        present.push(run.total_ms);
        present_phases.push(run.phases);
        if spares_on {
            // Let the spare of the image start before the baseline runs.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        present_base.push(baseline(mem).await?);
    }
    // The recent image's spare needs a place among the spares (bounded in count).
    reset_executor(ctl, pool).await?;

    // 8b: a new key of an image used recently: its spare, resized.
    let recent = pools_tag(docker, "recent").await?;
    let mut recent_runs = Vec::new();
    let mut recent_phases = Vec::new();
    let mut recent_base = Vec::new();
    let claimed0 = gauge(&scrape(ctl).await?, SPARES_CLAIMED);
    executor_cold_of(
        ctl,
        &mut fresh().await?,
        &recent,
        COLD_CPU,
        POOLS_MEM_BASE - 1,
        INPUT,
    )
    .await?;
    for i in 0..runs {
        if spares_on {
            wait_gauge(ctl, SPARES, 1.0).await?;
        }
        wait_gauge(ctl, FREE_SANDBOXES, pool).await?;
        tokio::time::sleep(COLD_SETTLE).await;
        let mem = POOLS_MEM_BASE + 50 + i as u64;
        let run = executor_cold_of(ctl, &mut fresh().await?, &recent, COLD_CPU, mem, INPUT).await?;
        recent_runs.push(run.total_ms);
        recent_phases.push(run.phases);
        recent_base.push(baseline(mem).await?);
    }
    let claimed = gauge(&scrape(ctl).await?, SPARES_CLAIMED) - claimed0;

    // 8c: eight new keys at once, of eight images the executor has not run.
    reset_executor(ctl, pool).await?;
    let mut images = Vec::new();
    for i in 0..PARALLEL {
        images.push(pools_tag(docker, &format!("burst-{i}")).await?);
    }
    wait_gauge(ctl, FREE_SANDBOXES, pool).await?;
    tokio::time::sleep(COLD_SETTLE).await;
    let burst_wall = burst_of_new_keys(addr, images).await?;
    reset_executor(ctl, pool).await?;

    let present_median = median(&present);
    let present_base_median = median(&present_base);
    let recent_median = median(&recent_runs);
    let recent_base_median = median(&recent_base);
    let one_baseline = median(&[present_base.clone(), recent_base.clone()].concat());
    let present_ratio = present_median / present_base_median;
    let recent_ratio = recent_median / recent_base_median;
    let burst_ratio = burst_wall / one_baseline;
    let present_met = present_ratio <= PRESENT_TARGET_RATIO;
    let recent_met = recent_ratio <= RECENT_TARGET_RATIO;
    let burst_met = burst_ratio <= BURST_TARGET_RATIO;
    println!("bench: first use of a present image (ms): {present:?}, engine {present_base:?}");
    println!("bench: new key of a recent image (ms): {recent_runs:?}, engine {recent_base:?}");
    let present_phase_median = median_phases(present_phases.iter());
    let recent_phase_median = median_phases(recent_phases.iter());
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
            phases_text(
                &present_phase_median,
                &["image", "reserve", "create", "start", "first_call"],
            ),
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
    let section = json!({
        "sandbox_pool": pool,
        "spares": spares_on,
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
    Ok((rows, section, targets))
}

// ---------------------------------------------------------------------------------------
// Row 9: the cold path's rows back to back: new keys arriving a fixed gap after the previous
// answer, without waiting for the pools to refill, so the executor's background refills
// (holders, spares) run among the requests' own starts.

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
async fn back_to_back_rows(
    ctl: &mut Conn,
    addr: SocketAddr,
    docker: &Docker,
    bench_label: &str,
    args: &Args,
) -> Result<(Vec<Row>, Value, Vec<Value>), String> {
    let pool = args.sandbox_pool.unwrap_or(8) as f64;
    let runs = args.cold_runs;
    let input = Bytes::from_static(INPUT.as_bytes());
    // The baseline: Docker's default start of the same image, settled, in this run.
    let mut baseline = Vec::new();
    for i in 0..runs {
        tokio::time::sleep(COLD_SETTLE).await;
        let mem = POOLS_MEM_BASE + 200 + i as u64;
        let (run, id) = engine_cold(docker, bench_label, COLD_CPU, mem, &input).await?;
        remove_baseline(docker, &id).await?;
        baseline.push(run.total_ms);
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
        let gap_s = gap.as_secs_f64();
        // Each sequence starts from a settled executor with its pools full and room in the
        // budget, so that only its own refills run among its requests.
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
        let claimed0 = gauge(&scrape(ctl).await?, SPARES_CLAIMED);
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
        let claimed = gauge(&scrape(ctl).await?, SPARES_CLAIMED) - claimed0;

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
            "bench: back to back, {gap_s} s apart (ms): first use {first:?}, seen image {seen:?}, \
             bursts {bursts:?}"
        );
        let (first_r, seen_r, burst_r) = (
            median(&first) / one,
            median(&seen) / one,
            median(&bursts) / one,
        );
        rows.push(row(
            ["9a", "9b"][g],
            format!("back to back, {gap_s} s apart: new key of a seen image, median of {runs} ({claimed} spares claimed)"),
            ms(median(&seen)),
            format!("{} engine", ms(one)),
            format!("{seen_r:.2}×"),
            format!("≤ {seen_target}×: {}", verdict(seen_r <= seen_target)),
        ));
        rows.push(row(
            "",
            format!("  first use of a present image, median of {runs}"),
            ms(median(&first)),
            "",
            format!("{first_r:.2}×"),
            format!("≤ {first_target}×: {}", verdict(first_r <= first_target)),
        ));
        rows.push(row(
            "",
            format!("  {PARALLEL} new keys at once, {gap_s} s after one, wall, median of {BURSTS} bursts"),
            ms(median(&bursts)),
            "",
            format!("{burst_r:.2}×"),
            format!("≤ {burst_target}×: {}", verdict(burst_r <= burst_target)),
        ));
        section.insert(
            format!("gap_{}ms", gap.as_millis()),
            json!({
                "first_use_ms": first, "first_use_ratio": first_r,
                "seen_image_ms": seen, "seen_image_ratio": seen_r, "spares_claimed": claimed,
                "bursts_wall_ms": bursts, "burst_ratio": burst_r,
            }),
        );
        for (name, value, target) in [
            ("seen_image", seen_r, seen_target),
            ("first_use", first_r, first_target),
            ("burst_of_new_keys", burst_r, burst_target),
        ] {
            targets.push(json!({
                "name": format!("back_to_back_{}ms_{name}", gap.as_millis()),
                "target": format!("<= {target} x engine"),
                "value_ratio": value,
                "met": value <= target,
            }));
        }
    }
    reset_executor(ctl, pool).await?;
    Ok((rows, Value::Object(section), targets))
}
