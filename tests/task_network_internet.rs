//! `task_network: internet` against the real Docker daemon: a task reaches a public address
//! and nothing of the host, the bridge or other containers. The "internet" is a network
//! namespace this test makes on this machine (`ip netns`, a veth pair with TEST-NET-2
//! addresses, 198.51.100.0/30, which no blocked range covers), with a listener the test
//! starts in it; no traffic leaves the machine.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const PROBE: &str = "meca-test-probe:latest";

/// Runs a command, panicking with its output when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A network namespace with a veth pair to the host and a listener inside; all removed on
/// drop (deleting the namespace deletes the pair).
struct FakeInternet {
    netns: String,
    listener: Child,
    addr: SocketAddr,
}

impl FakeInternet {
    fn new() -> FakeInternet {
        let tag = std::process::id() % 100_000;
        let netns = format!("meca-inet-{tag}");
        let (host_if, ns_if) = (format!("mih{tag}"), format!("min{tag}"));
        let mut made = FakeInternet {
            netns: netns.clone(),
            listener: Command::new("true").spawn().unwrap(),
            addr: "198.51.100.2:8099".parse().unwrap(),
        };
        run("ip", &["netns", "add", &netns]);
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &netns,
            ],
        );
        run("ip", &["addr", "add", "198.51.100.1/30", "dev", &host_if]);
        run("ip", &["link", "set", &host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns, "ip"];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        in_ns(&["addr", "add", "198.51.100.2/30", "dev", &ns_if]);
        in_ns(&["link", "set", &ns_if, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        in_ns(&["route", "add", "default", "via", "198.51.100.1"]);
        let server = "import socket\n\
                      s = socket.socket()\n\
                      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                      s.bind(('198.51.100.2', 8099))\n\
                      s.listen(64)\n\
                      while True:\n    s.accept()[0].close()\n";
        made.listener = Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-c", server])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Reachable from the host first, so the task's result means something.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&made.addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test's listener in {netns} does not answer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        made
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        let _ = self.listener.kill();
        let _ = self.listener.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// A container of the test on Docker's default bridge, removed on drop.
struct BridgeContainer(String);

impl Drop for BridgeContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The host's own IPv4 address on the interface of its default route.
fn host_address() -> String {
    let route = run("ip", &["-4", "route", "show", "default"]);
    let dev = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .expect("a default route");
    address_of(dev)
}

/// The first IPv4 address of interface `dev`.
fn address_of(dev: &str) -> String {
    let addrs = run("ip", &["-4", "-o", "addr", "show", "dev", dev]);
    addrs
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .expect("an IPv4 address")
        .to_string()
}

#[test]
fn internet_mode_reaches_a_public_address_and_nothing_of_the_host_or_the_bridge() {
    let internet = FakeInternet::new();
    // The default bridge's gateway: the host's address on docker0.
    let gateway = address_of("docker0");
    let at_gateway = TcpListener::bind(format!("{gateway}:0")).unwrap();
    let at_host = TcpListener::bind(format!("{}:0", host_address())).unwrap();
    let neighbour = BridgeContainer(docker(&[
        "run",
        "-d",
        "--label",
        "org.mecanywhere.test-image=1",
        ECHO,
    ]));
    let neighbour_ip = inspect(&neighbour.0, "{{.NetworkSettings.IPAddress}}");
    let neighbour_addr: SocketAddr = format!("{neighbour_ip}:8080").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&neighbour_addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the test's container does not answer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let ex = Executor::start("internet", "task_network: internet\n");
    let blocked = [
        at_gateway.local_addr().unwrap().to_string(),
        at_host.local_addr().unwrap().to_string(),
        neighbour_addr.to_string(),
    ];
    let mut targets = vec![internet.addr.to_string()];
    targets.extend(blocked.iter().cloned());
    let input = serde_json::to_string(&targets).unwrap();
    let reply = ex.execute(&json!({"id": PROBE, "input": input}));
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    let seen: Value = serde_json::from_str(reply.msg()).unwrap();
    eprintln!("internet mode, what the task reached: {seen}");
    assert_eq!(
        seen["results"][internet.addr.to_string()],
        json!("connected"),
        "the public address: {seen}"
    );
    for target in &blocked {
        assert_ne!(
            seen["results"][target],
            json!("connected"),
            "{target} must be unreachable: {seen}"
        );
    }
    assert_eq!(
        mecanywhere_executor::metrics_text::value(
            &ex.get("/metrics").raw,
            "meca_task_network{mode=\"internet\"}"
        ),
        1.0,
        "/metrics states the mode"
    );
    // The holder set the routes and kept no capability; the task container got none.
    let tasks = ex.containers();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let cap_add = inspect(&tasks[0], "{{json .HostConfig.CapAdd}}");
    assert!(cap_add == "null" || cap_add == "[]", "{cap_add}");
    let holder = inspect(&tasks[0], "{{.HostConfig.NetworkMode}}");
    let holder = holder.strip_prefix("container:").expect("in a sandbox");
    let pid = inspect(holder, "{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    assert_eq!(
        effective, "0000000000000000",
        "the holder dropped its capabilities"
    );
}
