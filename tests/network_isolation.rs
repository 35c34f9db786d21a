//! Network isolation of tasks against the real Docker daemon, in the manner of a Kubernetes
//! network-policy truth table: a task under `task_network: isolated` (the default) has only
//! loopback, so it reaches nothing of this machine (the Docker bridge gateway, the host's own
//! address, the executor's API on either), no container (on the default bridge or a user
//! network) and no other task, while the executor still reaches every task through its
//! sandbox's socket. The same holds under gVisor, and nothing (holder, socket directory) is
//! left behind after a stop or, once the next instance of the name started, after a crash.
//!
//! Every target is a listener or container this test starts on this machine, and each is
//! first shown reachable from the test process, so that "not connected" from the task means
//! isolation, not a target that is down.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const PROBE: &str = "meca-test-probe:latest";
/// The executor's default socket directory when it runs as root.
const SOCKET_BASE: &str = "/run/mecanywhere-executor";
/// Label of the containers this test starts itself (not through an executor).
const TEST_LABEL: &str = "org.mecanywhere.test=network-isolation";

// ---------------------------------------------------------------------------------------
// The executor, listening beyond loopback.

/// An executor listening on `0.0.0.0:<port>` (so its API is at the bridge gateway and the
/// host's address too), and the guard of its socket directories: dropped in this order, also
/// when a test fails (the executor stops and its containers are removed first).
struct WideExecutor {
    ex: Executor,
    _dirs: SocketDirs,
}

impl WideExecutor {
    fn start(prefix: &str, yaml: &str) -> WideExecutor {
        require_image(PROBE);
        let ex = Executor::start_everywhere(prefix, yaml);
        let dirs = SocketDirs(ex.name.clone());
        WideExecutor { ex, _dirs: dirs }
    }
}

impl std::ops::Deref for WideExecutor {
    type Target = Executor;

    fn deref(&self) -> &Executor {
        &self.ex
    }
}

/// Removes the socket directories of executor `name` when dropped (for tests that use
/// [`Executor`], whose own drop leaves them to the executor).
struct SocketDirs(String);

impl Drop for SocketDirs {
    fn drop(&mut self) {
        remove_socket_dirs_of(&self.0);
    }
}

/// `<8 hex digits>.`: the prefix of the socket directories of executor `name` (its name's
/// FNV-1a, truncated to 32 bits), as src/executor/sandboxes.rs names them.
fn socket_prefix(name: &str) -> String {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{:08x}.", hash as u32)
}

/// The socket directories of executor `name` under [`SOCKET_BASE`].
fn socket_dirs_of(name: &str) -> Vec<String> {
    let prefix = socket_prefix(name);
    let mut dirs: Vec<String> = std::fs::read_dir(SOCKET_BASE)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn remove_socket_dirs_of(name: &str) {
    for dir in socket_dirs_of(name) {
        let _ = std::fs::remove_dir_all(Path::new(SOCKET_BASE).join(dir));
    }
}

fn require_image(image: &str) {
    let present = Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("docker CLI runs")
        .success();
    assert!(
        present,
        "test image {image} is missing: run scripts/build-task-images.sh"
    );
}

// ---------------------------------------------------------------------------------------
// What the test itself starts: listeners, a network, containers.

/// A TCP listener of the test that records every connection it accepts.
struct Listener {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn bind(ip: Ipv4Addr) -> Listener {
        let listener = TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("cannot listen on {ip} (an address of this host?): {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((_, peer)) => accepted.lock().unwrap().push(peer),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Listener {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits (up to 2 s) until at least `n` connections were accepted; returns them all.
    fn accepted(&self, n: usize) -> Vec<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let accepted = self.accepted.lock().unwrap().clone();
            if accepted.len() >= n || Instant::now() >= deadline {
                return accepted;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A user-defined Docker network of the test; removed on drop.
struct TestNetwork(String);

impl TestNetwork {
    fn create(prefix: &str) -> TestNetwork {
        let name = unique_name(prefix);
        docker(&["network", "create", "--label", TEST_LABEL, &name]);
        TestNetwork(name)
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}

/// A container of the test (meca-echo, serving on 8080), started with docker directly;
/// removed (with its volumes) on drop.
struct TestContainer {
    id: String,
    ip: Ipv4Addr,
}

impl TestContainer {
    fn run(prefix: &str, network: &str) -> TestContainer {
        let name = unique_name(prefix);
        let net = format!("--network={network}");
        let id = docker(&[
            "run", "-d", "--name", &name, "--label", TEST_LABEL, &net, ECHO,
        ]);
        let mut container = TestContainer {
            id,
            ip: Ipv4Addr::UNSPECIFIED,
        };
        let ips = inspect(
            &container.id,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        );
        container.ip = ips
            .split_whitespace()
            .find_map(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("container {name} has no IPv4 address: {ips:?}"));
        // Serving: the host reaches it (checked again, and recorded, later).
        let deadline = Instant::now() + Duration::from_secs(10);
        while connect(container.addr()) != "connected" {
            assert!(
                Instant::now() < deadline,
                "test container {name} at {} does not accept connections",
                container.addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        container
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 8080))
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.id])
            .output();
    }
}

// ---------------------------------------------------------------------------------------
// Addresses of this machine.

/// The IPv4 address of interface `dev` (`ip -4 -o addr show dev DEV`).
fn interface_ipv4(dev: &str) -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", dev])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "inet")?;
    words.next()?.split('/').next()?.parse().ok()
}

/// The gateway (host side) address of Docker network `network`: from its IPAM config, else
/// the address of its bridge interface.
fn network_gateway(network: &str) -> Ipv4Addr {
    let gateways = docker(&[
        "network",
        "inspect",
        network,
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
    ]);
    if let Some(gw) = gateways.split_whitespace().find_map(|g| g.parse().ok()) {
        return gw;
    }
    let named = docker(&[
        "network",
        "inspect",
        network,
        "-f",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
    ]);
    let dev = if !named.is_empty() && named != "<no value>" {
        named
    } else if network == "bridge" {
        "docker0".to_string()
    } else {
        let id = docker(&["network", "inspect", network, "-f", "{{.Id}}"]);
        format!("br-{}", &id[..12])
    };
    interface_ipv4(&dev)
        .unwrap_or_else(|| panic!("no gateway address for Docker network {network} ({dev})"))
}

/// This host's own address on the interface of its default route, if it has one.
fn host_address() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "default"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "dev")?;
    let ip = interface_ipv4(words.next()?)?;
    (!ip.is_loopback()).then_some(ip)
}

// ---------------------------------------------------------------------------------------
// Probing.

/// What a TCP connect from the test process to `addr` does (the probe's words).
fn connect(addr: SocketAddr) -> String {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => "connected".into(),
        Err(e) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused".into(),
            std::io::ErrorKind::TimedOut => "timeout".into(),
            kind => format!("error: {kind:?} ({e})"),
        },
    }
}

/// One row of the truth table.
struct Target {
    what: String,
    addr: SocketAddr,
    /// What the test process got (`None`: not checked from the host).
    from_host: Option<String>,
}

impl Target {
    /// A target the test process must reach (so that the task not reaching it means
    /// something).
    fn reachable(what: &str, addr: SocketAddr) -> Target {
        let got = connect(addr);
        assert_eq!(
            got, "connected",
            "the test's own target {what} at {addr} is not reachable from the host"
        );
        Target {
            what: what.to_string(),
            addr,
            from_host: Some(got),
        }
    }

    /// A target only the task is pointed at (its own namespace's loopback).
    fn in_namespace(what: &str, addr: SocketAddr) -> Target {
        Target {
            what: what.to_string(),
            addr,
            from_host: None,
        }
    }
}

/// The probe's answer.
#[derive(Debug, Clone)]
struct ProbeAnswer {
    hostname: String,
    interfaces: Vec<String>,
    results: BTreeMap<String, String>,
}

/// `request` (id, resources, runtime) with the targets as input, through `execute`.
fn probe(execute: &dyn Fn(&Value) -> Reply, request: Value, targets: &[Target]) -> ProbeAnswer {
    let list: Vec<String> = targets.iter().map(|t| t.addr.to_string()).collect();
    let mut request = request;
    request["id"] = json!(PROBE);
    request["input"] = json!(serde_json::to_string(&list).unwrap());
    let started = Instant::now();
    let reply = execute(&request);
    assert!(reply.success(), "the probe failed: {reply:?}");
    let answer: Value = serde_json::from_str(reply.msg())
        .unwrap_or_else(|e| panic!("the probe's answer is not JSON ({e}): {:?}", reply.msg()));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array in {answer}"))
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let results: BTreeMap<String, String> = answer["results"]
        .as_object()
        .unwrap_or_else(|| panic!("no results in {answer}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("?").to_string()))
        .collect();
    for target in &list {
        assert!(
            results.contains_key(target),
            "no result for {target}: {answer}"
        );
    }
    eprintln!(
        "probe {} answered in {:.1?}",
        request["resource"],
        started.elapsed()
    );
    ProbeAnswer {
        hostname: answer["hostname"].as_str().unwrap_or("").to_string(),
        interfaces: strings(&answer["interfaces"]),
        results,
    }
}

/// Prints who reached whom.
fn print_truth_table(title: &str, targets: &[Target], answer: &ProbeAnswer) {
    let mut out = format!(
        "\n=== {title} ===\ntask interfaces: {:?}\n{:<46} {:<22} {:<12} {}\n",
        answer.interfaces, "target", "address", "from host", "from task"
    );
    for t in targets {
        out.push_str(&format!(
            "{:<46} {:<22} {:<12} {}\n",
            t.what,
            t.addr.to_string(),
            t.from_host.as_deref().unwrap_or("-"),
            answer.results[&t.addr.to_string()]
        ));
    }
    eprintln!("{out}");
}

/// The isolation verdict: only loopback, nothing reached but the task itself.
fn assert_isolated(targets: &[Target], answer: &ProbeAnswer, log: &dyn Fn() -> String) {
    assert_eq!(
        answer.interfaces,
        ["lo"],
        "the task has interfaces beyond loopback; log:\n{}",
        log()
    );
    for t in targets {
        let got = &answer.results[&t.addr.to_string()];
        if t.from_host.is_none() && t.what.starts_with("the task itself") {
            assert_eq!(
                got, "connected",
                "the probe cannot even reach itself at {}: connects do not work at all",
                t.addr
            );
        } else {
            assert_ne!(
                got,
                "connected",
                "the task reached {} at {}; log:\n{}",
                t.what,
                t.addr,
                log()
            );
        }
    }
}

/// The task containers of executor `name` running `image`.
fn tasks_running(name: &str, image: &str) -> Vec<String> {
    tasks_of(name)
        .into_iter()
        .filter(|id| inspect(id, "{{.Config.Image}}") == image)
        .collect()
}

/// The holder whose namespace task `task` joined.
fn holder_of(task: &str) -> String {
    let mode = inspect(task, "{{.HostConfig.NetworkMode}}");
    mode.strip_prefix("container:")
        .unwrap_or_else(|| panic!("task {task} is not in a sandbox: network mode {mode:?}"))
        .to_string()
}

/// Asserts that holder `holder` has no network: mode `none`, no network but Docker's
/// `none`, no address.
fn assert_holder_has_no_network(holder: &str) {
    let mode = inspect(holder, "{{.HostConfig.NetworkMode}}");
    assert_eq!(mode, "none", "holder {holder}'s network mode");
    let networks = inspect(
        holder,
        "{{range $name, $n := .NetworkSettings.Networks}}{{$name}}={{$n.IPAddress}} {{end}}",
    );
    for entry in networks.split_whitespace() {
        assert_eq!(
            entry, "none=",
            "holder {holder} is on a network or has an address: {networks:?}"
        );
    }
    assert_eq!(inspect(holder, "{{.NetworkSettings.IPAddress}}"), "");
}

/// The network namespace (`net:[inode]`) of running container `id`.
fn netns_of(id: &str) -> String {
    let pid = inspect(id, "{{.State.Pid}}");
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("netns of {id} (pid {pid}): {e}"))
        .display()
        .to_string()
}

/// The targets of this machine and of the test's containers, each checked from the host.
/// The listeners and containers are returned so they live as long as the caller needs.
/// Fields drop in order: the containers before their network.
struct World {
    gateway_listener: Listener,
    host_listener: Option<Listener>,
    bridge_container: TestContainer,
    user_container: TestContainer,
    _network: TestNetwork,
    gateway: Ipv4Addr,
    host_addr: Option<Ipv4Addr>,
}

impl World {
    fn start(prefix: &str) -> World {
        let gateway = network_gateway("bridge");
        let host_addr = host_address();
        if host_addr.is_none() {
            eprintln!("no default route: the host-address targets are left out");
        }
        let network = TestNetwork::create(&format!("{prefix}-net"));
        World {
            gateway_listener: Listener::bind(gateway),
            host_listener: host_addr.map(Listener::bind),
            bridge_container: TestContainer::run(&format!("{prefix}-on-bridge"), "bridge"),
            user_container: TestContainer::run(&format!("{prefix}-on-user-net"), &network.0),
            _network: network,
            gateway,
            host_addr,
        }
    }

    /// Every target, checked from the host (one connection to each listener).
    fn targets(&self, api_port: Option<u16>) -> Vec<Target> {
        let mut targets = vec![Target::reachable(
            "listener on the docker0 gateway",
            self.gateway_listener.addr,
        )];
        if let Some(l) = &self.host_listener {
            targets.push(Target::reachable(
                "listener on the host's own address",
                l.addr,
            ));
        }
        if let Some(port) = api_port {
            targets.push(Target::reachable(
                "executor API at the docker0 gateway",
                SocketAddr::from((self.gateway, port)),
            ));
            if let Some(ip) = self.host_addr {
                targets.push(Target::reachable(
                    "executor API at the host's own address",
                    SocketAddr::from((ip, port)),
                ));
            }
            targets.push(Target::in_namespace(
                "127.0.0.1:<API port> (the task's own loopback)",
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            ));
        }
        targets.push(Target::reachable(
            "container on the default bridge",
            self.bridge_container.addr(),
        ));
        targets.push(Target::reachable(
            "container on a user network",
            self.user_container.addr(),
        ));
        targets.push(Target::in_namespace(
            "the task itself at 127.0.0.1:8080",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        ));
        targets
    }

    /// The listeners accepted only the host's own checks (`targets` was called `checks`
    /// times): nothing from the task got through, not even a connection the probe missed.
    fn assert_only_host_connections(&self, checks: usize) {
        let mut listeners = vec![("gateway", &self.gateway_listener)];
        if let Some(l) = &self.host_listener {
            listeners.push(("host address", l));
        }
        for (what, listener) in listeners {
            let accepted = listener.accepted(checks);
            // Give a stray connection of the task a moment to show up, too.
            std::thread::sleep(Duration::from_millis(200));
            let accepted_now = listener.accepted.lock().unwrap().clone();
            assert_eq!(
                accepted_now.len(),
                checks,
                "the {what} listener accepted {accepted_now:?} (expected only the host's {checks} \
                 checks; first seen {accepted:?})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests.

#[test]
fn an_isolated_task_reaches_nothing_of_the_host_the_api_containers_or_other_tasks() {
    let world = World::start("netpol");
    let ex = WideExecutor::start("netpol", "");
    let log = || ex.log();

    // Another task, running at the same time.
    let reply = ex
        .execute(&json!({"id": ECHO, "resource": {"cpu": 0.5, "mem": 64}, "input": "other task"}));
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    assert_eq!(reply.msg(), "other task");
    let echo_tasks = tasks_running(&ex.name, ECHO);
    assert_eq!(echo_tasks.len(), 1, "{echo_tasks:?}");
    let echo_holder = holder_of(&echo_tasks[0]);
    assert_holder_has_no_network(&echo_holder);

    // The API answers at the gateway and the host's address (it is a target worth trying).
    let mut api_hosts = vec![world.gateway];
    api_hosts.extend(world.host_addr);
    for ip in api_hosts {
        let url = format!("http://{ip}:{}/health", ex.port);
        let health = Client::new().request("GET", &url, None);
        assert!(
            health.as_ref().is_ok_and(|r| r.status == 200),
            "the executor's API is not at {url}: {health:?}"
        );
    }

    let targets = world.targets(Some(ex.port));
    let answer = probe(
        &|r| ex.execute(r),
        json!({"resource": {"cpu": 1, "mem": 128}}),
        &targets,
    );
    print_truth_table(
        "task_network: isolated (runc): who reaches whom",
        &targets,
        &answer,
    );
    assert_isolated(&targets, &answer, &log);
    world.assert_only_host_connections(1);

    // Both tasks' sandboxes have no network, and the two are different namespaces.
    let probes = tasks_running(&ex.name, PROBE);
    assert_eq!(probes.len(), 1, "{probes:?}");
    let probe_holder = holder_of(&probes[0]);
    assert_holder_has_no_network(&probe_holder);
    assert_ne!(probe_holder, echo_holder);
    assert_ne!(netns_of(&probes[0]), netns_of(&echo_tasks[0]));
    assert_eq!(netns_of(&probes[0]), netns_of(&probe_holder));
    assert!(
        probe_holder.starts_with(&answer.hostname),
        "the probe's hostname {:?} is not its holder {probe_holder}'s",
        answer.hostname
    );
    // The other task still answers: the executor reaches it while the probe cannot.
    let reply = ex
        .execute(&json!({"id": ECHO, "resource": {"cpu": 0.5, "mem": 64}, "input": "still here"}));
    assert!(reply.success() && reply.msg() == "still here", "{reply:?}");
}

#[test]
fn two_probes_at_once_cannot_reach_each_other_and_each_answers_its_own_requests() {
    let ex = WideExecutor::start("netpol-two", "");
    let log = || ex.log();
    let self_target = || {
        vec![Target::in_namespace(
            "the task itself at 127.0.0.1:8080",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        )]
    };
    let keys = [
        json!({"resource": {"cpu": 1, "mem": 128}}),
        json!({"resource": {"cpu": 1, "mem": 64}}),
    ];
    // Both at once.
    let answers: Vec<ProbeAnswer> = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .iter()
            .map(|key| {
                let ex = &ex;
                s.spawn(move || probe(&|r| ex.execute(r), key.clone(), &self_target()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let probes = tasks_running(&ex.name, PROBE);
    assert_eq!(probes.len(), 2, "two keys, two tasks: {probes:?}");
    let mem_of = |id: &str| inspect(id, "{{index .Config.Labels \"org.mecanywhere.mem-mb\"}}");
    let by_mem: BTreeMap<String, String> =
        probes.iter().map(|id| (mem_of(id), id.clone())).collect();
    let holders: Vec<String> = probes.iter().map(|t| holder_of(t)).collect();
    for holder in &holders {
        assert_holder_has_no_network(holder);
    }
    assert_ne!(holders[0], holders[1]);
    assert_ne!(
        netns_of(&probes[0]),
        netns_of(&probes[1]),
        "the two tasks share a network namespace"
    );

    // What either could try to reach of the other: every address Docker gives the other's
    // task or holder. There is none.
    for id in probes.iter().chain(&holders) {
        let addrs = inspect(
            id,
            "{{.NetworkSettings.IPAddress}}{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        );
        assert_eq!(
            addrs, "",
            "{id} has an address another task could try: {addrs:?}"
        );
    }

    // Each answered its own requests: its answer came from its own namespace (the hostname
    // is its holder's), again and again.
    for round in 0..3 {
        for (key, first) in keys.iter().zip(&answers) {
            let answer = if round == 0 {
                first.clone()
            } else {
                probe(&|r| ex.execute(r), key.clone(), &self_target())
            };
            assert_isolated(&self_target(), &answer, &log);
            let mem = key["resource"]["mem"].to_string();
            let task = &by_mem[&mem];
            let holder = holder_of(task);
            assert!(
                holder.starts_with(&answer.hostname) && !answer.hostname.is_empty(),
                "round {round}: the mem {mem} request was answered by {:?}, not its own task \
                 (holder {holder})",
                answer.hostname
            );
        }
    }
    eprintln!(
        "two probes: holders {:?}, namespaces {} / {}, both only {:?}",
        holders,
        netns_of(&probes[0]),
        netns_of(&probes[1]),
        answers[0].interfaces
    );
}

#[test]
fn an_isolated_task_under_gvisor_reaches_nothing_either() {
    assert!(
        docker(&["info", "--format", "{{json .Runtimes}}"]).contains("runsc"),
        "gVisor is not registered with Docker as runsc (scripts/test.sh registers it)"
    );
    let world = World::start("netpol-gvisor");
    let ex = WideExecutor::start("netpol-gvisor", "microVM_runtime: runsc\n");
    let log = || ex.log();
    let targets = world.targets(Some(ex.port));
    let answer = probe(
        &|r| ex.execute(r),
        json!({"resource": {"cpu": 1, "mem": 128}, "runtime": "microVM"}),
        &targets,
    );
    print_truth_table(
        "task_network: isolated (gVisor runsc): who reaches whom",
        &targets,
        &answer,
    );
    let probes = tasks_running(&ex.name, PROBE);
    assert_eq!(probes.len(), 1, "{probes:?}");
    assert_eq!(inspect(&probes[0], "{{.HostConfig.Runtime}}"), "runsc");
    assert_holder_has_no_network(&holder_of(&probes[0]));
    assert_isolated(&targets, &answer, &log);
    world.assert_only_host_connections(1);
}

#[test]
fn nothing_is_left_after_a_stop() {
    let name = unique_name("netpol-stop");
    let _dirs = SocketDirs(name.clone());
    let mut ex = Executor::start_named(&name, "");
    let answer = probe(
        &|r| ex.execute(r),
        json!({"resource": {"cpu": 1, "mem": 128}}),
        &[],
    );
    assert_eq!(answer.interfaces, ["lo"]);
    assert!(!ex.holders().is_empty(), "no holder while a task runs");
    let dirs = socket_dirs_of(&name);
    assert_eq!(dirs.len(), 1, "socket directories of {name}: {dirs:?}");
    let socket_dir = Path::new(SOCKET_BASE).join(&dirs[0]);
    let sockets = std::fs::read_dir(&socket_dir).unwrap().count();
    assert!(sockets > 0, "no socket in {}", socket_dir.display());

    let status = ex.stop();
    assert_eq!(status.code(), Some(0), "log:\n{}", ex.log());
    let left = containers_of(&name);
    assert!(
        left.is_empty(),
        "containers left after /stop: {left:?}; log:\n{}",
        ex.log()
    );
    let left = socket_dirs_of(&name);
    assert!(
        left.is_empty(),
        "socket directories left after /stop: {left:?}; log:\n{}",
        ex.log()
    );
}

#[test]
fn after_a_crash_the_next_instance_removes_the_left_holders_and_socket_directory() {
    let name = unique_name("netpol-crash");
    let _dirs = SocketDirs(name.clone());
    // Kept until the end: if the test fails, its drop removes what the crash left.
    let mut crashed = Executor::start_named(&name, "");
    let answer = probe(
        &|r| crashed.execute(r),
        json!({"resource": {"cpu": 1, "mem": 128}}),
        &[],
    );
    assert_eq!(answer.interfaces, ["lo"]);
    let left_holders = crashed.holders();
    assert!(!left_holders.is_empty(), "no holder while a task runs");
    let left_dirs = socket_dirs_of(&name);
    assert_eq!(left_dirs.len(), 1, "{left_dirs:?}");
    crashed.signal("KILL");
    crashed.reap_killed();
    // The crash left them.
    assert_eq!(holders_of(&name), left_holders);
    assert_eq!(socket_dirs_of(&name), left_dirs);

    let started = Instant::now();
    let restarted = Executor::start_named(&name, "");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let holders = holders_of(&name);
        let stale: Vec<&String> = left_holders
            .iter()
            .filter(|h| holders.contains(h))
            .collect();
        let dirs = socket_dirs_of(&name);
        let stale_dir = dirs.iter().any(|d| left_dirs.contains(d));
        if stale.is_empty() && !stale_dir && tasks_of(&name).is_empty() {
            assert_eq!(
                dirs.len(),
                1,
                "the new instance has one socket directory: {dirs:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left by the crash, still there 15 s after the restart: holders {stale:?}, \
             socket dir {stale_dir}, tasks {:?}; log:\n{}",
            tasks_of(&name),
            restarted.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the crash's holders and socket directory were gone {:.1?} after the restart",
        started.elapsed()
    );
    // The new instance works.
    let answer = probe(
        &|r| restarted.execute(r),
        json!({"resource": {"cpu": 1, "mem": 128}}),
        &[],
    );
    assert_eq!(answer.interfaces, ["lo"]);
    drop(restarted);
    drop(crashed);
}
