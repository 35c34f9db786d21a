//! The real MECAnywhere callers, replayed byte for byte against the real binary and Docker:
//! the desktop app (Electron `fetch`, `src/renderer/services/ExecutorServices.tsx`) through
//! start-up, enable sharing, activate, Run Test and exit; and the pymeca host's task relay
//! (`requests.post(url, json=...)`), whose raw answer is hashed and forwarded to the user.
//!
//! Each request is written on the wire as those clients write it: their headers, their
//! JSON spacing, `content-type: application/json` also on GETs and bodiless POSTs.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The task that answers the cgroup limits it runs under: `{"cpu": cores, "mem_mb": MB}`.
const LIMITS: &str = "meca-test-limits:latest";

/// An answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {self:?}"))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> BTreeSet<String> {
        self.json()
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect()
    }
}

/// One keep-alive connection, as a browser or `requests` holds it.
struct Wire {
    reader: BufReader<TcpStream>,
}

impl Wire {
    fn open(port: u16) -> Wire {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("executor listens");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        Wire {
            reader: BufReader::new(stream),
        }
    }

    /// Writes `head` (request line and headers, without the blank line) and `body` with
    /// `Content-Length` as the client computes it (none without a body), and reads the answer.
    fn send(&mut self, head: &str, body: Option<&[u8]>) -> Answer {
        let length = body.map_or(String::new(), |b| {
            format!("\r\nContent-Length: {}", b.len())
        });
        let stream = self.reader.get_mut();
        stream
            .write_all(format!("{head}{length}\r\n\r\n").as_bytes())
            .unwrap();
        stream.write_all(body.unwrap_or_default()).unwrap();
        read_answer(&mut self.reader)
    }
}

/// The desktop app: Electron's renderer `fetch` to http://localhost:2591 (web security off,
/// so no CORS preflight), every call with `content-type: application/json`.
struct Desktop {
    wire: Wire,
    port: u16,
}

impl Desktop {
    fn connect(ex: &Executor) -> Desktop {
        Desktop {
            wire: Wire::open(ex.port),
            port: ex.port,
        }
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let head = format!(
            "{method} {path} HTTP/1.1\r\n\
             Host: localhost:{port}\r\n\
             Connection: keep-alive\r\n\
             sec-ch-ua: \"Not_A Brand\";v=\"8\", \"Chromium\";v=\"120\"\r\n\
             content-type: application/json\r\n\
             sec-ch-ua-mobile: ?0\r\n\
             User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             mecanywhere-desktop/1.0.0 Chrome/120.0.6099.291 Electron/28.3.3 Safari/537.36\r\n\
             sec-ch-ua-platform: \"Linux\"\r\n\
             Accept: */*\r\n\
             Origin: http://localhost:1212\r\n\
             Sec-Fetch-Site: same-site\r\n\
             Sec-Fetch-Mode: cors\r\n\
             Sec-Fetch-Dest: empty\r\n\
             Referer: http://localhost:1212/\r\n\
             Accept-Encoding: gzip, deflate, br\r\n\
             Accept-Language: en-US",
            port = self.port
        );
        // JSON.stringify: no spaces. A GET carries no body, so no Content-Length; a bodiless
        // POST sends `Content-Length: 0`.
        if method == "GET" {
            return self.wire.send(&head, None);
        }
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        self.wire.send(&head, Some(&body))
    }

    /// `executeTask` of the desktop's Run Test, with what TaskCard.tsx passes.
    fn run_test(
        &mut self,
        image: &str,
        input: &str,
        resource: Value,
        gpu: bool,
        sgx: bool,
    ) -> Answer {
        let content = json!({
            "id": image,
            "input": input,
            "resource": resource,
            "useGpu": gpu,
            "gpuCount": 1,
            "useSgx": sgx,
        });
        self.call("POST", "/", Some(&content))
    }
}

fn read_answer(reader: &mut BufReader<TcpStream>) -> Answer {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header line");
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("the executor sends Content-Length");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// The pymeca host's relay: `requests.post(task_executor_url, json=message_dict)` (a new
/// session, so a new connection, per task; Python's `json.dumps` spacing).
fn pymeca_post(port: u16, message: &Value) -> Answer {
    let body = python_json(message);
    let head = format!(
        "POST / HTTP/1.1\r\n\
         Host: localhost:{port}\r\n\
         User-Agent: python-requests/2.31.0\r\n\
         Accept-Encoding: gzip, deflate\r\n\
         Accept: */*\r\n\
         Connection: keep-alive\r\n\
         Content-Type: application/json"
    );
    Wire::open(port).send(&head, Some(body.as_bytes()))
}

/// `json.dumps(value)`: `", "` and `": "` separators, keys in insertion order (here the
/// order pymeca builds the dict in: id, input, resource).
fn python_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            let rank = |k: &str| {
                ["id", "input", "use_sgx", "resource"]
                    .iter()
                    .position(|x| *x == k)
            };
            keys.sort_by_key(|k| (rank(k).unwrap_or(usize::MAX), (*k).clone()));
            let items: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}: {}", Value::from(k.as_str()), python_json(&map[k])))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_json).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// The limits a `meca-test-limits` task reported in `msg`.
fn limits(answer: &Answer) -> (f64, f64) {
    let outer = answer.json();
    assert_eq!(outer["success"], json!(true), "{outer}");
    let inner: Value = serde_json::from_str(outer["msg"].as_str().unwrap()).unwrap();
    (
        inner["cpu"].as_f64().unwrap(),
        inner["mem_mb"].as_f64().unwrap(),
    )
}

#[test]
fn desktop_start_up_unpause_stats_pause() {
    let ex = Executor::start("desktop-start", "");
    let mut app = Desktop::connect(&ex);
    let unpaused = app.call("POST", "/unpause", None);
    assert!(unpaused.ok(), "{unpaused:?}");
    let stats = app.call("GET", "/stats", None);
    assert!(stats.ok(), "{stats:?}");
    let s = stats.json();
    for key in ["total_cpu", "total_mem", "task_gpu"] {
        assert!(s[key].is_u64(), "{key} is not a whole number: {s}");
    }
    assert!(s["gpu_model"].is_string(), "{s}");
    let paused = app.call("POST", "/pause", None);
    assert!(paused.ok(), "{paused:?}");
    assert_eq!(paused.header("content-type"), Some("application/json"));
}

#[test]
fn desktop_enable_sharing_updates_the_budget_and_refuses_zero_cores() {
    let ex = Executor::start("desktop-sharing", "");
    let mut app = Desktop::connect(&ex);
    assert!(app.call("POST", "/pause", None).ok());
    let total_cpu = {
        app.call("POST", "/unpause", None);
        let s = app.call("GET", "/stats", None).json();
        app.call("POST", "/pause", None);
        s["total_cpu"].as_f64().unwrap()
    };
    for (cpu, mem) in [(1, 2048), (2, 3072), (4, 4096)] {
        let answer = app.call(
            "POST",
            "/update-config",
            Some(&json!({"cpu": cpu, "mem": mem})),
        );
        assert!(answer.ok(), "{answer:?}");
        assert_eq!(answer.json()["success"], json!(true), "{answer:?}");
        assert!(app.call("POST", "/unpause", None).ok());
        let s = app.call("GET", "/stats", None).json();
        assert_eq!(
            s["task_cpu"].as_f64(),
            Some(f64::from(cpu).min(total_cpu)),
            "{s}"
        );
        assert_eq!(s["task_mem"], json!(mem), "{s}");
        assert!(app.call("POST", "/pause", None).ok());
    }
    // The custom setting goes down to 0 cores: refused, non-2xx, and nothing changes.
    let zero = app.call(
        "POST",
        "/update-config",
        Some(&json!({"cpu": 0, "mem": 1024})),
    );
    assert!(!zero.ok(), "cpu 0 was accepted: {zero:?}");
    assert_eq!(zero.json()["success"], json!(false));
    assert!(app.call("POST", "/unpause", None).ok());
    let s = app.call("GET", "/stats", None).json();
    assert_eq!(s["task_mem"], json!(4096), "{s}");
}

#[test]
fn desktop_activate_polls_stats_whose_keys_stay_the_same() {
    let ex = Executor::start("desktop-activate", "");
    let mut app = Desktop::connect(&ex);
    assert!(app.call("POST", "/unpause", None).ok());
    let first = app.call("GET", "/stats", None);
    let keys = first.keys();
    for (second, input) in ["one", "two", "three"].into_iter().enumerate() {
        // Tasks run between the polls; the answer's shape must not change with them.
        let ran = app.run_test(
            ECHO,
            input,
            json!({"task_cpu": 1, "task_mem": 64}),
            false,
            false,
        );
        assert_eq!(ran.json()["msg"], json!(input), "{ran:?}");
        std::thread::sleep(Duration::from_millis(if second == 0 { 0 } else { 1000 }));
        let stats = app.call("GET", "/stats", None);
        assert!(stats.ok());
        assert_eq!(
            stats.keys(),
            keys,
            "the key set of /stats changed while running"
        );
    }
    // The paused answer has another key count: that is how the desktop hides it.
    assert!(app.call("POST", "/pause", None).ok());
    let paused = app.call("GET", "/stats", None);
    assert_ne!(paused.keys().len(), keys.len(), "{paused:?}");
}

#[test]
fn desktop_run_test_applies_task_cpu_and_task_mem() {
    let ex = Executor::start("desktop-run-test", "");
    let mut app = Desktop::connect(&ex);
    assert!(app.call("POST", "/unpause", None).ok());
    let answer = app.run_test(
        LIMITS,
        "{}",
        json!({"task_cpu": 1, "task_mem": 96}),
        false,
        false,
    );
    assert!(answer.ok(), "{answer:?}");
    assert_eq!(
        limits(&answer),
        (1.0, 96.0),
        "the task does not run with the limits asked for"
    );
    // A config.json that says `memory` leaves task_mem undefined, which JSON.stringify drops.
    let answer = app.run_test(LIMITS, "{}", json!({"task_cpu": 1}), false, false);
    assert_eq!(limits(&answer), (1.0, 128.0));
    // Compared with the example output after trim(), as the desktop does.
    let answer = app.run_test(
        ECHO,
        "{\"json\": \"example\"}\n",
        json!({"task_cpu": 1, "task_mem": 128}),
        false,
        false,
    );
    assert_eq!(
        answer.json()["msg"].as_str().unwrap().trim(),
        "{\"json\": \"example\"}"
    );
    assert!(app.call("POST", "/pause", None).ok());
}

#[test]
fn desktop_run_test_of_a_gpu_task_on_a_host_without_gpus_is_refused_before_any_container() {
    let ex = Executor::start("desktop-gpu", "");
    let mut app = Desktop::connect(&ex);
    assert!(app.call("POST", "/unpause", None).ok());
    let answer = app.run_test(
        ECHO,
        "{}",
        json!({"task_cpu": 1, "task_mem": 128}),
        true,
        false,
    );
    // A task failure is HTTP 200 with success false: the desktop drops msg on non-2xx.
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = answer.json();
    assert_eq!(body["success"], json!(false), "{body}");
    assert!(body["msg"].as_str().unwrap().contains("GPU"), "{body}");
    assert!(ex.containers().is_empty(), "a container was started");
    assert_eq!(containers_created(&mut app), 0, "a container was created");
    // The same Run Test without the GPU flag does create one: the count above is live.
    let answer = app.run_test(
        ECHO,
        "{}",
        json!({"task_cpu": 1, "task_mem": 128}),
        false,
        false,
    );
    assert_eq!(answer.json()["success"], json!(true), "{answer:?}");
    assert_eq!(containers_created(&mut app), 1);
}

/// How many task containers the executor has created (its cold-start `create` phases).
fn containers_created(app: &mut Desktop) -> u64 {
    let metrics = app.call("GET", "/metrics", None);
    mecanywhere_executor::metrics_text::value(
        &String::from_utf8(metrics.body).unwrap(),
        "meca_cold_start_phase_seconds_count{phase=\"create\"}",
    ) as u64
}

#[test]
fn desktop_run_test_of_a_crashing_task_is_a_200_failure() {
    let ex = Executor::start("desktop-crash", "");
    let mut app = Desktop::connect(&ex);
    assert!(app.call("POST", "/unpause", None).ok());
    let answer = app.run_test(
        "meca-test-crash:latest",
        "{}",
        json!({"task_cpu": 1, "task_mem": 64}),
        false,
        false,
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["success"], json!(false), "{answer:?}");
    assert!(
        answer.json()["msg"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{answer:?}"
    );
}

#[test]
fn desktop_exit_pauses_twice_then_stop_answers_json_before_exiting() {
    let mut ex = Executor::start("desktop-exit", "");
    {
        let mut app = Desktop::connect(&ex);
        assert!(app.call("POST", "/unpause", None).ok());
        let ran = app.run_test(
            ECHO,
            "x",
            json!({"task_cpu": 1, "task_mem": 64}),
            false,
            false,
        );
        assert_eq!(ran.json()["success"], json!(true));
        assert!(app.call("POST", "/pause", None).ok());
        assert!(app.call("POST", "/pause", None).ok());
        let stopped = app.call("POST", "/stop", None);
        assert!(stopped.ok(), "{stopped:?}");
        assert_eq!(
            stopped.json()["success"],
            json!(true),
            "response.json() of /stop"
        );
    }
    let status = ex
        .wait_exit(Duration::from_secs(60))
        .expect("executor exits after /stop");
    assert!(status.success(), "{status}");
    assert!(ex.containers().is_empty());
}

#[test]
fn pymeca_host_relays_config_json_as_resource_and_gets_a_stable_raw_answer() {
    let ex = Executor::start("pymeca", "");
    // knn's config.json: 2 cores, 1024 MB (this host's budget holds them).
    let message = json!({
        "id": LIMITS,
        "input": "{\"k\": 3}",
        "resource": {"resource": {"cpu": 2, "mem": 1024}},
    });
    let first = pymeca_post(ex.port, &message);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        limits(&first),
        (2.0, 1024.0),
        "the nested limits were not applied"
    );
    // The raw body is what gets hashed on chain: exactly the contract's shape, uncompressed
    // whatever Accept-Encoding said, and the same bytes for the same answer.
    let msg = first.json()["msg"].as_str().unwrap().to_string();
    let expected = format!("{{\"success\":true,\"msg\":{}}}", Value::from(msg.as_str()));
    assert_eq!(String::from_utf8(first.body.clone()).unwrap(), expected);
    assert_eq!(first.header("content-encoding"), None);
    let second = pymeca_post(ex.port, &message);
    assert_eq!(
        second.body, first.body,
        "the same answer hashed differently"
    );
}

#[test]
fn pymeca_host_with_mecanywhere_example_configs() {
    let ex = Executor::start("pymeca-configs", "");
    // python-template {cpu 1, mem 128}: runs with exactly those limits.
    let answer = pymeca_post(
        ex.port,
        &json!({"id": LIMITS, "input": "{}", "resource": {"resource": {"cpu": 1, "mem": 128}}}),
    );
    assert_eq!(limits(&answer), (1.0, 128.0));
    // stablediffusion {cpu 16, mem 32000}: more than this executor may ever hand out; a
    // clear 200 failure naming the limit, not a run with 1 core and 128 MB.
    let answer = pymeca_post(
        ex.port,
        &json!({"id": LIMITS, "input": "{}", "resource": {"resource": {"cpu": 16, "mem": 32000}}}),
    );
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["success"], json!(false), "{body}");
    assert!(
        body["msg"]
            .as_str()
            .unwrap()
            .contains("exceeds the maximum"),
        "{body}"
    );
    // sgx-task's config: `memory`, and use_sgx inside; this executor has no SGX.
    let answer = pymeca_post(
        ex.port,
        &json!({"id": LIMITS, "input": "SGXRAREQUEST", "use_sgx": true, "resource": {"resource": {
            "cpu": 1, "memory": 128, "use_gpu": false, "gpu_count": 0, "use_sgx": true}}}),
    );
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["success"], json!(false), "{body}");
    assert!(body["msg"].as_str().unwrap().contains("SGX"), "{body}");
    // Two spellings that disagree: 400 naming both.
    let answer = pymeca_post(
        ex.port,
        &json!({"id": LIMITS, "input": "{}", "resource": {"cpu": 1, "resource": {"cpu": 2}}}),
    );
    assert_eq!(answer.status, 400, "{answer:?}");
    let msg = answer.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("resource.cpu") && msg.contains("resource.resource.cpu"),
        "{msg}"
    );
    assert!(ex.containers().len() <= 1, "{:?}", ex.containers());
}
