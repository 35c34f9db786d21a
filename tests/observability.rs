//! `/metrics`, logs an operator can ship, and prewarming, end to end against the real Docker
//! daemon.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
// `sample(text, name)`: the value of the sample `name` (with its labels, exactly as
// exposed) in a scrape, 0 when absent.
use mecanywhere_executor::metrics_text::value as sample;
use serde_json::json;

fn scrape(ex: &Executor) -> String {
    let reply = ex.get("/metrics");
    assert_eq!(reply.status, 200);
    reply.raw
}

#[test]
fn metrics_count_requests_latency_containers_and_budget() {
    let ex = Executor::start("metrics", "cpu: 2\nmem: 1024\n");
    let before = scrape(&ex);
    assert!(before.contains("# TYPE meca_evictions counter"), "{before}");
    assert_eq!(
        sample(&before, "meca_budget_cpu_cores{kind=\"total\"}"),
        2.0
    );

    for _ in 0..3 {
        assert!(ex.execute(&json!({"id": ECHO, "input": "x"})).success());
    }
    assert!(!ex.post("/", "{nope").success());
    assert!(!ex
        .execute(&json!({"id": "127.0.0.1:9/nothing:v1"}))
        .success());

    let after = scrape(&ex);
    assert_eq!(
        sample(&after, "meca_requests_total{outcome=\"success\"}"),
        3.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "meca_requests_total{outcome=\"bad_request\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "meca_requests_total{outcome=\"start_failed\"}"),
        1.0
    );
    // The first echo request waited for a start; the next two found the container warm.
    assert_eq!(
        sample(&after, "meca_request_duration_seconds_count{path=\"warm\"}"),
        2.0
    );
    assert_eq!(
        sample(&after, "meca_request_duration_seconds_count{path=\"cold\"}"),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            "meca_cold_start_phase_seconds_count{phase=\"start\"}"
        ),
        1.0
    );
    assert_eq!(sample(&after, "meca_pulls_total{outcome=\"failure\"}"), 1.0);
    assert_eq!(sample(&after, "meca_containers{state=\"idle\"}"), 1.0);
    assert_eq!(
        sample(&after, "meca_budget_cpu_cores{kind=\"reserved\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "meca_budget_memory_mb{kind=\"reserved\"}"),
        128.0
    );
}

#[test]
fn evictions_are_counted() {
    let ex = Executor::start("metrics-evict", "cpu: 1\nmem: 1024\n");
    assert!(ex
        .execute(&json!({"id": ECHO, "resource": {"cpu": 1, "mem": 64}}))
        .success());
    assert!(ex
        .execute(&json!({"id": ECHO, "resource": {"cpu": 1, "mem": 96}}))
        .success());
    let text = scrape(&ex);
    assert_eq!(sample(&text, "meca_evictions_total"), 1.0, "{text}");
    assert_eq!(
        sample(&text, "meca_queue_wait_seconds_count"),
        2.0,
        "{text}"
    );
}

const PREWARM: &str = "prewarm:\n  - image: meca-echo:latest\n    cpu: 0.5\n    mem: 64\n";

#[test]
fn a_prewarmed_key_is_ready_before_the_first_request_and_not_reaped() {
    let ex = Executor::start("prewarm", &format!("idle_timeout: 1s\n{PREWARM}"));
    let ids = ex.wait_containers(1, Duration::from_secs(20));
    assert_eq!(
        ids.len(),
        1,
        "the prewarmed container starts without any request"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&scrape(&ex), "meca_containers{state=\"idle\"}") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "prewarmed container never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let reply =
        ex.execute(&json!({"id": ECHO, "resource": {"cpu": 0.5, "mem": 64}, "input": "hi"}));
    assert!(reply.success(), "{reply:?}");
    let text = scrape(&ex);
    assert_eq!(
        sample(&text, "meca_request_duration_seconds_count{path=\"warm\"}"),
        1.0,
        "the first request was served warm: {text}"
    );
    // Idle for well past the 1 s idle timeout: still there.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ex.containers(), ids);
}

#[test]
fn prewarmed_containers_are_evicted_first_and_come_back_when_room_frees() {
    // Budget 1 core: the prewarmed key (0.5) plus one other 0.5-core task fill it.
    let ex = Executor::start(
        "prewarm-evict",
        &format!("cpu: 1\nmem: 1024\nidle_timeout: 3s\n{PREWARM}"),
    );
    let prewarmed = ex.wait_containers(1, Duration::from_secs(20));
    assert_eq!(prewarmed.len(), 1);
    let a = json!({"id": ECHO, "resource": {"cpu": 0.5, "mem": 96}, "input": "a"});
    assert!(ex.execute(&a).success());
    // Use the prewarmed key after A, so plain LRU would pick A.
    assert!(ex
        .execute(&json!({"id": ECHO, "resource": {"cpu": 0.5, "mem": 64}, "input": "p"}))
        .success());
    let b = json!({"id": ECHO, "resource": {"cpu": 0.5, "mem": 128}, "input": "b"});
    assert!(ex.execute(&b).success());
    let ids = ex.containers();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        !ids.contains(&prewarmed[0]),
        "the prewarmed container was evicted first"
    );
    // A and B are reaped after 3 s idle; then the prewarmed key comes back by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // One `docker ps` call: containers may go away between a listing and an inspect.
        let filter = format!("label={LABEL}={}", ex.name);
        let memories: Vec<String> = docker(&[
            "ps",
            "-a",
            "--filter",
            &filter,
            "--format",
            "{{.Label \"org.mecanywhere.mem-mb\"}}",
        ])
        .lines()
        .map(str::to_string)
        .collect();
        if memories == ["64"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prewarmed key not restored: {memories:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sends a request with `headers` on a fresh connection; returns the answer's head.
fn answer_head(ex: &Executor, path: &str, body: &str, headers: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", ex.port)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split("\r\n\r\n").next().unwrap().to_lowercase()
}

/// Logged to a file (as to the journal under systemd), text logs are plain: no terminal
/// colour codes around the fields a host owner greps for.
#[test]
fn text_logs_to_a_file_are_plain_lines() {
    let ex = Executor::start("plain-log", "");
    assert!(ex.execute(&json!({"id": ECHO, "input": "x"})).success());
    let log = ex.log();
    assert!(log.contains("executor ready"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "terminal escape codes in a log file:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("task_network=isolated")),
        "fields read key=value: {log}"
    );
}

#[test]
fn json_logs_carry_the_request_id_in_every_line_about_the_request() {
    let ex = Executor::start("json-logs", "log_format: json");
    let body = json!({"id": "meca-test-crash:latest", "input": "secret-input-xyz"}).to_string();
    let head = answer_head(&ex, "/", &body, "X-Request-Id: req-abc-123\r\n");
    assert!(head.contains("x-request-id: req-abc-123"), "{head}");
    // Without one, the executor makes one up and says which.
    let head = answer_head(&ex, "/pause", "", "");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no request id: {head}"));
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );

    let log = ex.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about = |id: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["span"]["id"] == json!(id))
            .map(|l| l["fields"]["message"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let messages = about("req-abc-123");
    // The request, its cold start and its broken container, all under its id.
    for expected in [
        "execute",
        "task container ready",
        "discarding task container",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no {expected:?} line with the request id; lines with it: {messages:?}\n{log}"
        );
    }
    assert!(about(id).iter().any(|m| m == "paused"), "{log}");
    assert!(
        !log.contains("secret-input-xyz"),
        "task input was logged:\n{log}"
    );
}
