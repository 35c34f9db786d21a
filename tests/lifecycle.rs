//! The executor's process lifecycle against the real Docker daemon: stopping by `/stop` and
//! by signal removes every task container, orphans of a crashed instance are removed by the
//! next instance of the same name (and only by it), the Go executor's command line still
//! works, bad configs are refused at once, and the executor runs as a container the way the
//! original README deploys it.

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Runs an echo request with the given resources and checks the answer.
fn echo(ex: &Executor, cpu: f64, mem: i64, input: &str) {
    let reply = ex.execute(&json!({
        "id": ECHO,
        "resource": {"cpu": cpu, "mem": mem},
        "input": input,
    }));
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    assert_eq!(reply.msg(), input);
}

/// Starts an executor with two warm containers (two different task keys) and checks that
/// Docker has both.
fn executor_with_two_warm_containers(prefix: &str) -> Executor {
    let ex = Executor::start(prefix, "");
    echo(&ex, 1.0, 128, "first key");
    echo(&ex, 0.5, 64, "second key");
    let ids = ex.containers();
    assert_eq!(ids.len(), 2, "expected two warm containers: {ids:?}");
    for id in &ids {
        assert_eq!(inspect(id, "{{.State.Running}}"), "true", "{id}");
    }
    ex
}

fn assert_clean_exit(ex: &Executor, status: Option<ExitStatus>, how: &str) {
    let status =
        status.unwrap_or_else(|| panic!("executor did not exit after {how}; log:\n{}", ex.log()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after {how}: {status}; log:\n{}",
        ex.log()
    );
    // The executor removes its containers before it exits: no waiting here.
    let left = ex.containers();
    assert!(
        left.is_empty(),
        "containers left after {how}: {left:?}; log:\n{}",
        ex.log()
    );
}

#[test]
fn stop_endpoint_removes_containers_and_exits_cleanly() {
    let mut ex = executor_with_two_warm_containers("stop");
    let status = ex.stop();
    assert_clean_exit(&ex, Some(status), "/stop");
}

fn stops_on_signal(signal: &str) {
    let mut ex = executor_with_two_warm_containers(&format!("sig{}", signal.to_lowercase()));
    ex.signal(signal);
    let status = ex.wait_exit(Duration::from_secs(60));
    assert_clean_exit(&ex, status, &format!("SIG{signal}"));
}

#[test]
fn sigterm_removes_containers_and_exits_cleanly() {
    stops_on_signal("TERM");
}

#[test]
fn sigint_removes_containers_and_exits_cleanly() {
    stops_on_signal("INT");
}

/// `/stats`' task budget: cores and MB (`None` while paused: /stats answers no figures).
fn budget(ex: &Executor) -> Option<(f64, u64)> {
    let stats = ex.get("/stats").body;
    Some((stats["task_cpu"].as_f64()?, stats["task_mem"].as_u64()?))
}

#[test]
fn sighup_reloads_the_config_file_and_keeps_serving() {
    let mut ex = Executor::start("reload", "cpu: 1\nmem: 512\n");
    echo(&ex, 0.5, 64, "before");
    assert_eq!(budget(&ex), Some((1.0, 512)));
    let pid = ex.pid();
    // The budget and the idle timeout change while running; the API's address only at a
    // restart (named in the log).
    let config = ex.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    let changed = text.replace("cpu: 1\n", "cpu: 2\n").replace(
        "mem: 512\n",
        "mem: 768\nidle_timeout: 5m\nmax_connections: 99\n",
    );
    std::fs::write(&config, changed).unwrap();
    ex.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    // A reload pauses (warm containers go), updates and unpauses, as /update-config needs.
    while budget(&ex) != Some((2.0, 768)) {
        assert!(
            Instant::now() < deadline,
            "the new budget is not in force; log:\n{}",
            ex.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ex.pid(), pid, "reloaded, not restarted");
    assert!(ex.try_wait().is_none(), "still running");
    let log = ex.log();
    assert!(
        log.contains("take effect only when the executor is restarted")
            && log.contains("max_connections"),
        "the keys a reload cannot apply are named:\n{log}"
    );
    echo(&ex, 0.5, 64, "after");

    // A file that no longer parses changes nothing and stops nothing.
    std::fs::write(&config, "cpu: [not a number\n").unwrap();
    ex.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ex.log().contains("config not reloaded") {
        assert!(
            Instant::now() < deadline,
            "the bad file is named; log:\n{}",
            ex.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(budget(&ex), Some((2.0, 768)));
    echo(&ex, 0.5, 64, "still");
    let status = ex.stop();
    assert_clean_exit(&ex, Some(status), "/stop after reloads");
}

#[test]
fn orphans_are_removed_by_the_next_instance_of_the_same_name_only() {
    let name = unique_name("orphan");
    // Kept until the end: if the test fails, its Drop removes the orphan.
    let mut crashed = Executor::start_named(&name, "");
    echo(&crashed, 1.0, 128, "before the crash");
    let orphans = crashed.containers();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let orphan = orphans[0].clone();
    crashed.signal("KILL");
    crashed.reap_killed();
    assert_eq!(
        tasks_of(&name),
        orphans,
        "the container should outlive the killed executor"
    );

    // Another executor (another name) must leave it alone, also while it works.
    let other = Executor::start("orphan-other", "");
    echo(&other, 1.0, 128, "other executor");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        tasks_of(&name),
        orphans,
        "an executor with another name removed the orphan; its log:\n{}",
        other.log()
    );
    assert_eq!(inspect(&orphan, "{{.State.Running}}"), "true");
    drop(other);
    assert_eq!(tasks_of(&name), orphans);

    // The next instance of the same name removes it.
    let restarted = Executor::start_named(&name, "");
    let left = restarted.wait_containers(0, Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "orphan not removed: {left:?}; log:\n{}",
        restarted.log()
    );
    echo(&restarted, 1.0, 128, "after the restart");
    let fresh = restarted.containers();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_ne!(fresh[0], orphan);
    drop(restarted);
    drop(crashed);
}

fn write_config(dir: &Path, yaml: &str) -> String {
    let path = dir.join("mecanywhere_executor.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.to_str().unwrap().to_string()
}

fn get(port: u16, path: &str) -> Result<Reply, String> {
    Client::new().request("GET", &format!("http://127.0.0.1:{port}{path}"), None)
}

#[test]
fn go_style_config_flag_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("go-flag");
    let config = write_config(dir.path(), &format!("cpu: 1\nname: {name}\n"));
    let config_eq = format!("-config={config}");
    let cases: [&[&str]; 2] = [&["-config", &config, "--listen"], &[&config_eq, "-listen"]];
    for flags in cases {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = flags.to_vec();
        args.push(&listen);
        let mut proc = Proc::spawn(&args);
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(port, "/health").is_err() {
            if let Some(status) = proc.try_wait() {
                panic!(
                    "{args:?}: executor exited at start ({status}):\n{}",
                    proc.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{args:?}: no /health within 30s:\n{}",
                proc.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let stats = get(port, "/stats").unwrap();
        assert_eq!(
            stats.body["task_cpu"],
            json!(1),
            "{args:?}: config not applied: {stats:?}"
        );
        let stopped = Client::new()
            .request("POST", &format!("http://127.0.0.1:{port}/stop"), None)
            .unwrap();
        assert_eq!(stopped.body["success"], json!(true), "{stopped:?}");
        let status = proc.wait(Duration::from_secs(30));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{args:?}:\n{}",
            proc.output()
        );
    }
}

/// Starts the binary with `yaml` as its config; it must exit non-zero at once. Returns
/// its stderr.
fn refused_config(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    // A unique name, so that a binary that wrongly accepts the config touches nothing.
    let config = write_config(
        dir.path(),
        &format!("{yaml}\nname: {}\n", unique_name("bad-config")),
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let mut proc = Proc::spawn(&["--config", &config, "--listen", &listen]);
    let status = proc
        .wait(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("config {yaml:?} was accepted: the executor kept running"));
    let stderr = proc.output();
    assert!(
        !status.success() && status.code().is_some(),
        "config {yaml:?}: exit status {status}; stderr:\n{stderr}"
    );
    stderr
}

#[test]
fn unknown_config_key_is_refused_and_named() {
    let stderr = refused_config("cpus: 2");
    assert!(
        stderr.contains("cpus"),
        "stderr does not name `cpus`:\n{stderr}"
    );
}

#[test]
fn bad_config_value_is_refused_and_named() {
    let stderr = refused_config("cpu: -1");
    assert!(
        stderr.contains("cpu") && stderr.contains("-1"),
        "stderr does not name `cpu` and its value:\n{stderr}"
    );
}

/// The executor deployed as a container: its container (with its anonymous volume, the
/// sandboxes' socket directory), the task containers it made, the test's own containers and
/// its network are removed on drop (in that order), also when the test fails.
struct Deployment {
    container: String,
    network: String,
    executor_name: String,
    /// Containers the test started itself on the network.
    others: Vec<String>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.container])
            .output();
        let mut left = containers_of(&self.executor_name);
        left.extend(self.others.iter().cloned());
        if !left.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(left.iter().map(String::as_str));
            let _ = Command::new("docker").args(&args).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

/// What a TCP connect from the test process to `addr` does.
fn connect_from_host(addr: std::net::SocketAddr) -> Result<(), String> {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn executor_runs_as_a_container_on_a_user_network() {
    require_images();
    let build = Command::new(repo_root().join("scripts/build-executor-image.sh"))
        .output()
        .expect("build script runs");
    assert!(
        build.status.success(),
        "scripts/build-executor-image.sh failed ({}):\n{}\n{}",
        build.status,
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );

    let network = format!("meca-test-net-{}", std::process::id());
    let mut deployment = Deployment {
        container: unique_name("executor-container"),
        network: network.clone(),
        executor_name: unique_name("in-container"),
        others: Vec::new(),
    };
    docker(&["network", "create", &network]);

    // No `network:` (refused under the default task_network: isolated).
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "name: {}\ncpu: 1\nmem: 512\nspare_containers: 0\n",
            deployment.executor_name
        ),
    );
    // The seed's deployment command: `-v /var/run/docker.sock:/var/run/docker.sock
    // --net=<network>`, no volume flag of its own; only the config mount and the port
    // published to this test are added.
    let mount = format!("{config}:/app/mecanywhere_executor.yaml:ro");
    let net_flag = format!("--net={network}");
    docker(&[
        "run",
        "-d",
        "--name",
        &deployment.container,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        &net_flag,
        "-v",
        &mount,
        "-p",
        "127.0.0.1::2591",
        "mecanywhere-executor:latest",
    ]);
    let logs = || {
        let out = Command::new("docker")
            .args(["logs", &deployment.container])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // The socket directory is the image's VOLUME, an anonymous volume of this container.
    let mounts = inspect(
        &deployment.container,
        "{{range .Mounts}}{{.Type}}|{{.Destination}}|{{.Name}} {{end}}",
    );
    let mut kinds: Vec<(String, String)> = mounts
        .split_whitespace()
        .map(|m| {
            let mut parts = m.split('|');
            (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            (
                "bind".to_string(),
                "/app/mecanywhere_executor.yaml".to_string()
            ),
            ("bind".to_string(), "/var/run/docker.sock".to_string()),
            (
                "volume".to_string(),
                "/run/mecanywhere-executor".to_string()
            ),
        ],
        "mounts of the executor container: {mounts}"
    );
    let volume = mounts
        .split_whitespace()
        .find_map(|m| m.strip_prefix("volume|/run/mecanywhere-executor|"))
        .unwrap()
        .to_string();

    let published = docker(&["port", &deployment.container, "2591"]);
    let port: u16 = published
        .lines()
        .find_map(|l| l.strip_prefix("127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port published on 127.0.0.1: {published:?}"));
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let client = Client::new();

    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .request("GET", &url("/health"), None)
        .is_ok_and(|r| r.status == 200)
    {
        assert!(
            Instant::now() < deadline,
            "executor container did not answer /health within 30s; state {}; logs:\n{}",
            inspect(&deployment.container, "{{.State.Status}}"),
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Holders are started in the background: wait for one, so the task runs in a sandbox.
    let deadline = Instant::now() + Duration::from_secs(30);
    while free_sandboxes(&client.request("GET", &url("/metrics"), None).unwrap().raw) == 0 {
        assert!(
            Instant::now() < deadline,
            "no free sandbox within 30s; logs:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // With the socket alone it cannot see /var/lib/docker: image_gc (on by default) measures
    // the image filesystem through Docker.
    let started = logs();
    assert!(
        started.contains("image_gc on") && started.contains("measured=ThroughEngine"),
        "image_gc measures through the engine in the seed's deployment: {started}"
    );
    let metrics = client.request("GET", &url("/metrics"), None).unwrap().raw;
    let percent = mecanywhere_executor::metrics_text::Scrape::parse(&metrics)
        .get("meca_image_disk_used_percent");
    assert!(
        percent.is_some_and(|p| p > 0.0 && p <= 100.0),
        "the image filesystem was measured: {percent:?}"
    );
    let input = "hello from the executor container";
    let body = json!({"id": ECHO, "input": input}).to_string();
    let reply = client
        .request("POST", &url("/"), Some(body.into_bytes()))
        .unwrap();
    assert!(reply.success(), "{reply:?}; logs:\n{}", logs());
    assert_eq!(reply.msg(), input);

    let tasks = tasks_of(&deployment.executor_name);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    // The task joined a pooled sandbox, and the sandbox has no network at all (not the
    // executor's): the executor reaches it through the socket in the shared volume.
    let mode = inspect(&tasks[0], "{{.HostConfig.NetworkMode}}");
    let holder = mode
        .strip_prefix("container:")
        .unwrap_or_else(|| panic!("the task is not in a sandbox: network mode {mode:?}"));
    assert!(
        holders_of(&deployment.executor_name)
            .iter()
            .any(|h| holder.starts_with(h.as_str())),
        "the task's sandbox {holder} is not one of the executor's holders"
    );
    assert_eq!(inspect(holder, "{{.HostConfig.NetworkMode}}"), "none");
    let networks = inspect(
        holder,
        "{{range $name, $n := .NetworkSettings.Networks}}{{$name}}={{$n.IPAddress}} {{end}}",
    );
    assert!(
        networks.split_whitespace().all(|n| n == "none="),
        "the task's sandbox is on a network or has an address: {networks:?}"
    );

    // What a task could try to reach on the executor's network: the executor's API at its
    // address there, the network's gateway (this host, with a listener of the test), and
    // another container on it. Each is reachable from the host first.
    let executor_ip = inspect(
        &deployment.container,
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
    );
    let api: std::net::SocketAddr = format!("{executor_ip}:2591").parse().unwrap();
    let health = client.request("GET", &format!("http://{api}/health"), None);
    assert!(
        health.as_ref().is_ok_and(|r| r.status == 200),
        "the executor's API is not at {api} on {network}: {health:?}"
    );
    let gateway = docker(&[
        "network",
        "inspect",
        &network,
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
    ]);
    let gateway_listener = std::net::TcpListener::bind((gateway.as_str(), 0))
        .unwrap_or_else(|e| panic!("cannot listen on the gateway {gateway:?} of {network}: {e}"));
    let gateway_addr = gateway_listener.local_addr().unwrap();
    connect_from_host(gateway_addr).expect("the host reaches its own gateway listener");
    let other = docker(&[
        "run",
        "-d",
        "--name",
        &unique_name("user-net-peer"),
        &net_flag,
        ECHO,
    ]);
    deployment.others.push(other.clone());
    let other_ip = inspect(
        &other,
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
    );
    let other_addr: std::net::SocketAddr = format!("{other_ip}:8080").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = connect_from_host(other_addr) {
        assert!(
            Instant::now() < deadline,
            "the test's container at {other_addr} is not reachable from the host: {e}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let targets = [
        ("the executor's API on its network", api),
        ("listener on the network's gateway", gateway_addr),
        ("a container on the network", other_addr),
    ];
    let list: Vec<String> = targets.iter().map(|(_, a)| a.to_string()).collect();
    let body =
        json!({"id": "meca-test-probe:latest", "input": serde_json::to_string(&list).unwrap()})
            .to_string();
    let reply = client
        .request("POST", &url("/"), Some(body.into_bytes()))
        .unwrap();
    assert!(
        reply.success(),
        "the probe failed: {reply:?}; logs:\n{}",
        logs()
    );
    let answer: serde_json::Value = serde_json::from_str(reply.msg())
        .unwrap_or_else(|e| panic!("probe answer not JSON ({e}): {:?}", reply.msg()));
    eprintln!("probe through the containerized executor: {answer}");
    assert_eq!(
        answer["interfaces"],
        json!(["lo"]),
        "the task has interfaces beyond loopback"
    );
    for (what, addr) in targets {
        let got = answer["results"][addr.to_string()].as_str();
        assert!(
            got.is_some_and(|g| g != "connected"),
            "the task reached {what} at {addr}: {got:?}"
        );
    }
    // Only the host's own check ever reached the gateway listener.
    gateway_listener.set_nonblocking(true).unwrap();
    let accepted = std::iter::from_fn(|| gateway_listener.accept().ok()).count();
    assert_eq!(accepted, 1, "connections to the gateway listener");

    let stopped = client.request("POST", &url("/stop"), None).unwrap();
    assert!(stopped.success(), "{stopped:?}");
    let waited = Command::new("timeout")
        .args(["60", "docker", "wait", &deployment.container])
        .output()
        .unwrap();
    assert!(
        waited.status.success(),
        "executor container did not exit within 60s after /stop; logs:\n{}",
        logs()
    );
    assert_eq!(
        String::from_utf8_lossy(&waited.stdout).trim(),
        "0",
        "exit code of the executor container; logs:\n{}",
        logs()
    );
    let left = containers_of(&deployment.executor_name);
    assert!(
        left.is_empty(),
        "task containers left: {left:?}; logs:\n{}",
        logs()
    );
    drop(deployment);
    let volume_left = Command::new("docker")
        .args(["volume", "inspect", &volume])
        .output()
        .unwrap();
    assert!(
        !volume_left.status.success(),
        "the executor container's volume {volume} was left"
    );
}
