//! The warm pool and the budget against the real Docker daemon: reuse, single flight,
//! independence of keys, idle reaping, eviction, and waiting for room.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn sequential_requests_reuse_one_container() {
    let ex = Executor::start("seq", "");
    for i in 0..20 {
        let input = format!("{{\"n\": {i}}}");
        let reply = ex.execute(&json!({"id": ECHO, "input": input}));
        assert!(reply.success(), "{reply:?}");
        assert_eq!(reply.msg(), input);
    }
    assert_eq!(ex.containers().len(), 1);
}

#[test]
fn concurrent_requests_to_a_cold_key_start_one_container() {
    let ex = Executor::start("conc", "");
    // 32 requests at once to a key with no container yet: single flight, then shared.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let ex = &ex;
                s.spawn(move || {
                    let input = format!("request {i}");
                    let reply = ex.execute(&json!({"id": ECHO, "input": input}));
                    assert!(reply.success(), "{reply:?}");
                    assert_eq!(reply.msg(), input, "each caller gets its own answer");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    assert_eq!(
        ex.containers().len(),
        1,
        "one container for 32 concurrent requests"
    );
}

#[test]
fn slow_cold_start_is_shared_by_all_waiting_requests() {
    let ex = Executor::start("flight", "");
    let image = "meca-test-slow-start:latest";
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| ex.execute(&json!({"id": image, "input": "slow"}))))
            .collect();
        // While the start is in progress there is exactly one container.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            ex.containers().len(),
            1,
            "single flight during the cold start"
        );
        for h in handles {
            let reply = h.join().unwrap();
            assert!(reply.success(), "{reply:?}");
            assert_eq!(reply.msg(), "slow");
        }
    });
    assert_eq!(ex.containers().len(), 1);
}

#[test]
fn a_task_that_never_becomes_ready_does_not_block_other_keys() {
    let ex = Executor::start("independent", "start_timeout: 8s\n");
    // Small shares so that all three keys fit the 2-core budget together.
    let small = json!({"cpu": 0.5, "mem": 64});
    assert!(ex
        .execute(&json!({"id": ECHO, "resource": small, "input": "warm"}))
        .success());
    std::thread::scope(|s| {
        let stuck = s.spawn(|| {
            let reply = ex.execute(
                &json!({"id": "meca-test-never-ready:latest", "resource": small, "input": "x"}),
            );
            (reply, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(500));
        // Warm calls and a cold start of another key all finish while the stuck start waits.
        for i in 0..10 {
            let reply =
                ex.execute(&json!({"id": ECHO, "resource": small, "input": format!("{i}")}));
            assert!(reply.success(), "{reply:?}");
        }
        let cold =
            ex.execute(&json!({"id": ECHO, "resource": {"cpu": 0.5, "mem": 96}, "input": "cold"}));
        assert!(cold.success(), "{cold:?}");
        let others_done = Instant::now();
        let (reply, stuck_done) = stuck.join().unwrap();
        assert!(!reply.success());
        assert!(reply.msg().contains("meca-init-done"), "{}", reply.msg());
        assert!(
            others_done < stuck_done,
            "other keys were served before the stuck start ended"
        );
    });
    assert_eq!(
        ex.wait_containers(2, Duration::from_secs(10)).len(),
        2,
        "the stuck container was removed"
    );
}

#[test]
fn idle_containers_are_reaped_and_their_budget_released() {
    let ex = Executor::start("reap", "idle_timeout: 2s\n");
    assert!(ex.execute(&json!({"id": ECHO, "input": "x"})).success());
    assert_eq!(ex.containers().len(), 1);
    let stats = ex.get("/stats").body;
    assert!(stats["task_used_cpu"].as_f64().unwrap() > 0.0, "{stats}");
    let left = ex.wait_containers(0, Duration::from_secs(15));
    assert!(
        left.is_empty(),
        "idle container still there after 15s: {left:?}"
    );
    let stats = ex.get("/stats").body;
    assert_eq!(stats["task_used_cpu"].as_f64().unwrap(), 0.0, "{stats}");
    assert_eq!(stats["task_used_mem"].as_f64().unwrap(), 0.0, "{stats}");
    // The key works again: a fresh container.
    assert!(ex.execute(&json!({"id": ECHO, "input": "y"})).success());
}

#[test]
fn a_container_with_a_request_in_flight_is_not_reaped() {
    let ex = Executor::start("busy", "idle_timeout: 1s\nrequest_timeout: 5s\n");
    std::thread::scope(|s| {
        let busy = s.spawn(|| ex.execute(&json!({"id": "meca-test-hang:latest", "input": "x"})));
        std::thread::sleep(Duration::from_millis(3500));
        assert_eq!(
            ex.containers().len(),
            1,
            "the busy container outlives the 1s idle timeout"
        );
        let reply = busy.join().unwrap();
        assert!(!reply.success());
        assert!(
            reply.msg().contains("timed out after 5s"),
            "{}",
            reply.msg()
        );
    });
    assert!(ex.wait_containers(0, Duration::from_secs(10)).is_empty());
}

#[test]
fn an_idle_container_is_evicted_to_make_room() {
    // Budget of 2 cores: task A (2 cores) is idle, task B (2 cores) needs the room.
    let ex = Executor::start("evict", "cpu: 2\nmem: 2048\n");
    let a = ex.execute(&json!({"id": ECHO, "resource": {"cpu": 2, "mem": 128}, "input": "A"}));
    assert!(a.success(), "{a:?}");
    let a_ids = ex.containers();
    assert_eq!(a_ids.len(), 1);
    let b = ex.execute(&json!({"id": ECHO, "resource": {"cpu": 2, "mem": 256}, "input": "B"}));
    assert!(b.success(), "{b:?}");
    assert_eq!(b.msg(), "B");
    let ids = ex.containers();
    assert_eq!(ids.len(), 1, "A was removed: {ids:?}");
    assert_ne!(ids[0], a_ids[0]);
    assert_eq!(
        inspect(&ids[0], "{{.HostConfig.Memory}}"),
        (256u64 << 20).to_string()
    );
    let stats = ex.get("/stats").body;
    assert_eq!(stats["task_used_cpu"].as_f64().unwrap(), 100.0, "{stats}");
}

#[test]
fn a_request_waits_for_a_busy_budget_then_times_out_clearly() {
    let ex = Executor::start(
        "queue",
        "cpu: 1\nmem: 1024\nqueue_timeout: 2s\nrequest_timeout: 8s\n",
    );
    std::thread::scope(|s| {
        // A holds the whole CPU budget with a request in flight (the task never answers).
        let busy = s.spawn(|| ex.execute(&json!({"id": "meca-test-hang:latest", "input": "x"})));
        std::thread::sleep(Duration::from_millis(1500));
        let started = Instant::now();
        let reply = ex.execute(&json!({"id": ECHO, "input": "B"}));
        let waited = started.elapsed();
        assert!(!reply.success());
        assert!(reply.msg().contains("waited 2s"), "{}", reply.msg());
        assert!(
            waited >= Duration::from_secs(2),
            "it waited for room: {waited:?}"
        );
        assert_eq!(ex.containers().len(), 1, "only the busy task runs");
        let reply = busy.join().unwrap();
        assert!(!reply.success());
    });
}

#[test]
fn a_waiting_request_gets_the_room_when_a_task_finishes() {
    let ex = Executor::start(
        "queue-ok",
        "cpu: 1\nmem: 1024\nqueue_timeout: 30s\nrequest_timeout: 3s\n",
    );
    std::thread::scope(|s| {
        let busy = s.spawn(|| ex.execute(&json!({"id": "meca-test-hang:latest", "input": "x"})));
        std::thread::sleep(Duration::from_millis(1500));
        // B waits until A's request times out and its container is removed.
        let reply = ex.execute(&json!({"id": ECHO, "input": "B"}));
        assert!(reply.success(), "{reply:?}");
        assert_eq!(reply.msg(), "B");
        let a = busy.join().unwrap();
        assert!(!a.success());
    });
    assert_eq!(ex.containers().len(), 1);
}

#[test]
fn a_waiting_request_evicts_a_container_as_soon_as_it_goes_idle() {
    // Budget 1 core; A's request keeps its container busy for 2 s, and idle containers are
    // kept for 10 minutes. B must not wait for the reaper: A becomes evictable when its
    // request ends.
    let ex = Executor::start(
        "idle-wake",
        "cpu: 1\nmem: 1024\nqueue_timeout: 20s\nidle_timeout: 10m\n",
    );
    std::thread::scope(|s| {
        let a =
            s.spawn(|| ex.execute(&json!({"id": "meca-test-slow-answer:latest", "input": "A"})));
        std::thread::sleep(Duration::from_millis(1000));
        let started = Instant::now();
        let b = ex.execute(&json!({"id": ECHO, "input": "B"}));
        let waited = started.elapsed();
        assert!(b.success(), "{b:?}");
        assert!(
            waited < Duration::from_secs(15),
            "B got the room when A went idle, not at its queue timeout: {waited:?}"
        );
        let a = a.join().unwrap();
        assert!(a.success(), "{a:?}");
        assert_eq!(a.msg(), "A");
    });
    assert_eq!(ex.containers().len(), 1, "A was evicted for B");
}
