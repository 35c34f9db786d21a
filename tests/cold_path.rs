//! The cold path against the real Docker daemon: pooled network sandboxes (a task joins a
//! holder's network namespace), spare containers resized for a new key of their image, and
//! that both are cleaned up at stop and after a crash.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The task that answers the cgroup limits it runs under: `{"cpu": cores, "mem_mb": MB}`.
const LIMITS: &str = "meca-test-limits:latest";

/// The value of the `/metrics` sample named exactly `series` (0 when absent).
fn metric(ex: &Executor, series: &str) -> f64 {
    let text = ex.get("/metrics").raw;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits up to 30 s until `check` holds.
fn wait_until(ex: &Executor, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 30s; log:\n{}",
            ex.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sandbox holder whose network container `id` joined (its full id).
fn sandbox_of(id: &str) -> String {
    let mode = inspect(id, "{{.HostConfig.NetworkMode}}");
    mode.strip_prefix("container:")
        .unwrap_or_else(|| panic!("task {id} is not in a sandbox: network mode {mode:?}"))
        .to_string()
}

fn limits_of(reply: &Reply) -> (f64, f64) {
    let seen: Value = serde_json::from_str(reply.msg()).expect("the task answers JSON");
    (
        seen["cpu"].as_f64().unwrap(),
        seen["mem_mb"].as_f64().unwrap(),
    )
}

#[test]
fn a_task_in_a_pooled_sandbox_answers_and_its_sandbox_serves_the_next_task() {
    let ex = Executor::start("sandbox", "sandbox_pool: 1\nidle_timeout: 500ms");
    wait_until(&ex, "a free sandbox", || {
        metric(&ex, "meca_sandboxes{state=\"free\"}") >= 1.0
    });
    let holders = ex.holders();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(inspect(&holders[0], "{{.State.Running}}"), "true");

    let reply = ex.execute(&json!({"id": ECHO, "input": "through the sandbox"}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "through the sandbox");
    let tasks = ex.containers();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let first_sandbox = sandbox_of(&tasks[0]);
    assert!(
        first_sandbox.starts_with(&holders[0]),
        "the task joined {first_sandbox}, not the pooled holder {}",
        holders[0]
    );
    // The task has no network of its own: it answers through the holder.
    assert_eq!(
        inspect(&tasks[0], "{{len .NetworkSettings.Networks}}"),
        "0",
        "the task container got a network of its own"
    );

    // Reaped after its idle time; its holder goes back to the pool and hosts the next task
    // (of another key), whose answer comes through the same namespace.
    let left = ex.wait_containers(0, Duration::from_secs(10));
    assert!(left.is_empty(), "not reaped: {left:?}");
    let reply = ex.execute(
        &json!({"id": ECHO, "resource": {"cpu": 0.5, "mem": 64}, "input": "the next task"}),
    );
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "the next task");
    let tasks = ex.containers();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(
        sandbox_of(&tasks[0]),
        first_sandbox,
        "the holder was not reused; log:\n{}",
        ex.log()
    );
}

#[test]
fn a_new_key_of_a_recent_image_takes_a_spare_resized_to_its_limits() {
    let ex = Executor::start("spare", "spare_containers: 2\ncpu: 2\nmem: 2048");
    let reply = ex.execute(&json!({"id": LIMITS, "resource": {"cpu": 1, "mem": 256}, "input": ""}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(limits_of(&reply), (1.0, 256.0));
    // A spare of the image is started in the background, with the limits of the key that ran.
    wait_until(&ex, "a spare container", || {
        metric(&ex, "meca_containers{state=\"spare\"}") == 1.0
    });
    let before = ex.containers();
    assert_eq!(
        before.len(),
        2,
        "the key's container and the spare: {before:?}"
    );

    // A new key of the image: the spare is resized and serves it; no container is created.
    let reply =
        ex.execute(&json!({"id": LIMITS, "resource": {"cpu": 0.5, "mem": 384}, "input": ""}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(
        limits_of(&reply),
        (0.5, 384.0),
        "the task must see its key's limits from inside"
    );
    assert_eq!(metric(&ex, "meca_spares_claimed_total"), 1.0);
    let spare = before
        .iter()
        .find(|id| inspect(id, "{{.HostConfig.Memory}}") == (384u64 << 20).to_string())
        .unwrap_or_else(|| panic!("no container of {before:?} was resized to 384 MB"));
    assert_eq!(
        inspect(spare, "{{.HostConfig.MemorySwap}}"),
        (384u64 << 20).to_string(),
        "no swap beyond the memory limit"
    );
    assert_eq!(inspect(spare, "{{.HostConfig.NanoCpus}}"), "500000000");
    // The image ran again: a new spare is started, with the last key's limits. The budget
    // then holds both keys at their own sizes and the spare.
    wait_until(&ex, "a new spare", || {
        metric(&ex, "meca_containers{state=\"spare\"}") == 1.0
    });
    assert_eq!(
        metric(&ex, "meca_budget_memory_mb{kind=\"reserved\"}"),
        256.0 + 384.0 + 384.0
    );

    // Smaller limits work too: the new spare shrinks to a third key's.
    let reply =
        ex.execute(&json!({"id": LIMITS, "resource": {"cpu": 0.25, "mem": 128}, "input": ""}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(limits_of(&reply), (0.25, 128.0));
    assert_eq!(metric(&ex, "meca_spares_claimed_total"), 2.0);
}

#[test]
fn holders_and_spares_are_removed_at_stop_and_after_a_crash() {
    let name = unique_name("pools-crash");
    let yaml = "spare_containers: 1\nsandbox_pool: 2";
    let mut crashed = Executor::start_named(&name, yaml);
    let reply = crashed.execute(&json!({"id": ECHO, "input": "before the crash"}));
    assert!(reply.success(), "{reply:?}");
    wait_until(&crashed, "a spare and two free sandboxes", || {
        metric(&crashed, "meca_containers{state=\"spare\"}") == 1.0
            && metric(&crashed, "meca_sandboxes{state=\"free\"}") == 2.0
    });
    crashed.signal("KILL");
    crashed.reap_killed();
    let left = containers_of(&name);
    assert!(
        holders_of(&name).len() >= 2 && tasks_of(&name).len() == 2,
        "holders, the task and its spare should outlive the killed executor: {left:?}"
    );

    // The next instance of the same name removes all of them.
    let mut restarted = Executor::start_named(&name, yaml);
    let still: Vec<String> = containers_of(&name)
        .into_iter()
        .filter(|id| left.contains(id))
        .collect();
    assert!(
        still.is_empty(),
        "left by the crashed instance: {still:?}; log:\n{}",
        restarted.log()
    );
    let reply = restarted.execute(&json!({"id": ECHO, "input": "after the restart"}));
    assert!(reply.success(), "{reply:?}");
    wait_until(&restarted, "a spare", || {
        metric(&restarted, "meca_containers{state=\"spare\"}") == 1.0
    });
    restarted.stop();
    let left = containers_of(&name);
    assert!(left.is_empty(), "left after /stop: {left:?}");
    drop(crashed);
}

#[test]
fn without_a_pool_every_task_gets_a_sandbox_of_its_own() {
    let ex = Executor::start("sandbox-own", "sandbox_pool: 0\nidle_timeout: 500ms");
    let reply = ex.execute(&json!({"id": ECHO, "input": "in a sandbox of its own"}));
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    assert_eq!(reply.msg(), "in a sandbox of its own");
    let tasks = ex.containers();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let holder = sandbox_of(&tasks[0]);
    assert_eq!(inspect(&holder, "{{.HostConfig.NetworkMode}}"), "none");
    assert_eq!(metric(&ex, "meca_sandboxes{state=\"in_use\"}"), 1.0);
    // Once its task left, no holder is kept (the pool holds none).
    let left = ex.wait_containers(0, Duration::from_secs(10));
    assert!(left.is_empty(), "not reaped: {left:?}");
    wait_until(&ex, "the holder removed", || ex.holders().is_empty());
}

#[test]
fn a_task_that_binds_without_reuseaddr_starts_again_in_a_reused_sandbox() {
    // A bare C server binds port 8080 without SO_REUSEADDR: it cannot start while a closed
    // connection of the previous task lingers in TIME_WAIT in the namespace. The executor
    // closes its connections to a task before removing it, so none does.
    const NO_REUSE: &str = "meca-test-no-reuseaddr:latest";
    let ex = Executor::start("sandbox-rebind", "sandbox_pool: 1\nidle_timeout: 500ms");
    wait_until(&ex, "a free sandbox", || {
        metric(&ex, "meca_sandboxes{state=\"free\"}") >= 1.0
    });
    // Several calls at once: the executor keeps several connections to the task open.
    std::thread::scope(|s| {
        for i in 0..4 {
            let ex = &ex;
            s.spawn(move || {
                let input = format!("first task, call {i}");
                let reply = ex.execute(&json!({"id": NO_REUSE, "input": input}));
                assert!(reply.success(), "{reply:?}");
                assert_eq!(reply.msg(), input);
            });
        }
    });
    let first = sandbox_of(&ex.containers()[0]);
    let left = ex.wait_containers(0, Duration::from_secs(10));
    assert!(left.is_empty(), "not reaped: {left:?}");
    let reply = ex.execute(
        &json!({"id": NO_REUSE, "resource": {"cpu": 0.5, "mem": 64}, "input": "second task"}),
    );
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    assert_eq!(
        sandbox_of(&ex.containers()[0]),
        first,
        "the holder was reused"
    );
}
