//! Pulling: an image absent locally is pulled from a registry before it runs. The registry is
//! a real one (Debian's `docker-registry`) served on loopback by this test; nothing is ever
//! pulled from a public registry.

mod common;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::registry::{build_with_random_layer, image_present, Registry, Tags};
use common::*;
use serde_json::json;

#[test]
fn an_absent_image_is_pulled_then_run() {
    require_images();
    let registry = Registry::start();
    let reference = format!("127.0.0.1:{}/meca/echo-pull:v1", registry.port);
    let _tags = Tags(vec![reference.clone()]);
    docker(&["tag", ECHO, &reference]);
    docker(&["push", &reference]);
    docker(&["rmi", &reference]);
    assert!(!image_present(&reference), "the tag is gone locally");

    let ex = Executor::start("pull", "");
    let reply = ex.execute(&json!({"id": reference, "input": "pulled"}));
    assert!(reply.success(), "{reply:?}\n{}", ex.log());
    assert_eq!(reply.msg(), "pulled");
    assert!(image_present(&reference), "the executor pulled the image");
    assert!(ex.log().contains("pulling image"), "the pull is logged");
    // A repository that the registry does not have: a clear error naming it, nothing left.
    let missing = format!("127.0.0.1:{}/meca/not-there:v1", registry.port);
    let reply = ex.execute(&json!({"id": missing, "input": "x"}));
    assert!(!reply.success());
    assert!(reply.msg().contains(&missing), "{}", reply.msg());
    assert_eq!(ex.containers().len(), 1, "only the pulled task's container");
}

#[test]
fn concurrent_starts_of_an_absent_image_share_one_pull() {
    require_images();
    let registry = Registry::start();
    let reference = format!("127.0.0.1:{}/meca/echo-shared:v1", registry.port);
    let _tags = Tags(vec![reference.clone()]);
    docker(&["tag", ECHO, &reference]);
    docker(&["push", &reference]);
    docker(&["rmi", &reference]);
    assert!(!image_present(&reference), "the tag is gone locally");

    // Budget 2 cores and 1024 MB: all four keys (1 core, 224 MB together) fit at once.
    let ex = Executor::start("pull-shared", "cpu: 2\nmem: 1024");
    let mems = [32, 48, 64, 80];
    let barrier = Barrier::new(mems.len());
    let replies: Vec<(i64, Reply)> = std::thread::scope(|s| {
        let handles: Vec<_> = mems
            .iter()
            .map(|&mem| {
                let (ex, barrier, reference) = (&ex, &barrier, &reference);
                s.spawn(move || {
                    barrier.wait();
                    let reply = ex.execute(&json!({
                        "id": reference,
                        "resource": {"cpu": 0.25, "mem": mem},
                        "input": format!("mem {mem}"),
                    }));
                    (mem, reply)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let log = ex.log();
    for (mem, reply) in &replies {
        assert!(reply.success(), "mem {mem}: {reply:?}; log:\n{log}");
        assert_eq!(reply.msg(), format!("mem {mem}"));
    }
    assert!(image_present(&reference), "the executor pulled the image");
    let pulls = log
        .lines()
        .filter(|l| l.contains("pulling image") && l.contains(&reference))
        .count();
    assert_eq!(
        pulls, 1,
        "four concurrent starts of one absent image should share one pull; log:\n{log}"
    );
    assert_eq!(ex.containers().len(), 4, "one container per key");
}

/// A "registry" on 127.0.0.1 that accepts connections and never answers. Its thread ends,
/// and the connections it holds are closed, on drop.
struct SilentRegistry {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentRegistry {
    fn start() -> SilentRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            held.push(stream);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        SilentRegistry {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a task of an image of a registry that accepts connections and never answers, on an
/// executor with `config`: the request fails within 2 s to 20 s, saying `why` of the image,
/// after Docker contacted the registry, and leaves neither the image nor a container.
fn a_silent_registry_fails_the_pull(name: &str, config: &str, why: &str) {
    require_images();
    let registry = SilentRegistry::start();
    let image = format!("127.0.0.1:{}/meca/{name}:v1", registry.port);
    let ex = Executor::start(name, config);
    let started = Instant::now();
    // While the request waits, /stats shows its pull in flight.
    let (reply, seen) = std::thread::scope(|s| {
        let request = s.spawn(|| ex.execute(&json!({"id": image, "input": "x"})));
        let mut seen = None;
        while seen.is_none() && started.elapsed() < Duration::from_millis(1500) {
            let stats = ex.get("/stats").body;
            seen = stats["pulls"]
                .as_array()
                .and_then(|pulls| pulls.iter().find(|p| p["image"] == image.as_str()))
                .cloned();
            std::thread::sleep(Duration::from_millis(50));
        }
        (request.join().unwrap(), seen)
    });
    let took = started.elapsed();
    let seen = seen.unwrap_or_else(|| panic!("/stats never showed the pull of {image}"));
    assert_eq!(seen["layers"], 0, "{seen}");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(!reply.success(), "{reply:?}");
    let msg = reply.msg();
    assert!(
        msg.contains(why) && msg.contains(&image),
        "message should say pulling {image} {why}: {reply:?}; log:\n{}",
        ex.log()
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "the limit of 2s was not applied (answered after {took:?})"
    );
    assert!(
        registry.accepted.load(Ordering::SeqCst) > 0,
        "Docker never contacted the registry: the limit was not what ended the pull"
    );
    assert!(!image_present(&image));
    assert!(ex.containers().is_empty(), "{:?}", ex.containers());
}

#[test]
fn a_pull_that_hangs_fails_after_pull_timeout() {
    a_silent_registry_fails_the_pull("pull-timeout", "pull_timeout: 2s", "timed out after 2s");
}

#[test]
fn a_pull_that_makes_no_progress_fails_after_pull_stall_timeout() {
    a_silent_registry_fails_the_pull(
        "pull-stall",
        "pull_timeout: 10m\npull_stall_timeout: 2s",
        "made no progress for 2s",
    );
}

#[test]
fn a_pull_reports_its_layers_and_bytes_from_dockers_stream() {
    require_images();
    let registry = Registry::start();
    let reference = format!("127.0.0.1:{}/meca/echo-layered:v1", registry.port);
    let _tags = Tags(vec![reference.clone()]);
    // The echo image and a layer of 3 MB of random bytes that no other image has, so
    // that Docker downloads one layer and finds the other in place.
    build_with_random_layer(&reference, 3_000_000);
    docker(&["push", &reference]);
    docker(&["rmi", &reference]);
    assert!(!image_present(&reference), "the tag is gone locally");

    let ex = Executor::start("pull-progress", "");
    let reply = ex.execute(&json!({"id": reference, "input": "layered"}));
    assert!(reply.success(), "{reply:?}\n{}", ex.log());
    let log = ex.log();
    let pulled = log
        .lines()
        .find(|l| l.contains("image pulled") && l.contains("progress"))
        .unwrap_or_else(|| panic!("the pull's end is logged with its progress:\n{log}"));
    assert!(pulled.contains("2/2 layers, 3 MB/3 MB"), "{pulled}\n{log}");
    let metrics = ex.get("/metrics").raw;
    assert_eq!(
        mecanywhere_executor::metrics_text::Scrape::parse(&metrics).get("meca_pulls_in_flight"),
        Some(0.0),
        "no pull left in flight: {metrics}"
    );
}
