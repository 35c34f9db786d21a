//! `engine: swarm` on a real 3-node Docker Swarm of nested dockerds (`scripts/test-swarm.sh`,
//! part of `scripts/test.sh`, brings it up, loads the test images on every node, runs these
//! with `--ignored --test-threads=1` and removes it): the executor binary talks to the
//! manager (node 1) as `DOCKER_HOST`, and is checked as a host owner would: the seed's
//! requests answered, tasks spread over the nodes, limits seen from inside a task, a
//! reservation no node fits queued then refused on time, a node pulling a task's image
//! from a registry (the test's own, on each node's loopback) and naming one it cannot get,
//! a node lost mid-run, a prewarm key ready ahead and idle keys reaped, a service scaled
//! away by hand seen, and nothing left on any node.
//!
//! One at a time: the lost-node test takes a node away (and brings it back as a new one).

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::registry::{build_with_random_layer, push_and_forget, Registry, Tags};
use common::swarm::{LeftRemoved, Swarm};
use common::{unique_name, wait_until, Executor};
use mecanywhere_executor::metrics_text;

/// The images the tests run, loaded on every node (`scripts/test-swarm.sh`).
const IMAGES: &[&str] = &[
    "meca-echo:latest",
    "meca-test-limits:latest",
    "meca-test-slow-answer:latest",
    "meca-test-probe:latest",
];

/// An executor on the swarm (config `yaml` added to the swarm's), and what removes what it
/// leaves there (dropped after it).
fn start<'s>(swarm: &'s Swarm, prefix: &str, yaml: &str) -> (LeftRemoved<'s>, Executor) {
    let name = unique_name(prefix);
    let sockets = swarm.dir.join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    let config = format!(
        "engine: swarm\nsocket_dir: {}\nsandbox_pool: 2\n{yaml}",
        sockets.display()
    );
    let left = LeftRemoved {
        swarm,
        name: name.clone(),
    };
    let host = swarm.host(1);
    let executor = Executor::start_named_with_env(&name, &config, &[("DOCKER_HOST", &host)]);
    (left, executor)
}

fn echo(cpu: f64, mem: u64, input: &str) -> serde_json::Value {
    json!({"id": "meca-echo:latest", "resource": {"cpu": cpu, "mem": mem}, "input": input})
}

/// `/stats` field `field` as a number.
fn stat(ex: &Executor, field: &str) -> f64 {
    let stats = ex.get("/stats");
    stats.body[field]
        .as_f64()
        .unwrap_or_else(|| panic!("/stats has no {field}: {stats:?}"))
}

#[test]
#[ignore = "needs the 3-node swarm of scripts/test-swarm.sh (run by scripts/test.sh)"]
fn seed_requests_are_served_keys_spread_over_the_nodes_and_stop_leaves_nothing() {
    let swarm = Swarm::from_env();
    let (_left, mut ex) = start(&swarm, "swarm-seed", "cpu: 3\nmem: 2048\n");
    // The README's two curl requests, as the seed documents them.
    let reply = ex.execute(&json!({"id": "meca-echo:latest", "input": "{\"name\": \"sbip\"}"}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "{\"name\": \"sbip\"}");
    let reply = ex.execute(&echo(1.0, 128, "{\"name\": \"sbip\"}"));
    assert!(reply.success(), "{reply:?}");
    // /stats: the cluster's capacity (3 nodes of this machine's cores) and the budget.
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    assert_eq!(stat(&ex, "total_cpu"), 3.0 * cores);
    assert_eq!(stat(&ex, "task_cpu"), 3.0_f64.min(3.0 * cores));

    // Six keys at once: Swarm places them where there is room, on more than one node.
    let replies: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let ex = &ex;
                s.spawn(move || ex.execute(&echo(0.25, 64 + i, &format!("key {i}"))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, reply) in replies.iter().enumerate() {
        assert!(reply.success(), "key {i}: {reply:?}");
        assert_eq!(reply.msg(), format!("key {i}"));
    }
    let nodes = swarm.task_nodes(&ex.name);
    let distinct: std::collections::BTreeSet<&String> = nodes.iter().collect();
    assert!(distinct.len() >= 2, "all tasks on one node: {nodes:?}");
    // Warm: the same key again is served by the same service.
    let services = swarm.services_of(&ex.name);
    assert!(ex.execute(&echo(0.25, 64, "again")).success());
    assert_eq!(swarm.services_of(&ex.name), services);

    // The desktop app's controls: pause takes the tasks off the swarm, the budget changes
    // while paused, unpause serves again.
    assert!(ex.post("/pause", "").success());
    assert!(
        swarm.services_of(&ex.name).is_empty(),
        "pause left task services"
    );
    let reply = ex.post(
        "/update-config",
        "{\"timeout\": 2, \"cpu\": 1, \"mem\": 512}",
    );
    assert!(reply.success(), "{reply:?}");
    assert!(ex.post("/unpause", "").success());
    assert_eq!(stat(&ex, "task_cpu"), 1.0);
    assert_eq!(stat(&ex, "task_mem"), 512.0);
    assert!(ex.execute(&echo(0.5, 64, "after unpause")).success());

    ex.stop();
    let left = swarm.settled_left_by(&ex.name, Duration::from_secs(30));
    assert!(left.is_empty(), "left on the swarm after /stop: {left:?}");
}

#[test]
#[ignore = "needs the 3-node swarm of scripts/test-swarm.sh (run by scripts/test.sh)"]
fn limits_are_seen_from_inside_the_task() {
    let swarm = Swarm::from_env();
    let (_left, _ex) = start(&swarm, "swarm-limits", "cpu: 2\nmem: 1024\n");
    let ex = &_ex;
    let reply = ex.execute(&json!({
        "id": "meca-test-limits:latest",
        "resource": {"cpu": 0.5, "mem": 96},
        "input": "limits?"
    }));
    assert!(reply.success(), "{reply:?}");
    let seen: serde_json::Value = serde_json::from_str(reply.msg()).unwrap();
    assert_eq!(seen, json!({"cpu": 0.5, "mem_mb": 96}), "{reply:?}");
    // What Swarm was asked: the limits are also the reservations.
    let service = &swarm.services_of(&ex.name)[0];
    let resources = swarm.docker(
        1,
        &[
            "service",
            "inspect",
            "-f",
            "{{json .Spec.TaskTemplate.Resources}}",
            service,
        ],
    );
    let resources: serde_json::Value = serde_json::from_str(&resources).unwrap();
    assert_eq!(resources["Limits"]["NanoCPUs"], 500_000_000);
    assert_eq!(resources["Reservations"]["NanoCPUs"], 500_000_000);
    assert_eq!(resources["Limits"]["MemoryBytes"], 96 << 20);
    assert_eq!(resources["Reservations"]["MemoryBytes"], 96 << 20);

    // The hardening carried over, as the task's node shows its container and process.
    let task = swarm.docker(1, &["service", "ps", "-q", "--no-trunc", service]);
    let task = task.lines().next().unwrap();
    let container = swarm.docker(
        1,
        &[
            "inspect",
            "-f",
            "{{.Status.ContainerStatus.ContainerID}}",
            task,
        ],
    );
    let node: u32 = swarm
        .docker(1, &["service", "ps", "--format", "{{.Node}}", service])
        .trim_start_matches("node")
        .parse()
        .unwrap();
    let host_config = swarm.docker(
        node,
        &[
            "inspect",
            "-f",
            "{{json .HostConfig.CapDrop}} {{.HostConfig.PidsLimit}} {{json .HostConfig.Ulimits}}",
            &container,
        ],
    );
    assert_eq!(
        host_config,
        "[\"ALL\"] 1024 [{\"Name\":\"nofile\",\"Hard\":4096,\"Soft\":4096}]"
    );
    let pid = swarm.docker(node, &["inspect", "-f", "{{.State.Pid}}", &container]);
    let status = common::docker(&[
        "exec",
        &swarm.node_container(node),
        "cat",
        &format!("/proc/{pid}/status"),
    ]);
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
}

#[test]
#[ignore = "needs the 3-node swarm of scripts/test-swarm.sh (run by scripts/test.sh)"]
fn a_reservation_no_node_fits_is_queued_then_refused_on_time() {
    let swarm = Swarm::from_env();
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    // The budget holds more than any one node has: the task fits the budget, no node.
    let yaml = format!("cpu: {}\nmem: 2048\nqueue_timeout: 3s\n", 3.0 * cores);
    let (_left, ex) = start(&swarm, "swarm-no-room", &yaml);
    let began = Instant::now();
    let reply = ex.execute(&echo(cores + 0.5, 64, "too big for a node"));
    let took = began.elapsed();
    assert!(!reply.success(), "{reply:?}");
    assert!(
        reply.msg().contains("no node of the swarm had room"),
        "{}",
        reply.msg()
    );
    assert!(
        reply.msg().contains("insufficient resources"),
        "{}",
        reply.msg()
    );
    assert!(
        took >= Duration::from_secs(3),
        "refused before queue_timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(20), "refused late: {took:?}");
    // Nothing of it stays pending, and a task that fits is served.
    let reply = ex.execute(&echo(0.5, 64, "fits"));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(swarm.services_of(&ex.name).len(), 1);
}

#[test]
#[ignore = "needs the 3-node swarm of scripts/test-swarm.sh (run by scripts/test.sh)"]
fn a_prewarm_key_is_ready_ahead_and_serves_warm_and_idle_keys_are_reaped() {
    let swarm = Swarm::from_env();
    let yaml = "cpu: 2\nmem: 1024\nidle_timeout: 2s\n\
                prewarm:\n  - image: meca-echo:latest\n    cpu: 0.5\n    mem: 64\n";
    let (_left, mut ex) = start(&swarm, "swarm-prewarm", yaml);
    // Before any request, the prewarm key's service runs on a node.
    assert!(
        wait_until(Duration::from_secs(60), || swarm.task_nodes(&ex.name).len()
            == 1),
        "no prewarmed task on the swarm: {:?}; log:\n{}",
        swarm.services_of(&ex.name),
        ex.log()
    );
    assert_eq!(stat(&ex, "containers"), 1.0);
    let prewarmed = swarm.services_of(&ex.name);
    // Its key is served by it: no new service.
    let reply = ex.execute(&echo(0.5, 64, "prewarmed"));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "prewarmed");
    assert_eq!(swarm.services_of(&ex.name), prewarmed);
    // Another key starts a service of its own, which goes once idle for 2 s; the prewarm
    // key's stays.
    let reply = ex.execute(&echo(0.25, 32, "other"));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(swarm.services_of(&ex.name).len(), 2);
    assert!(
        wait_until(Duration::from_secs(30), || swarm.services_of(&ex.name)
            == prewarmed),
        "the idle key was not reaped: {:?}",
        swarm.services_of(&ex.name)
    );
    assert_eq!(
        metrics_text::value(&ex.get("/metrics").raw, "meca_idle_reaped_total"),
        1.0
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(swarm.services_of(&ex.name), prewarmed, "prewarm key reaped");
    assert_eq!(swarm.task_nodes(&ex.name).len(), 1);
    let reply = ex.execute(&echo(0.5, 64, "still warm"));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(swarm.services_of(&ex.name), prewarmed);

    ex.stop();
    let left = swarm.settled_left_by(&ex.name, Duration::from_secs(30));
    assert!(left.is_empty(), "left on the swarm after /stop: {left:?}");
}

#[test]
#[ignore = "needs the 3-node swarm of scripts/test-swarm.sh (run by scripts/test.sh)"]
fn a_task_service_scaled_away_by_hand_is_seen_and_its_key_starts_again() {
    let swarm = Swarm::from_env();
    let (_left, ex) = start(&swarm, "swarm-by-hand", "cpu: 2\nmem: 1024\n");
    let reply = ex.execute(&echo(0.5, 64, "first"));
    assert!(reply.success(), "{reply:?}");
    let services = swarm.services_of(&ex.name);
    assert_eq!(services.len(), 1);
    // An operator scales it to 0: Swarm stops its task and deletes it.
    swarm.docker(
        1,
        &["service", "scale", "-d", &format!("{}=0", services[0])],
    );
    assert!(
        wait_until(Duration::from_secs(30), || stat(&ex, "containers") == 0.0),
        "the executor still counts the scaled-away task; log:\n{}",
        ex.log()
    );
    let reply = ex.execute(&echo(0.5, 64, "again"));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "again");
    assert_eq!(swarm.task_nodes(&ex.name).len(), 1);
}

#[test]
#[ignore = "needs the 3-node swarm of scripts/test-swarm.sh (run by scripts/test.sh)"]
fn each_node_pulls_from_the_registry_and_an_image_none_can_get_is_named() {
    let swarm = Swarm::from_env();
    let registry = Registry::start();
    let image = registry.reference(&format!("{}:v1", unique_name("swarm-pulled")));
    let _tags = Tags(vec![image.clone()]);
    build_with_random_layer(&image, 1 << 20);
    push_and_forget(&image);
    // The registry on each node's own loopback, where its dockerd pulls from.
    let _served: Vec<_> = (1..=3)
        .map(|n| registry.serve_in_netns(&swarm.node_netns(n)))
        .collect();
    let (_left, ex) = start(
        &swarm,
        "swarm-pull",
        "cpu: 2\nmem: 1024\npull_timeout: 60s\n",
    );

    let reply =
        ex.execute(&json!({"id": image, "resource": {"cpu": 0.5, "mem": 64}, "input": "pulled"}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "pulled");

    let absent = "127.0.0.1:9/meca-swarm-absent:v1";
    let began = Instant::now();
    let reply =
        ex.execute(&json!({"id": absent, "resource": {"cpu": 0.5, "mem": 64}, "input": "x"}));
    assert!(!reply.success(), "{reply:?}");
    assert!(reply.msg().contains(absent), "{}", reply.msg());
    assert!(
        reply.msg().contains("could not get it"),
        "the node's refusal is named: {}",
        reply.msg()
    );
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
}

/// Brings node `n` back as a new worker when dropped (also when the test fails).
struct NodeBack<'a>(&'a Swarm, u32);

impl Drop for NodeBack<'_> {
    fn drop(&mut self) {
        let back = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.0.restore_node(self.1, IMAGES)
        }));
        if back.is_err() {
            eprintln!("node{} could not be brought back", self.1);
        }
    }
}

#[test]
#[ignore = "needs the 3-node swarm of scripts/test-swarm.sh (run by scripts/test.sh)"]
fn a_node_lost_mid_run_fails_its_request_clearly_and_the_next_runs_elsewhere() {
    let swarm = Swarm::from_env();
    // Tasks on the workers only: the manager (and the executor's daemon) stays.
    let yaml = "cpu: 2\nmem: 1024\nrequest_timeout: 120s\nswarm:\n  constraints: [\"node.role==worker\"]\n";
    let (_left, ex) = start(&swarm, "swarm-lost", yaml);
    let slow = json!({"id": "meca-test-slow-answer:latest", "resource": {"cpu": 0.5, "mem": 64}, "input": "slow"});
    let reply = ex.execute(&slow);
    assert!(reply.success(), "{reply:?}");
    let node: u32 = swarm.task_nodes(&ex.name)[0]
        .trim_start_matches("node")
        .parse()
        .unwrap();
    assert!(node == 2 || node == 3, "on node{node}");
    let cores_before = stat(&ex, "total_cpu");

    let (in_flight, lost_at) = std::thread::scope(|s| {
        let call = s.spawn(|| {
            let began = Instant::now();
            (ex.execute(&slow), began)
        });
        // The call is under way (the task answers after 2 s); its node goes.
        std::thread::sleep(Duration::from_millis(700));
        swarm.stop_node(node);
        let lost_at = Instant::now();
        let (reply, _) = call.join().unwrap();
        (reply, lost_at)
    });
    let _back = NodeBack(&swarm, node);
    let failed_after = lost_at.elapsed();
    assert!(
        !in_flight.success(),
        "answered from a lost node: {in_flight:?}"
    );
    assert!(!in_flight.msg().is_empty());
    // Long before request_timeout (120 s): once Swarm marks the node down.
    assert!(
        failed_after < Duration::from_secs(60),
        "the in-flight request waited {failed_after:?}: {in_flight:?}"
    );
    eprintln!(
        "in-flight request failed {:.1} s after its node was lost: {}",
        failed_after.as_secs_f64(),
        in_flight.msg()
    );
    // The next request starts the key on the other worker.
    let next = loop {
        let reply = ex.execute(&slow);
        if reply.success() {
            break lost_at.elapsed();
        }
        assert!(
            lost_at.elapsed() < Duration::from_secs(90),
            "no request succeeded within 90 s of the node's loss: {reply:?}"
        );
    };
    eprintln!(
        "first successful request {:.1} s after the node was lost",
        next.as_secs_f64()
    );
    let now_on = swarm.task_nodes(&ex.name);
    assert!(
        !now_on.contains(&format!("node{node}")),
        "still on the lost node: {now_on:?}"
    );
    // The lost node's capacity left the budget's ceiling.
    let started = Instant::now();
    while stat(&ex, "total_cpu") >= cores_before {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cluster's capacity still counts the lost node"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Removes the executor's own service when dropped.
struct ServiceRemoved<'a>(&'a Swarm, String);

impl Drop for ServiceRemoved<'_> {
    fn drop(&mut self) {
        let _ = self.0.try_docker(1, &["service", "rm", &self.1]);
    }
}

#[test]
#[ignore = "needs the 3-node swarm of scripts/test-swarm.sh (run by scripts/test.sh)"]
fn the_executor_deployed_as_a_service_on_the_manager_serves_the_seed_request() {
    let swarm = Swarm::from_env();
    // The README's deployment: the executor image (built here, without a registry) as a
    // service pinned to a manager, the manager's Docker socket and a config mounted, its
    // port published on that node.
    let build =
        std::process::Command::new(common::repo_root().join("scripts/build-executor-image.sh"))
            .output()
            .expect("build script runs");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let mut save = std::process::Command::new("docker")
        .args(["save", "mecanywhere-executor:latest"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let loaded = std::process::Command::new("docker")
        .args(["-H", &swarm.host(1), "load", "-q"])
        .stdin(save.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(save.wait().unwrap().success() && loaded.status.success());

    let name = unique_name("swarm-deployed");
    let _left = LeftRemoved {
        swarm: &swarm,
        name: name.clone(),
    };
    let config = swarm.dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!("engine: swarm\ncpu: 2\nmem: 1024\nname: {name}\n"),
    )
    .unwrap();
    let port = common::free_port().to_string();
    let service = format!("meca-executor-{}", std::process::id());
    let _service = ServiceRemoved(&swarm, service.clone());
    swarm.docker(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            &service,
            "--constraint",
            "node.role==manager",
            // The test swarm's manager keeps its socket there (a real one: /var/run/docker.sock).
            "--mount",
            "type=bind,src=/run/meca/docker.sock,dst=/var/run/docker.sock",
            "--mount",
            &format!(
                "type=bind,src={},dst=/app/mecanywhere_executor.yaml,readonly",
                config.display()
            ),
            "--publish",
            &format!("mode=host,target=2591,published={port}"),
            "--stop-grace-period",
            "60s",
            "mecanywhere-executor:latest",
        ],
    );
    let url = format!("http://{}:{port}/", swarm.node_ip(1));
    let client = common::Client::new();
    let request = json!({"id": "meca-echo:latest", "input": "{\"name\": \"sbip\"}"}).to_string();
    let started = Instant::now();
    let reply = loop {
        match client.request("POST", &url, Some(request.clone().into_bytes())) {
            Ok(reply) => break reply,
            Err(e) => {
                let logs = swarm.try_docker(1, &["service", "logs", &service]);
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the executor's service did not answer at {url}: {e}; its logs: {logs:?}"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    };
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "{\"name\": \"sbip\"}");
    assert_eq!(
        swarm.services_of(&name).len(),
        1,
        "the task is a service of its own"
    );

    // Removing the executor's service stops it as SIGTERM does: its tasks go with it.
    swarm.docker(1, &["service", "rm", &service]);
    let left = swarm.settled_left_by(&name, Duration::from_secs(60));
    assert!(
        left.is_empty(),
        "left after the executor's service was removed: {left:?}"
    );
}

#[test]
#[ignore = "needs the 3-node swarm of scripts/test-swarm.sh (run by scripts/test.sh)"]
fn a_task_on_the_swarm_reaches_no_other_task_no_node_and_not_this_host() {
    let swarm = Swarm::from_env();
    // A listener of this test on every address of this host.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_left, ex) = start(&swarm, "swarm-isolated", "cpu: 2\nmem: 1024\n");
    // Another task, and its address on its own sandbox network.
    assert!(ex.execute(&echo(0.25, 64, "neighbour")).success());
    let neighbour = &swarm.services_of(&ex.name)[0];
    let task = swarm.docker(1, &["service", "ps", "-q", "--no-trunc", neighbour]);
    let attachments = swarm.docker(
        1,
        &[
            "inspect",
            "-f",
            "{{json .NetworksAttachments}}",
            task.trim(),
        ],
    );
    let attachments: serde_json::Value = serde_json::from_str(&attachments).unwrap();
    let neighbour_ip = attachments[0]["Addresses"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let gateway = |network: &str| {
        common::docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            network,
        ])
    };
    let mut targets = vec![
        // The probe's own port: it listens there (the probe works).
        "127.0.0.1:8080".to_string(),
        format!("{neighbour_ip}:8080"),
        format!("{}:{port}", gateway(&swarm.name)),
        format!("{}:{port}", gateway("bridge")),
    ];
    for n in 1..=3 {
        // Swarm's gossip port, open on every node.
        targets.push(format!("{}:7946", swarm.node_ip(n)));
    }
    targets.push(format!("{}:2377", swarm.node_ip(1)));
    let reply = ex.execute(&json!({
        "id": "meca-test-probe:latest",
        "resource": {"cpu": 0.25, "mem": 32},
        "input": serde_json::to_string(&targets).unwrap()
    }));
    assert!(reply.success(), "{reply:?}");
    let seen: serde_json::Value = serde_json::from_str(reply.msg()).unwrap();
    let results = &seen["results"];
    assert_eq!(results["127.0.0.1:8080"], "connected", "{seen}");
    for target in &targets[1..] {
        assert_ne!(
            results[target.as_str()],
            "connected",
            "{target} reached: {seen}"
        );
    }
    // Loopback and the sandbox network only.
    assert_eq!(seen["interfaces"].as_array().unwrap().len(), 2, "{seen}");
}
