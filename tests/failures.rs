//! How the executor answers tasks that fail, against the real Docker daemon: every failure
//! is answered with HTTP 200, `success: false` and a message that says what went wrong, no
//! broken container is left behind, and the executor keeps serving other tasks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const MISSING_IMAGE: &str = "127.0.0.1:9/nothing:v1";

/// The executor still runs an ordinary task.
fn assert_echo_works(ex: &Executor) {
    let reply = ex.execute(&json!({"id": ECHO, "input": "still alive"}));
    assert!(reply.success(), "echo after a failure: {reply:?}");
    assert_eq!(reply.msg(), "still alive");
}

fn run(image: &str) -> serde_json::Value {
    json!({"id": image, "input": "{\"x\": 1}"})
}

#[test]
fn missing_image_is_named_in_the_error() {
    let ex = Executor::start("missing-image", "");
    let reply = ex.execute(&run(MISSING_IMAGE));
    assert_failed(&reply);
    assert!(
        reply.msg().contains(MISSING_IMAGE),
        "message does not name the image: {reply:?}"
    );
    assert_no_container(&ex, Duration::from_secs(5));
    assert_echo_works(&ex);
}

#[test]
fn task_that_never_prints_ready_times_out() {
    let ex = Executor::start("never-ready", "start_timeout: \"2s\"");
    let started = Instant::now();
    let reply = ex.execute(&run("meca-test-never-ready:latest"));
    let took = started.elapsed();
    assert_failed(&reply);
    let msg = reply.msg();
    assert!(
        msg.contains("meca-init-done") && msg.contains("2s"),
        "message should say the task did not print meca-init-done within 2s: {reply:?}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "the start timeout of 2s was not applied (answered after {took:?})"
    );
    assert_no_container(&ex, Duration::from_secs(10));
    assert_echo_works(&ex);
}

#[test]
fn task_that_exits_at_start_reports_code_and_stderr() {
    let ex = Executor::start("exit-at-start", "");
    let reply = ex.execute(&run("meca-test-exit-at-start:latest"));
    assert_failed(&reply);
    let msg = reply.msg();
    assert!(msg.contains("code 2"), "exit code missing: {reply:?}");
    assert!(
        msg.contains("boom"),
        "the task's stderr is missing: {reply:?}"
    );
    assert_no_container(&ex, Duration::from_secs(10));
    assert_echo_works(&ex);
}

#[test]
fn task_that_crashes_mid_request_is_removed_and_restarted() {
    let ex = Executor::start("crash", "");
    for attempt in 1..=2 {
        let reply = ex.execute(&run("meca-test-crash:latest"));
        assert_failed(&reply);
        let msg = reply.msg();
        // Each attempt must meet a fresh container that crashes with code 3, not a stale
        // connection to (or a pooled entry of) the container that died before.
        assert!(
            msg.contains("code 3"),
            "attempt {attempt}: exit code 3 missing: {reply:?}"
        );
        assert!(
            !msg.contains("could not reach"),
            "attempt {attempt}: stale connection instead of the crash: {reply:?}"
        );
        assert_no_container(&ex, Duration::from_secs(10));
    }
    assert_echo_works(&ex);
}

#[test]
fn task_that_hangs_times_out_and_its_container_is_not_reused() {
    let ex = Executor::start("hang", "request_timeout: \"2s\"");
    let started = Instant::now();
    let reply = ex.execute(&run("meca-test-hang:latest"));
    let took = started.elapsed();
    assert_failed(&reply);
    let msg = reply.msg();
    assert!(
        msg.contains("timed out after 2s"),
        "message should say the task timed out after 2s: {reply:?}"
    );
    assert!(
        msg.contains("removed"),
        "message should say the container was removed: {reply:?}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "the request timeout of 2s was not applied (answered after {took:?})"
    );
    assert_no_container(&ex, Duration::from_secs(10));
    assert_echo_works(&ex);
}

#[test]
fn task_answering_http_500_reports_status_and_body() {
    let ex = Executor::start("bad-status", "");
    let reply = ex.execute(&run("meca-test-bad-status:latest"));
    assert_failed(&reply);
    let msg = reply.msg();
    assert!(msg.contains("500"), "status missing: {reply:?}");
    assert!(
        msg.contains("task failed on purpose"),
        "the task's answer is missing: {reply:?}"
    );
    // The task answered, so its container is healthy: it stays warm and serves the next
    // request (which fails the same way) instead of being replaced.
    let warm = ex.containers();
    assert_eq!(warm.len(), 1, "{warm:?}");
    let again = ex.execute(&run("meca-test-bad-status:latest"));
    assert_failed(&again);
    assert!(again.msg().contains("task failed on purpose"), "{again:?}");
    assert_eq!(ex.containers(), warm, "the healthy container was replaced");
    assert_echo_works(&ex);
    let mut ex = ex;
    assert!(ex.stop().success());
    assert_no_container(&ex, Duration::ZERO);
}

#[test]
fn task_answering_garbage_is_a_clear_error_and_is_removed() {
    let ex = Executor::start("garbage", "");
    let reply = ex.execute(&run("meca-test-garbage:latest"));
    assert_failed(&reply);
    let msg = reply.msg();
    assert!(
        msg.contains("task") && msg.to_ascii_lowercase().contains("http"),
        "message should say the task's answer was not HTTP: {reply:?}"
    );
    assert!(
        msg.contains("removed"),
        "message should say the container was removed: {reply:?}"
    );
    assert!(
        !msg.contains("this is not http"),
        "garbage passed off as the answer: {reply:?}"
    );
    assert_no_container(&ex, Duration::from_secs(10));
    assert_echo_works(&ex);
}

#[test]
fn slow_starting_task_is_waited_for() {
    let ex = Executor::start("slow-start", "");
    let started = Instant::now();
    let reply = ex.execute(&json!({"id": "meca-test-slow-start:latest", "input": "late"}));
    let took = started.elapsed();
    assert!(reply.success(), "slow start failed: {reply:?}");
    assert_eq!(reply.msg(), "late");
    assert!(
        took >= Duration::from_millis(2500),
        "answered after {took:?}: the 3 s start was not waited for"
    );
    assert_eq!(ex.containers().len(), 1);
}

#[test]
fn task_answering_bytes_that_are_not_text_is_a_clear_error() {
    let ex = Executor::start("binary", "");
    let reply = ex.execute(&json!({"id": "meca-test-binary:latest", "input": "x"}));
    assert_failed(&reply);
    assert!(reply.msg().contains("not valid UTF-8"), "{}", reply.msg());
    let metrics = ex.get("/metrics").raw;
    assert_eq!(
        mecanywhere_executor::metrics_text::value(
            &metrics,
            "meca_requests_total{outcome=\"bad_answer\"}"
        ),
        1.0,
        "counted as a bad answer, not a success: {metrics}"
    );
}
