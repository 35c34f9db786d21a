//! Faults around the tasks, against the real Docker daemon: a task that runs out of memory,
//! containers stopped or removed behind the executor's back, answers and requests over their
//! size caps, a Docker daemon that goes away and comes back, and two executors sharing one
//! daemon. In every case the executor says what happened, leaves nothing behind and keeps
//! serving.

mod common;

use std::io::ErrorKind;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// An echo request with the given resources; checks the answer.
fn echo(ex: &Executor, resource: Value, input: &str) {
    let reply = ex.execute(&json!({"id": ECHO, "resource": resource, "input": input}));
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    assert_eq!(reply.msg(), input);
}

/// Echo with the default resources (1 core, 128 MB).
fn echo_default(ex: &Executor, input: &str) {
    let reply = ex.execute(&json!({"id": ECHO, "input": input}));
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    assert_eq!(reply.msg(), input);
}

/// The executor's only container.
fn only_container(ex: &Executor) -> String {
    let ids = ex.containers();
    assert_eq!(ids.len(), 1, "expected one container: {ids:?}");
    ids[0].clone()
}

fn stats(ex: &Executor) -> Value {
    let reply = ex.get("/stats");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

/// Polls `/stats` (and nothing else: no execute request) until the executor reports no
/// container and no reserved CPU, or `limit` passes.
fn wait_stats_empty(ex: &Executor, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = stats(ex);
        let empty = s["containers"] == json!(0) && s["task_used_cpu"].as_f64() == Some(0.0);
        if empty || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn task_out_of_memory_is_reported_with_its_limit_and_removed() {
    let ex = Executor::start("oom", "");
    let started = Instant::now();
    let reply = ex.execute(&json!({
        "id": "meca-test-oom:latest",
        "resource": {"cpu": 1, "mem": 64},
        "input": "eat",
    }));
    assert_failed(&reply);
    let msg = reply.msg();
    assert!(
        msg.contains("ran out of memory") && msg.contains("limit 64 MB"),
        "message should say the task ran out of its 64 MB: {reply:?}; log:\n{}",
        ex.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "OOM answered after {:?}",
        started.elapsed()
    );
    assert_no_container(&ex, Duration::from_secs(10));
    echo_default(&ex, "after oom");
}

/// A warm container is stopped or removed with `docker <how...> <id>`: the executor learns it
/// from the engine's events alone, drops it, releases its budget, and serves the next
/// request from a fresh container.
fn container_stopped_outside(prefix: &str, how: &[&str]) {
    let ex = Executor::start(prefix, "");
    echo_default(&ex, "warm");
    let old = only_container(&ex);
    let s = stats(&ex);
    assert_eq!(s["containers"], json!(1), "{s}");
    assert!(s["task_used_cpu"].as_f64().unwrap() > 0.0, "{s}");

    let mut args = how.to_vec();
    args.push(&old);
    docker(&args);
    let how = how.join(" ");
    // No request is sent: only the executor's event watcher can notice.
    let s = wait_stats_empty(&ex, Duration::from_secs(10));
    assert_eq!(
        s["containers"],
        json!(0),
        "docker {how}: container still counted: {s}; log:\n{}",
        ex.log()
    );
    assert_eq!(
        s["task_used_cpu"].as_f64(),
        Some(0.0),
        "docker {how}: budget not released: {s}; log:\n{}",
        ex.log()
    );
    // A stopped (not removed) container is removed by the executor.
    assert_no_container(&ex, Duration::from_secs(10));

    echo_default(&ex, "fresh");
    let new = only_container(&ex);
    assert_ne!(new, old, "docker {how}: the dead container was reused");
    assert_eq!(inspect(&new, "{{.State.Running}}"), "true");
}

#[test]
fn container_removed_outside_is_dropped_without_a_request() {
    container_stopped_outside("rm-outside", &["rm", "-f"]);
}

#[test]
fn container_killed_outside_is_dropped_and_removed_without_a_request() {
    container_stopped_outside("kill-outside", &["kill"]);
}

#[test]
fn answer_over_max_answer_bytes_is_refused_and_the_executor_keeps_serving() {
    let ex = Executor::start("huge", "max_answer_bytes: 1048576");
    let started = Instant::now();
    let reply = ex.execute(&json!({"id": "meca-test-huge:latest", "input": "x"}));
    assert_failed(&reply);
    let msg = reply.msg();
    assert!(
        msg.contains("larger than the limit") && msg.contains("1048576"),
        "message should name the answer limit: {}",
        &reply.raw[..reply.raw.len().min(1000)]
    );
    assert!(
        reply.raw.len() < 64 * 1024,
        "the oversized answer leaked into the reply ({} bytes)",
        reply.raw.len()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    echo_default(&ex, "after huge");
}

#[test]
fn request_over_max_request_bytes_is_refused_with_413() {
    let ex = Executor::start("big-request", "max_request_bytes: 4096");
    let big = json!({"id": ECHO, "input": "x".repeat(10 * 1024)}).to_string();
    assert!(big.len() > 10_000);
    let reply = ex.post("/", &big);
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(reply.body["success"], json!(false), "{reply:?}");
    assert!(!reply.msg().is_empty(), "413 without a message: {reply:?}");
    assert!(
        ex.containers().is_empty(),
        "a refused request started a task"
    );
    echo_default(&ex, "small");
}

/// Where the real Docker daemon listens.
fn docker_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => PathBuf::from(&host["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

/// A Unix-socket proxy in front of the Docker daemon that can be cut and restored on the
/// same path. Stopping it stops accepting, removes its socket and shuts down every forwarded
/// connection; all its threads have ended when `stop` returns (and when it is dropped).
struct DockerProxy {
    path: PathBuf,
    upstream: PathBuf,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

struct Running {
    stop: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
    /// A handle on both ends of every forwarded connection, to shut them down.
    streams: Arc<Mutex<Vec<UnixStream>>>,
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Copies one direction of a connection until either end closes, then passes the close on.
fn pump(mut from: UnixStream, mut to: UnixStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl DockerProxy {
    fn start() -> DockerProxy {
        let dir = tempfile::tempdir().unwrap();
        let mut proxy = DockerProxy {
            path: dir.path().join("docker.sock"),
            upstream: docker_socket(),
            running: None,
            _dir: dir,
        };
        proxy.resume();
        proxy
    }

    fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Listens again on the same path.
    fn resume(&mut self) {
        assert!(self.running.is_none(), "proxy already running");
        let listener = UnixListener::bind(&self.path).expect("proxy binds its socket");
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let pumps: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = {
            let (stop, streams, pumps) = (stop.clone(), streams.clone(), pumps.clone());
            let upstream = self.upstream.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = UnixStream::connect(&upstream) else {
                        continue;
                    };
                    let ends = (client.try_clone(), server.try_clone());
                    let (Ok(client2), Ok(server2)) = ends else {
                        continue;
                    };
                    {
                        let mut all = streams.lock().unwrap();
                        all.push(client.try_clone().unwrap());
                        all.push(server.try_clone().unwrap());
                    }
                    let mut pumps = pumps.lock().unwrap();
                    pumps.push(std::thread::spawn(move || pump(client, server2)));
                    pumps.push(std::thread::spawn(move || pump(server, client2)));
                }
            })
        };
        self.running = Some(Running {
            stop,
            acceptor,
            streams,
            pumps,
        });
    }

    /// Cuts the daemon off: no new connection, every open one shut down.
    fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        let _ = running.acceptor.join();
        let _ = std::fs::remove_file(&self.path);
        for stream in running.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for pump in running.pumps.lock().unwrap().drain(..) {
            let _ = pump.join();
        }
    }

    fn socket(&self) -> &Path {
        &self.path
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn docker_daemon_unreachable_then_back_is_reconciled() {
    let mut proxy = DockerProxy::start();
    let ex = Executor::start_with_env("engine-outage", "", &[("DOCKER_HOST", &proxy.url())]);
    assert!(proxy.socket().exists());
    let key_a = json!({"id": ECHO, "input": "key a"});
    let key_b = json!({"id": ECHO, "resource": {"cpu": 0.5, "mem": 64}, "input": "key b"});

    let reply = ex.execute(&key_a);
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    let a_id = only_container(&ex);

    proxy.stop();
    assert!(
        matches!(UnixStream::connect(proxy.socket()), Err(e) if e.kind() == ErrorKind::NotFound),
        "the proxy still accepts connections"
    );

    // A warm container needs no engine: it keeps serving.
    let reply = ex.execute(&key_a);
    assert!(
        reply.success(),
        "warm container during the outage: {reply:?}; log:\n{}",
        ex.log()
    );

    // A new key needs the engine: a clear failure, in bounded time.
    let started = Instant::now();
    let reply = ex.execute(&key_b);
    let took = started.elapsed();
    assert_failed(&reply);
    let outage_reply = reply;
    let msg = outage_reply.msg().to_ascii_lowercase();
    assert!(msg.contains("engine"), "{outage_reply:?}");
    assert!(!msg.contains("panic"), "{outage_reply:?}");
    assert!(
        took < Duration::from_secs(30),
        "answered after {took:?} while the engine was down"
    );
    let health = ex.get("/health");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body["status"], json!("ok"), "{health:?}");

    // Behind the executor's back (through the real socket) key A's container goes away.
    docker(&["rm", "-f", &a_id]);
    std::thread::sleep(Duration::from_secs(2));
    let s = stats(&ex);
    assert_eq!(
        s["containers"],
        json!(1),
        "the executor cannot have seen the removal while cut off: {s}"
    );

    proxy.resume();
    // No execute request: the executor reconnects and reconciles by itself.
    let s = wait_stats_empty(&ex, Duration::from_secs(15));
    assert_eq!(
        s["containers"],
        json!(0),
        "not reconciled after the engine came back: {s}; log:\n{}",
        ex.log()
    );
    assert_eq!(s["task_used_cpu"].as_f64(), Some(0.0), "{s}");

    echo_default(&ex, "key a");
    echo(&ex, json!({"cpu": 0.5, "mem": 64}), "key b");
    let ids = ex.containers();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        !ids.contains(&a_id),
        "the removed container came back: {ids:?}"
    );

    // Checked last, so that the reconciliation above is exercised either way.
    assert!(
        msg.contains("unreachable"),
        "while cut off, the message should say the container engine is unreachable: \
         {outage_reply:?}"
    );
    drop(ex);
    drop(proxy);
}

#[test]
fn two_executors_on_one_daemon_touch_only_their_own_containers() {
    let mut x = Executor::start("two-x", "");
    let y = Executor::start("two-y", "");
    echo_default(&x, "x");
    echo_default(&y, "y");
    let x_id = only_container(&x);
    let y_id = only_container(&y);
    assert_ne!(x_id, y_id);

    let status = x.stop();
    assert!(status.success(), "{status}; log:\n{}", x.log());
    assert!(x.containers().is_empty(), "X left {:?}", x.containers());

    // Y's container is untouched and still in Y's pool.
    assert_eq!(y.containers(), vec![y_id.clone()]);
    assert_eq!(inspect(&y_id, "{{.State.Running}}"), "true");
    std::thread::sleep(Duration::from_millis(500));
    let s = stats(&y);
    assert_eq!(s["containers"], json!(1), "{s}");
    echo_default(&y, "y again");
    assert_eq!(
        y.containers(),
        vec![y_id],
        "Y should still serve from its warm container"
    );
}
