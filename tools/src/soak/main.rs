//! Soak / load run: drives a real executor (this build's `mecanywhere-executor`, on the local
//! Docker daemon) with many concurrent clients over several task keys, under a budget that
//! forces eviction and queueing, while `docker kill`ing random task containers. Then stops it
//! and reports what was lost or leaked.
//!
//! Usage: `cargo build --release && cargo run --release -p mecanywhere-tools --bin soak --
//! [--clients 200] [--seconds 60] [--kill-every-ms 2000]` (needs the task images:
//! `scripts/build-task-images.sh`). Exits non-zero when a request failed without a clear
//! error, a container was left behind, or budget stayed reserved at rest.
//!
//! Modules: [`client`] is the HTTP client of the executor, [`load`] the clients and the
//! killer, [`report`] what is printed at the end.

mod client;
mod load;
mod report;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mecanywhere_tools::{docker, launch, procfs};

use client::Api;
use load::{Counts, IMAGE};
use mecanywhere_executor::engine::LABEL_EXECUTOR;
use report::Report;

#[derive(Parser, Debug)]
#[command(
    name = "soak",
    about = "Drives the executor (this build's mecanywhere-executor) with many concurrent \
             clients over 4 task keys under a 2-core budget, killing random task containers, \
             and reports what was lost or leaked",
    args_override_self = true
)]
struct Args {
    /// Concurrent clients, each sending one request at a time
    #[arg(long, value_name = "N", default_value_t = 200)]
    clients: usize,
    /// How long the clients send requests, in seconds
    #[arg(long, value_name = "N", default_value_t = 60)]
    seconds: u64,
    /// Milliseconds between two `docker kill`s of a random task container
    #[arg(long = "kill-every-ms", value_name = "N", default_value_t = 2000)]
    kill_every_ms: u64,
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
            let ids = docker::labelled(LABEL_EXECUTOR, &self.name);
            if !ids.is_empty() {
                docker::remove(&ids, false);
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let kill_every = Duration::from_millis(args.kill_every_ms);
    let executor_bin = launch::executor_binary().expect("own path");
    if !executor_bin.is_file() {
        eprintln!(
            "soak: {} not found: build it ({})",
            executor_bin.display(),
            launch::BUILD_HINT
        );
        std::process::exit(2);
    }
    let image = docker::try_cli(&["image", "inspect", "-f", "{{.Id}}", IMAGE]);
    if image.expect("docker CLI runs").is_empty() {
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
    let port = launch::free_port().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = launch::spawn_executor(&executor_bin, &config, addr, &dir.join("executor.log"))
        .expect("executor starts");
    let pid = child.id();
    let mut guard = Guard {
        pid,
        name: name.clone(),
        armed: true,
    };
    let api = Api::new(addr, args.clients);

    let started = Instant::now();
    loop {
        if api.call("GET", "/health", String::new()).await.is_ok() {
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
    let rss_idle_kb = procfs::status_kb(pid, "VmRSS:");
    println!(
        "soak: {} clients for {} s over 4 task keys (budget 2 cores, keys 1 core each), \
         killing a task container every {} ms",
        args.clients,
        args.seconds,
        kill_every.as_millis()
    );

    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let clients = load::spawn_clients(&api, args.clients, deadline, &counts);
    let killer = load::spawn_killer(name.clone(), kill_every, deadline, &counts);
    for c in clients {
        c.await.unwrap();
    }
    killer.await.unwrap();
    let rss_peak_kb = procfs::status_kb(pid, "VmHWM:");

    let at_rest = client::wait_at_rest(&api).await;
    let _ = api.call("POST", "/stop", String::new()).await;
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap();
    guard.armed = false;
    let ids = docker::labelled(LABEL_EXECUTOR, &name);
    let left = ids.len();
    if left > 0 {
        docker::remove(&ids, false);
    }

    let report = Report {
        counts: &counts,
        at_rest,
        left,
        exit,
        rss_idle_kb,
        rss_peak_kb,
    };
    report.print();
    let healthy = report.healthy();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", if healthy { "soak: PASS" } else { "soak: FAIL" });
    std::process::exit(if healthy { 0 } else { 1 });
}
