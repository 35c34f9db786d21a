//! The contract's endpoints, end to end against the real Docker daemon: the seed README's
//! requests, defaults, `/stats`, control endpoints, and bad input.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const SEED_INPUT: &str = "{\"name\": \"sbip\"}";

#[test]
fn health_answers_ok() {
    let ex = Executor::start("health", "");
    let reply = ex.get("/health");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, json!({"status": "ok"}));
}

#[test]
fn seed_requests_with_and_without_resource_share_one_container_with_default_limits() {
    let ex = Executor::start("seed", "");
    // The seed README's first curl: no resource → defaults 1 core, 128 MB.
    let reply = ex.execute(&json!({"id": ECHO, "input": SEED_INPUT}));
    assert_eq!(reply.status, 200);
    assert!(reply.success(), "{reply:?}");
    assert_eq!(
        reply.msg(),
        SEED_INPUT,
        "msg is the task's answer byte for byte"
    );
    // The seed's second curl names the same resources explicitly: same task key.
    let reply =
        ex.execute(&json!({"id": ECHO, "resource": {"cpu": 1, "mem": 128}, "input": SEED_INPUT}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), SEED_INPUT);
    let ids = ex.containers();
    assert_eq!(ids.len(), 1, "both requests share one warm container");
    assert_eq!(inspect(&ids[0], "{{.HostConfig.NanoCpus}}"), "1000000000");
    assert_eq!(
        inspect(&ids[0], "{{.HostConfig.Memory}}"),
        (128u64 << 20).to_string()
    );
    assert_eq!(
        inspect(&ids[0], "{{.HostConfig.MemorySwap}}"),
        (128u64 << 20).to_string(),
        "no swap past the limit"
    );
    assert_eq!(inspect(&ids[0], "{{.Config.Image}}"), ECHO);
}

#[test]
fn requested_limits_reach_the_container_fractional_cpu_included() {
    let ex = Executor::start("limits", "");
    let reply = ex.execute(&json!({"id": ECHO, "resource": {"cpu": 0.5, "mem": 64}, "input": "x"}));
    assert!(reply.success(), "{reply:?}");
    let ids = ex.containers();
    assert_eq!(ids.len(), 1);
    assert_eq!(inspect(&ids[0], "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(
        inspect(&ids[0], "{{.HostConfig.Memory}}"),
        (64u64 << 20).to_string()
    );
    let labels = inspect(&ids[0], "{{json .Config.Labels}}");
    assert!(labels.contains(&ex.name), "instance label: {labels}");
    assert!(labels.contains("org.mecanywhere.task-key"), "{labels}");
}

#[test]
fn input_comes_back_byte_for_byte() {
    let ex = Executor::start("bytes", "");
    let input: String = "héllo \"wörld\" \\ \u{1F600}\n\t"
        .chars()
        .cycle()
        .take(300_000)
        .collect();
    let reply = ex.execute(&json!({"id": ECHO, "input": input}));
    assert!(
        reply.success(),
        "{}",
        &reply.raw[..200.min(reply.raw.len())]
    );
    assert_eq!(reply.msg(), input);
    // Absent or null input is passed as an empty body.
    for request in [json!({"id": ECHO}), json!({"id": ECHO, "input": null})] {
        let reply = ex.execute(&request);
        assert!(reply.success(), "{request}: {reply:?}");
        assert_eq!(reply.msg(), "");
    }
}

#[test]
fn stats_reports_budget_and_reservations() {
    let ex = Executor::start("stats", "cpu: 2\nmem: 1024\n");
    let stats = ex.get("/stats").body;
    for key in [
        "total_cpu",
        "total_mem",
        "used_cpu",
        "used_mem",
        "task_cpu",
        "task_mem",
        "task_used_cpu",
        "task_used_mem",
        "gpu_model",
        "task_gpu",
        "task_used_gpu",
    ] {
        assert!(stats.get(key).is_some(), "/stats lacks {key}: {stats}");
    }
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(stats["total_cpu"].as_u64().unwrap(), cores);
    assert_eq!(
        stats["task_cpu"].as_u64().unwrap(),
        2.min(cores),
        "budget = min(config, host cores)"
    );
    assert_eq!(stats["task_mem"].as_u64().unwrap(), 1024);
    assert_eq!(stats["task_used_cpu"].as_f64().unwrap(), 0.0);
    assert_eq!(stats["task_used_gpu"].as_u64().unwrap(), 0);
    assert_eq!(stats["task_gpu"].as_u64().unwrap(), 0);

    let reply = ex.execute(&json!({"id": ECHO, "resource": {"cpu": 1, "mem": 256}, "input": "x"}));
    assert!(reply.success(), "{reply:?}");
    let stats = ex.get("/stats").body;
    let budget = 2.min(cores) as f64;
    assert!(
        (stats["task_used_cpu"].as_f64().unwrap() - 100.0 / budget).abs() < 0.01,
        "{stats}"
    );
    assert!(
        (stats["task_used_mem"].as_f64().unwrap() - 25.0).abs() < 0.01,
        "{stats}"
    );
}

#[test]
fn stats_caps_the_budget_at_the_host() {
    let ex = Executor::start("cap", "cpu: 512\nmem: 16000000\n");
    let stats = ex.get("/stats").body;
    assert_eq!(stats["task_cpu"], stats["total_cpu"], "{stats}");
    let total_mem = stats["total_mem"].as_u64().unwrap();
    assert_eq!(
        stats["task_mem"].as_u64().unwrap(),
        total_mem * 8 / 10,
        "{stats}"
    );
}

#[test]
fn malformed_json_and_missing_id_get_400_with_json_error() {
    let ex = Executor::start("malformed", "");
    for body in [
        "{\"id\": ",
        "not json",
        "[]",
        "{\"input\": \"x\"}",
        "{\"id\": \"\"}",
    ] {
        let reply = ex.post("/", body);
        assert_eq!(reply.status, 400, "{body}: {reply:?}");
        assert_eq!(reply.body["success"], json!(false), "{body}: {reply:?}");
        assert!(!reply.msg().is_empty(), "{body}: {reply:?}");
    }
    let reply = ex.post("/", "{\"input\": \"x\"}");
    assert!(reply.msg().contains("id"), "{reply:?}");
    assert!(ex.containers().is_empty());
}

#[test]
fn invalid_resources_are_refused_without_starting_anything() {
    let ex = Executor::start("resources", "cpu: 2\nmem: 1024\n");
    let cases = [
        (json!({"cpu": 0, "mem": 128}), "invalid resource limit"),
        (json!({"cpu": -1, "mem": 128}), "invalid resource limit"),
        (json!({"cpu": 1, "mem": 0}), "invalid resource limit"),
        (json!({"cpu": 1, "mem": -128}), "invalid resource limit"),
        (json!({"cpu": 3, "mem": 128}), "exceeds the maximum"),
        (json!({"cpu": 1, "mem": 4096}), "exceeds the maximum"),
        (
            json!({"cpu": 1, "mem": 128, "use_gpu": true, "gpu_count": 1}),
            "not enough GPU",
        ),
    ];
    for (resource, expected) in cases {
        let reply = ex.execute(&json!({"id": ECHO, "resource": resource, "input": "x"}));
        assert_eq!(reply.status, 200);
        assert!(!reply.success(), "{resource}: {reply:?}");
        assert!(
            reply.msg().contains(expected),
            "{resource}: {}",
            reply.msg()
        );
    }
    assert!(ex.containers().is_empty(), "nothing was started");
}

#[test]
fn micro_vm_and_sgx_fail_clearly_when_the_host_lacks_them() {
    let ex = Executor::start("isolation", "");
    let reply = ex.execute(&json!({"id": ECHO, "runtime": "microVM", "input": "x"}));
    assert!(!reply.success());
    assert!(reply.msg().contains("microVM"), "{}", reply.msg());
    let reply = ex.execute(&json!({"id": ECHO, "use_sgx": true, "input": "x"}));
    assert!(!reply.success());
    assert!(reply.msg().contains("SGX"), "{}", reply.msg());
    let reply = ex.execute(&json!({"id": ECHO, "runtime": "vm", "input": "x"}));
    assert!(!reply.success());
    assert!(reply.msg().contains("unknown runtime"), "{}", reply.msg());
    assert!(
        ex.containers().is_empty(),
        "no weaker runtime was used instead"
    );
}

#[test]
fn micro_vm_runtime_not_registered_with_docker_is_refused() {
    let ex = Executor::start("kata", "microVM_runtime: kata-not-installed\n");
    let reply = ex.execute(&json!({"id": ECHO, "runtime": "microVM", "input": "x"}));
    assert!(!reply.success());
    assert!(
        reply.msg().contains("kata-not-installed"),
        "{}",
        reply.msg()
    );
    assert!(
        reply.msg().contains("runc"),
        "lists what Docker has: {}",
        reply.msg()
    );
    assert!(ex.containers().is_empty());
}

#[test]
fn pause_update_config_unpause() {
    let ex = Executor::start("pause", "cpu: 2\nmem: 2048\n");
    assert!(ex.execute(&json!({"id": ECHO, "input": "x"})).success());
    assert_eq!(ex.containers().len(), 1);

    for body in ["{\"cpu\": 1, \"mem\": 512}", "{\"cpus\": 1}"] {
        let reply = ex.post("/update-config", body);
        assert_eq!(reply.status, 200, "{body}: {reply:?}");
        assert!(!reply.success(), "refused while running: {reply:?}");
        assert!(reply.msg().contains("running"), "{}", reply.msg());
    }

    let reply = ex.post("/pause", "");
    assert!(reply.success(), "{reply:?}");
    assert!(ex.containers().is_empty(), "pause removes warm containers");
    let reply = ex.execute(&json!({"id": ECHO, "input": "x"}));
    assert!(!reply.success());
    assert!(reply.msg().contains("paused"), "{}", reply.msg());
    let reply = ex.get("/stats");
    assert_eq!(
        reply.body,
        json!({"success": false, "msg": "failed to retrieve resource stats"})
    );

    for bad in ["{\"cpu\": 0}", "{\"mem\": -1}", "{\"timeout\": 0}", "nope"] {
        let reply = ex.post("/update-config", bad);
        assert!(!reply.success(), "{bad}: {reply:?}");
    }
    let reply = ex.post(
        "/update-config",
        "{\"timeout\": 2, \"cpu\": 1, \"mem\": 512, \"has_gpu\": 0}",
    );
    assert!(reply.success(), "{reply:?}");
    assert!(ex.containers().is_empty(), "nothing started while paused");

    let reply = ex.post("/unpause", "");
    assert!(reply.success(), "{reply:?}");
    let stats = ex.get("/stats").body;
    assert_eq!(stats["task_cpu"], json!(1), "{stats}");
    assert_eq!(stats["task_mem"], json!(512), "{stats}");
    let reply = ex.execute(&json!({"id": ECHO, "input": "again"}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "again");
    let reply = ex.execute(&json!({"id": ECHO, "resource": {"cpu": 2, "mem": 128}, "input": "x"}));
    assert!(
        reply.msg().contains("exceeds the maximum"),
        "new budget applies: {}",
        reply.msg()
    );
}

#[test]
fn oversized_request_body_gets_413_json() {
    let ex = Executor::start("bigbody", "");
    let input = "a".repeat(65 * 1024 * 1024);
    let reply = ex.execute(&json!({"id": ECHO, "input": input}));
    assert_eq!(
        reply.status,
        413,
        "{}",
        &reply.raw[..reply.raw.len().min(200)]
    );
    assert_eq!(reply.body["success"], json!(false));
    assert!(ex.containers().is_empty());
}

#[test]
fn numbers_that_would_overflow_the_clock_are_refused_and_the_reaper_keeps_working() {
    // Once accepted, a timeout this large made the idle reaper panic; no idle container was
    // reaped again.
    let ex = Executor::start("huge-timeout", "idle_timeout: \"2s\"");
    assert!(ex.post("/pause", "").success());
    for (body, key, range) in [
        (
            r#"{"timeout": 200000000000000000}"#,
            "timeout",
            "use 1 to 525600 minutes",
        ),
        (
            r#"{"mem": 9223372036854775807}"#,
            "mem",
            "use 1 to 16777216 MB",
        ),
        (r#"{"cpu": 1e300}"#, "cpu", "use at most 4096 cores"),
    ] {
        let reply = ex.post("/update-config", body);
        assert_eq!(reply.status, 400, "{body}: {reply:?}");
        assert!(
            reply.msg().contains(key) && reply.msg().contains(range),
            "{body}: the answer should name {key} and its range: {reply:?}"
        );
    }
    assert!(ex.post("/unpause", "").success());
    let reply = ex.execute(&json!({"id": ECHO, "input": "x"}));
    assert!(reply.success(), "{reply:?}");
    // The idle container is still reaped after its 2 s, and nothing panicked.
    assert_no_container(&ex, Duration::from_secs(15));
    let metrics = ex.get("/metrics").raw;
    let scrape = mecanywhere_executor::metrics_text::Scrape::parse(&metrics);
    let panics: Vec<(&str, f64)> = scrape
        .series()
        .filter(|(series, _)| series.starts_with("meca_background_panics_total{"))
        .collect();
    assert!(
        panics
            .iter()
            .any(|(series, _)| series.contains("idle_reaper")),
        "{metrics}"
    );
    assert!(panics.iter().all(|(_, n)| *n == 0.0), "{panics:?}");
    assert!(!ex.log().contains("panicked"), "{}", ex.log());
}
