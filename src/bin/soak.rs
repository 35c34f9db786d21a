//! Soak / load run: drives a real executor (this build's `mecanywhere-executor`, on the local
//! Docker daemon) with many concurrent clients over several task keys, under a budget that
//! forces eviction and queueing, while `docker kill`ing random task containers. Then stops it
//! and reports what was lost or leaked.
//!
//! Usage: `cargo run --release --bin soak -- [--clients 200] [--seconds 60] [--kill-every-ms 2000]`
//! (needs the task images: `scripts/build-task-images.sh`). Exits non-zero when a request failed
//! without a clear error, a container was left behind, or budget stayed reserved at rest.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const IMAGE: &str = "meca-echo:latest";

struct Args {
    clients: usize,
    seconds: u64,
    kill_every: Duration,
}

fn parse_args() -> Args {
    let mut args = Args {
        clients: 200,
        seconds: 60,
        kill_every: Duration::from_millis(2000),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        let number: u64 = value.parse().unwrap_or_else(|_| {
            eprintln!("soak: {flag} needs a number, got {value:?}");
            std::process::exit(2)
        });
        match flag.as_str() {
            "--clients" => args.clients = number as usize,
            "--seconds" => args.seconds = number,
            "--kill-every-ms" => args.kill_every = Duration::from_millis(number),
            other => {
                eprintln!("soak: unknown flag {other}");
                std::process::exit(2)
            }
        }
    }
    args
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    ok: AtomicU64,
    clear_error: AtomicU64,
    other_failure: AtomicU64,
    kills: AtomicU64,
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("docker CLI runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn labelled(name: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=org.mecanywhere.executor={name}"),
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

/// Kills the executor and removes its containers if the soak run itself fails half-way.
struct Guard {
    pid: u32,
    name: String,
    armed: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(self.pid.to_string())
                .status();
            let ids = labelled(&self.name);
            if !ids.is_empty() {
                let mut rm = vec!["rm", "-f"];
                rm.extend(ids.iter().map(String::as_str));
                docker(&rm);
            }
        }
    }
}

/// A small xorshift generator: no dependency, good enough to spread load.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn vm_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let executor_bin: PathBuf = std::env::current_exe()
        .expect("own path")
        .with_file_name("mecanywhere-executor");
    if !executor_bin.is_file() {
        eprintln!(
            "soak: {} not found: build it (cargo build --release)",
            executor_bin.display()
        );
        std::process::exit(2);
    }
    if docker(&["image", "inspect", "-f", "{{.Id}}", IMAGE]).is_empty() {
        eprintln!("soak: image {IMAGE} missing: run scripts/build-task-images.sh");
        std::process::exit(2);
    }

    let name = format!("soak-{}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mecanywhere_executor.yaml");
    // A 2-core budget for keys of 1 core each: at most two containers at a time, so requests
    // constantly evict idle containers and queue for busy ones.
    std::fs::write(
        &config,
        format!(
            "name: {name}\ncpu: 2\nmem: 1024\nidle_timeout: 3s\nqueue_timeout: 5s\n\
             request_timeout: 10s\nstart_timeout: 20s\n"
        ),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.join("executor.log")).unwrap();
    let mut child = Command::new(&executor_bin)
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("executor starts");
    let pid = child.id();
    let mut guard = Guard {
        pid,
        name: name.clone(),
        armed: true,
    };
    let base = format!("http://127.0.0.1:{port}");

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.clients)
        .build(connector);
    let call = move |method: &'static str, path: &str, body: String| {
        let client = client.clone();
        let uri = format!("{base}{path}");
        async move {
            let request = hyper::Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        }
    };

    let started = Instant::now();
    loop {
        if call("GET", "/health", String::new()).await.is_ok() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            eprintln!(
                "soak: executor did not become healthy; log in {}",
                dir.display()
            );
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_idle_kb = vm_kb(pid, "VmRSS:");
    println!(
        "soak: {} clients for {} s over 4 task keys (budget 2 cores, keys 1 core each), \
         killing a task container every {} ms",
        args.clients,
        args.seconds,
        args.kill_every.as_millis()
    );

    let counts = Arc::new(Counts::default());
    let errors: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let counts = Arc::clone(&counts);
        let errors = Arc::clone(&errors);
        let call = call.clone();
        clients.push(tokio::spawn(async move {
            let mut rng =
                Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let mem = 64 + 32 * (rng.next() % 4);
                let input = format!("client {c} request {n}");
                let body = serde_json::json!({
                    "id": IMAGE,
                    "resource": {"cpu": 1, "mem": mem},
                    "input": input,
                })
                .to_string();
                counts.sent.fetch_add(1, Ordering::Relaxed);
                let outcome = call("POST", "/", body).await;
                let verdict = match &outcome {
                    Ok((200, body)) => match serde_json::from_slice::<serde_json::Value>(body) {
                        Ok(v) if v["success"] == true && v["msg"] == input.as_str() => Ok(()),
                        Ok(v)
                            if v["success"] == false
                                && v["msg"].as_str().is_some_and(|m| !m.is_empty()) =>
                        {
                            Err((true, v["msg"].as_str().unwrap_or("").to_string()))
                        }
                        _ => Err((
                            false,
                            format!("unexpected answer {}", String::from_utf8_lossy(body)),
                        )),
                    },
                    Ok((status, body)) => Err((
                        false,
                        format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
                    )),
                    Err(e) => Err((false, format!("transport: {e}"))),
                };
                match verdict {
                    Ok(()) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Err((clear, message)) => {
                        // Group messages with their digits left out (ids and sizes vary).
                        let kind: String = message
                            .chars()
                            .filter(|c| !c.is_ascii_digit())
                            .take(110)
                            .collect();
                        *errors
                            .lock()
                            .unwrap()
                            .entry(format!("{}{kind}", if clear { "" } else { "OTHER " }))
                            .or_default() += 1;
                        if clear {
                            counts.clear_error.fetch_add(1, Ordering::Relaxed)
                        } else {
                            counts.other_failure.fetch_add(1, Ordering::Relaxed)
                        }
                    }
                };
            }
        }));
    }

    let killer = {
        let counts = Arc::clone(&counts);
        let name = name.clone();
        let every = args.kill_every;
        tokio::spawn(async move {
            let mut rng = Rng(0x1234_5678_9abc_def1);
            while Instant::now() < deadline {
                tokio::time::sleep(every).await;
                let name = name.clone();
                let pick = rng.next();
                let killed = tokio::task::spawn_blocking(move || {
                    let ids = labelled(&name);
                    if ids.is_empty() {
                        return false;
                    }
                    let id = &ids[(pick % ids.len() as u64) as usize];
                    !docker(&["kill", id]).is_empty()
                })
                .await
                .unwrap_or(false);
                if killed {
                    counts.kills.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    for c in clients {
        c.await.unwrap();
    }
    killer.await.unwrap();
    let rss_peak_kb = vm_kb(pid, "VmHWM:");

    // At rest: once idle containers are reaped, nothing may stay reserved.
    let mut at_rest = None;
    let rest_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < rest_deadline {
        if let Ok((200, body)) = call("GET", "/stats", String::new()).await {
            let stats: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if stats["containers"] == 0 {
                at_rest = Some((
                    stats["task_used_cpu"].clone(),
                    stats["task_used_mem"].clone(),
                ));
                if stats["task_used_cpu"].as_f64() == Some(0.0)
                    && stats["task_used_mem"].as_f64() == Some(0.0)
                {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = call("POST", "/stop", String::new()).await;
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap();
    guard.armed = false;
    let left = labelled(&name).len();
    if left > 0 {
        let mut rm = vec!["rm", "-f"];
        let ids = labelled(&name);
        rm.extend(ids.iter().map(String::as_str));
        docker(&rm);
    }

    let sent = counts.sent.load(Ordering::Relaxed);
    let ok = counts.ok.load(Ordering::Relaxed);
    let clear = counts.clear_error.load(Ordering::Relaxed);
    let other = counts.other_failure.load(Ordering::Relaxed);
    let (used_cpu, used_mem) = at_rest
        .clone()
        .unwrap_or((serde_json::Value::Null, serde_json::Value::Null));
    println!("requests sent                 {sent}");
    println!("  succeeded (answer checked)  {ok}");
    println!("  failed with a clear error   {clear}");
    println!("  failed otherwise            {other}");
    println!(
        "task containers killed        {}",
        counts.kills.load(Ordering::Relaxed)
    );
    println!("budget reserved at rest       cpu {used_cpu}%  mem {used_mem}%");
    println!("containers left after /stop   {left}");
    println!("executor exit                 {exit:?}");
    println!(
        "executor RSS idle / peak      {:.1} MB / {:.1} MB",
        rss_idle_kb as f64 / 1024.0,
        rss_peak_kb as f64 / 1024.0
    );
    let mut kinds: Vec<(String, u64)> = errors.lock().unwrap().drain().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    for (kind, n) in kinds.iter().take(8) {
        println!("  {n:>7} × {kind}");
    }
    let rest_ok = used_cpu.as_f64() == Some(0.0) && used_mem.as_f64() == Some(0.0);
    let healthy = other == 0 && left == 0 && rest_ok && exit.map(|s| s.success()).unwrap_or(false);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", if healthy { "soak: PASS" } else { "soak: FAIL" });
    std::process::exit(if healthy { 0 } else { 1 });
}
