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

/// The executor deployed as a container: its container, the task containers it made, and
/// its network are removed on drop (in that order), also when the test fails.
struct Deployment {
    container: String,
    network: String,
    executor_name: String,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // With its anonymous volume (the sandbox sockets).
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.container])
            .output();
        let tasks = containers_of(&self.executor_name);
        if !tasks.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(tasks.iter().map(String::as_str));
            let _ = Command::new("docker").args(&args).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
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
    let deployment = Deployment {
        container: unique_name("executor-container"),
        network: network.clone(),
        executor_name: unique_name("in-container"),
    };
    docker(&["network", "create", &network]);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "name: {}\ncpu: 1\nmem: 512\nspare_containers: 0\n",
            deployment.executor_name
        ),
    );
    let mount = format!("{config}:/app/mecanywhere_executor.yaml:ro");
    docker(&[
        "run",
        "-d",
        "--name",
        &deployment.container,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &mount,
        "--net",
        &network,
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
    let input = "hello from the executor container";
    let body = json!({"id": ECHO, "input": input}).to_string();
    let reply = client
        .request("POST", &url("/"), Some(body.into_bytes()))
        .unwrap();
    assert!(reply.success(), "{reply:?}; logs:\n{}", logs());
    assert_eq!(reply.msg(), input);

    let tasks = tasks_of(&deployment.executor_name);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    // The task joined a pooled sandbox: the holder's network is the task's.
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
    // The sandbox has no network: the executor, on its own network, reaches the task only
    // through the holder's socket on the executor container's volume.
    assert_eq!(
        inspect(holder, "{{.HostConfig.NetworkMode}}"),
        "none",
        "the task's sandbox has a network"
    );
    let mounts = inspect(holder, "{{range .Mounts}}{{.Type}} {{end}}");
    assert_eq!(
        mounts.trim(),
        "volume",
        "the holder mounts the executor's volume"
    );

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
}
