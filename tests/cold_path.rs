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
    mecanywhere_executor::metrics_text::value(&ex.get("/metrics").raw, series)
}

/// Waits up to 30 s until `check` holds.
fn wait_until(ex: &Executor, what: &str, mut check: impl FnMut() -> bool) {
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

/// The task that reads its cgroup limits once at start and, on each request, allocates and
/// touches 85% of the memory it read then: `{"start": limits, "now": limits, "filled_mb": MB}`.
const SIZED: &str = "meca-test-sized-at-start:latest";

/// What a `SIZED` task read at start and reads now, as (cores, MB) pairs.
fn sized_limits(reply: &Reply) -> ((f64, f64), (f64, f64)) {
    let seen: Value = serde_json::from_str(reply.msg()).expect("the task answers JSON");
    let pair = |v: &Value| (v["cpu"].as_f64().unwrap(), v["mem_mb"].as_f64().unwrap());
    (pair(&seen["start"]), pair(&seen["now"]))
}

fn sized(cpu: f64, mem: u64) -> Value {
    json!({"id": SIZED, "resource": {"cpu": cpu, "mem": mem}, "input": ""})
}

/// The executor's one spare, once it is one of `mem` MB. (A claimed spare keeps its label,
/// as Docker cannot change labels, but no longer counts in `meca_containers{state="spare"}`.)
fn wait_spare_of(ex: &Executor, mem: u64) -> String {
    let mut spare = String::new();
    wait_until(ex, &format!("a spare of {mem} MB"), || {
        if metric(ex, "meca_containers{state=\"spare\"}") != 1.0 {
            return false;
        }
        let spares: Vec<String> = ex
            .containers()
            .into_iter()
            .filter(|id| {
                // A container removed since the listing is no spare.
                let format =
                    "{{index .Config.Labels \"org.mecanywhere.role\"}} {{.HostConfig.Memory}}";
                let out = std::process::Command::new("docker")
                    .args(["inspect", "-f", format, id])
                    .output()
                    .expect("docker CLI runs");
                String::from_utf8_lossy(&out.stdout).trim() == format!("spare {}", mem << 20)
            })
            .collect();
        match spares.as_slice() {
            [one] => {
                spare = one.clone();
                true
            }
            _ => false,
        }
    });
    spare
}

#[test]
fn a_spare_never_shows_a_task_more_than_its_keys_limits() {
    let ex = Executor::start("spare", "spare_containers: 2\ncpu: 2\nmem: 2048");
    let reply = ex.execute(&sized(0.25, 128));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(sized_limits(&reply), ((0.25, 128.0), (0.25, 128.0)));
    // A spare of the image is started in the background, at the limits of the key that ran.
    let spare = wait_spare_of(&ex, 128);

    // A larger key of the image takes the spare: it is grown, and its task, which read the
    // spare's smaller limits at start, fills 85% of them without harm.
    let reply = ex.execute(&sized(0.5, 256));
    assert!(reply.success(), "{reply:?}\nlog:\n{}", ex.log());
    assert_eq!(metric(&ex, "meca_spares_claimed_total"), 1.0);
    let (at_start, now) = sized_limits(&reply);
    assert_eq!(at_start, (0.25, 128.0), "the task started as the spare");
    assert_eq!(
        now,
        (0.5, 256.0),
        "while it runs its cgroup holds its key's limits"
    );
    assert_eq!(
        inspect(&spare, "{{.HostConfig.Memory}}"),
        (256u64 << 20).to_string()
    );
    assert_eq!(
        inspect(&spare, "{{.HostConfig.MemorySwap}}"),
        (256u64 << 20).to_string(),
        "no swap beyond the memory limit"
    );
    assert_eq!(inspect(&spare, "{{.HostConfig.NanoCpus}}"), "500000000");

    // The next spare is at the smallest limits of the image's recent keys.
    let spare = wait_spare_of(&ex, 128);

    // A smaller key never takes a larger spare: it starts afresh and reads its own limits,
    // and the spare above it is replaced by one at the new floor.
    let reply = ex.execute(&sized(0.125, 64));
    assert!(reply.success(), "{reply:?}\nlog:\n{}", ex.log());
    assert_eq!(sized_limits(&reply), ((0.125, 64.0), (0.125, 64.0)));
    assert_eq!(metric(&ex, "meca_spares_claimed_total"), 1.0);
    let smaller = wait_spare_of(&ex, 64);
    assert_ne!(smaller, spare);
    assert_eq!(inspect(&smaller, "{{.HostConfig.NanoCpus}}"), "125000000");

    // A key above the floor in both CPU and memory takes it.
    let reply = ex.execute(&sized(0.25, 192));
    assert!(reply.success(), "{reply:?}\nlog:\n{}", ex.log());
    assert_eq!(metric(&ex, "meca_spares_claimed_total"), 2.0);
    assert_eq!(sized_limits(&reply), ((0.125, 64.0), (0.25, 192.0)));
}

/// `/stats` counts the containers that serve task keys; the executor's own stock (spares,
/// free sandbox holders) is reported apart.
#[test]
fn stats_count_tasks_and_report_the_executors_stock_apart() {
    let ex = Executor::start(
        "stats",
        "spare_containers: 1\nsandbox_pool: 1\ncpu: 2\nmem: 2048",
    );
    // The seed's default limits: 1 CPU, 128 MB.
    let reply = ex.execute(&json!({"id": LIMITS, "input": ""}));
    assert!(reply.success(), "{reply:?}");
    wait_spare_of(&ex, 128);
    wait_until(&ex, "a free sandbox", || {
        metric(&ex, "meca_sandboxes{state=\"free\"}") >= 1.0
    });
    let stats: Value = serde_json::from_str(&ex.get("/stats").raw).expect("stats JSON");
    assert_eq!(stats["task_used_cpu"], 50.0, "{stats}");
    assert_eq!(stats["task_used_mem"], 6.25, "{stats}");
    assert_eq!(stats["containers"], 1, "{stats}");
    assert_eq!(stats["spare_containers"], 1, "{stats}");
    assert_eq!(stats["spare_used_cpu"], 50.0, "{stats}");
    assert_eq!(stats["spare_used_mem"], 6.25, "{stats}");
    assert!(stats["free_sandboxes"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(metric(&ex, "meca_budget_memory_mb{kind=\"tasks\"}"), 128.0);
    assert_eq!(metric(&ex, "meca_budget_memory_mb{kind=\"spares\"}"), 128.0);
    assert_eq!(
        metric(&ex, "meca_budget_memory_mb{kind=\"reserved\"}"),
        256.0
    );

    // The stock gives way: a key of another image that needs the spare's room evicts it.
    let reply =
        ex.execute(&json!({"id": ECHO, "resource": {"cpu": 1, "mem": 1900}, "input": "room"}));
    assert!(reply.success(), "{reply:?}\nlog:\n{}", ex.log());
    let stats: Value = serde_json::from_str(&ex.get("/stats").raw).expect("stats JSON");
    assert_eq!(stats["spare_containers"], 0, "{stats}");
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
