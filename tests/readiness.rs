//! When a task counts as ready, against the real Docker daemon: tasks that print the ready
//! line with buffered stdio (as CPython and C do), print it before they listen (as Flask apps
//! do), or listen before they print it; real CPython tasks built from Debian packages; and
//! what the task keeps of its own (environment, readable logs).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

fn run(image: &str, input: &str) -> serde_json::Value {
    json!({"id": image, "input": input})
}

/// Panics with a hint when an image built by scripts/build-python-task-images.sh is missing.
fn require_python_image(image: &str) {
    let present = Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .expect("docker CLI runs")
        .status
        .success();
    assert!(
        present,
        "test image {image} is missing: run scripts/build-python-task-images.sh (scripts/test.sh does)"
    );
}

/// `docker logs` of the executor's only container.
fn logs_of_only_container(ex: &Executor) -> String {
    let ids = ex.containers();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let out = Command::new("docker")
        .args(["logs", &ids[0]])
        .output()
        .expect("docker CLI runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn task_whose_ready_line_sits_in_a_stdio_buffer_starts_and_answers() {
    let ex = Executor::start("buffered", "start_timeout: \"20s\"");
    let reply = ex.execute(&run("meca-test-buffered:latest", "{\"n\": 1}"));
    assert!(reply.success(), "{reply:?}\nlog:\n{}", ex.log());
    assert_eq!(reply.msg(), "{\"n\": 1}");
    // The container's log still reads as lines of text.
    let logs = logs_of_only_container(&ex);
    assert!(
        logs.lines().any(|l| l.trim_end() == "meca-init-done")
            && logs.lines().any(|l| l.trim_end() == "starting"),
        "logs: {logs:?}"
    );
}

#[test]
fn without_a_terminal_the_buffered_ready_line_never_arrives() {
    // The switch off gives the Go executor's behaviour, which shows the test task buffers.
    let ex = Executor::start("buffered-pipe", "start_timeout: \"3s\"\ntask_tty: false");
    let reply = ex.execute(&run("meca-test-buffered:latest", "x"));
    assert_failed(&reply);
    assert!(
        reply
            .msg()
            .contains("did not print meca-init-done within 3s"),
        "{reply:?}"
    );
    assert_no_container(&ex, Duration::from_secs(10));
}

#[test]
fn task_that_prints_the_ready_line_before_it_listens_is_called_once_it_listens() {
    let ex = Executor::start("mark-first", "");
    let reply = ex.execute(&run("meca-test-mark-first:latest", "early bird"));
    assert!(reply.success(), "{reply:?}\nlog:\n{}", ex.log());
    assert_eq!(reply.msg(), "early bird");
}

#[test]
fn task_that_never_listens_after_its_ready_line_fails_clearly() {
    let ex = Executor::start("mark-no-listen", "start_timeout: \"3s\"");
    let reply = ex.execute(&run("meca-test-mark-no-listen:latest", "x"));
    assert_failed(&reply);
    assert!(
        reply
            .msg()
            .contains("printed meca-init-done but did not listen on port 8080 within 3s"),
        "{reply:?}"
    );
    assert_no_container(&ex, Duration::from_secs(10));
}

#[test]
fn task_that_listens_before_its_ready_line_is_not_called_early() {
    // It answers 503 "not ready yet" until it prints the line, 2 s after it listens.
    let ex = Executor::start("listen-first", "");
    let reply = ex.execute(&run("meca-test-listen-first:latest", "patience"));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "patience");
}

#[test]
fn the_task_environment_wins_over_what_the_executor_adds() {
    // The image sets TERM=vt100 (Docker sets TERM=xterm for a terminal) and an empty
    // PYTHONUNBUFFERED.
    let ex = Executor::start("task-env", "");
    let reply = ex.execute(&run("meca-test-env:latest", "TERM"));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "vt100");
    let reply = ex.execute(&run("meca-test-env:latest", "PYTHONUNBUFFERED"));
    assert_eq!(reply.msg(), "", "{reply:?}");
}

#[test]
fn flask_task_written_like_mecanywhere_examples_starts_unchanged() {
    // Real CPython and Flask from Debian packages; the app prints the ready line with a plain
    // print() while its module loads, before `flask run` listens.
    let image = "meca-test-flask-template:latest";
    require_python_image(image);
    let ex = Executor::start("flask-template", "");
    let input = r#"{"json": "example input for the task"}"#;
    let reply = ex.execute(&run(image, input));
    assert!(reply.success(), "{reply:?}\nlog:\n{}", ex.log());
    assert_eq!(reply.msg(), input);
    // What the app prints per request reaches the container's log at once, as lines.
    let logs = logs_of_only_container(&ex);
    assert!(
        logs.lines()
            .any(|l| l.trim_end() == "Input: {'json': 'example input for the task'}"),
        "logs: {logs:?}"
    );
    ex.post("/pause", "");
    assert_no_container(&ex, Duration::from_secs(10));
}

#[test]
fn the_readme_example_task_answers() {
    let image = "meca-example-python:latest";
    require_python_image(image);
    let ex = Executor::start("readme-example", "");
    let reply = ex.execute(&run(image, r#"{"name": "sbip"}"#));
    assert!(reply.success(), "{reply:?}\nlog:\n{}", ex.log());
    assert_eq!(reply.msg(), r#"{"greeting": "hello, sbip"}"#);
    let reply = ex.execute(&run(image, "not json"));
    assert!(reply.msg().contains("task answered HTTP 400"), "{reply:?}");
}

/// The executor's peak resident memory so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("executor status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// The same 64 MiB before the ready mark, with the task's log file rotated every 100 KB (an
/// owner's small `log_max_size`): the mark is still seen, on a terminal and on a pipe. Docker
/// 20.10's followed log stream ends or stalls when the file rotates under it; the executor
/// reads a starting task's output from its attached stream, which no rotation touches.
#[test]
fn a_task_that_prints_much_before_ready_is_seen_ready_however_often_its_log_rotates() {
    for tty in [true, false] {
        let ex = Executor::start(
            "chatty-rotated",
            &format!(
                "start_timeout: \"30s\"\ntask_tty: {tty}\nspare_containers: 0\nlog_max_size: \"100k\"\n"
            ),
        );
        let reply = ex.execute(&run("meca-test-chatty:latest", "{\"n\": 3}"));
        assert!(reply.success(), "tty {tty}: {reply:?}\nlog:\n{}", ex.log());
        assert_eq!(reply.msg(), "{\"n\": 3}");
    }
}

/// A task that writes one 64 MiB line before its ready mark (a progress bar redrawn with `\r`
/// and no newline, as tqdm does while a model downloads), on a terminal and on a pipe: the
/// mark behind the `\r` is found well within the start timeout, and the executor's memory
/// does not grow by the line.
#[test]
fn a_chatty_start_costs_bounded_memory_and_is_seen_ready() {
    for tty in [true, false] {
        let ex = Executor::start(
            "chatty",
            &format!("start_timeout: \"30s\"\ntask_tty: {tty}\nspare_containers: 0\n"),
        );
        let before = peak_rss_kib(ex.pid());
        let reply = ex.execute(&run("meca-test-chatty:latest", "{\"n\": 2}"));
        assert!(reply.success(), "tty {tty}: {reply:?}\nlog:\n{}", ex.log());
        assert_eq!(reply.msg(), "{\"n\": 2}");
        let grown_mib = peak_rss_kib(ex.pid()).saturating_sub(before) / 1024;
        assert!(
            grown_mib < 24,
            "tty {tty}: the executor's peak RSS grew by {grown_mib} MiB over a 64 MiB line"
        );
    }
}
