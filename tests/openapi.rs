//! The OpenAPI document against the real binary: it is served at `/openapi.json`, the copy
//! shipped in the repository is the same, and every endpoint's real answers, success and
//! failure, validate against the schema the document gives for their status.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Checks that `reply`, the answer of `method path`, is documented for its status and
/// matches the schema given there.
fn check(doc: &Value, method: &str, path: &str, reply: &Reply) {
    let response = &doc["paths"][path][method]["responses"][reply.status.to_string()];
    assert!(
        !response.is_null(),
        "{method} {path} answered HTTP {}, which the document does not list: {}",
        reply.status,
        reply.raw
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} {}: no JSON schema",
        reply.status
    );
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::validator_for(&root).expect("the document's schemas compile");
    let body: Value = serde_json::from_str(&reply.raw)
        .unwrap_or_else(|e| panic!("{method} {path}: answer is not JSON ({e}): {}", reply.raw));
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {}: the answer does not match the document: {errors:?}\n{body}",
        reply.status
    );
}

fn document(ex: &Executor) -> Value {
    let reply = ex.get("/openapi.json");
    assert_eq!(reply.status, 200);
    reply.body
}

#[test]
fn the_served_document_is_the_shipped_one() {
    let ex = Executor::start("openapi-doc", "");
    let served = document(&ex);
    assert_eq!(served["openapi"], json!("3.1.0"));
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("openapi.json")).expect("openapi.json exists"),
    )
    .unwrap();
    assert!(
        served == shipped,
        "openapi.json in the repository is stale: regenerate it with \
         `cargo run -- openapi > openapi.json`"
    );
}

#[test]
fn every_endpoint_answers_as_documented() {
    let mut ex = Executor::start("openapi-answers", "max_request_bytes: 1024");
    let doc = document(&ex);
    let mut covered = std::collections::BTreeSet::new();
    let mut call = |method: &str, path: &str, body: &str| -> Reply {
        let reply = if method == "get" {
            ex.get(path)
        } else {
            ex.post(path, body)
        };
        if reply.status == 200 || path == "/" {
            covered.insert((method.to_string(), path.to_string()));
        }
        if path != "/metrics" && path != "/openapi.json" {
            check(&doc, method, path, &reply);
        }
        reply
    };

    call("get", "/health", "");
    call("get", "/openapi.json", "");
    let metrics = call("get", "/metrics", "");
    assert!(metrics.raw.contains("meca_requests_total"));
    // Execute: success, a task's failure, bad requests, too large.
    let ok = call("post", "/", &json!({"id": ECHO, "input": "hi"}).to_string());
    assert!(ok.success());
    let crashed = call(
        "post",
        "/",
        &json!({"id": "meca-test-crash:latest", "input": "x"}).to_string(),
    );
    assert!(!crashed.success());
    assert_eq!(call("post", "/", "{not json").status, 400);
    let conflict = json!({"id": ECHO, "resource": {"cpu": 1, "task_cpu": 2}}).to_string();
    assert_eq!(call("post", "/", &conflict).status, 400);
    let huge = json!({"id": ECHO, "input": "x".repeat(4096)}).to_string();
    assert_eq!(call("post", "/", &huge).status, 413);
    // Stats running, then paused; the control endpoints.
    assert!(call("get", "/stats", "").body["task_cpu"].is_number());
    let running = call("post", "/update-config", r#"{"cpu": 1}"#);
    assert!(!running.success());
    assert!(call("post", "/pause", "").success());
    assert!(!call("get", "/stats", "").success());
    assert!(call(
        "post",
        "/update-config",
        r#"{"cpu": 1, "mem": 512, "timeout": 2}"#
    )
    .success());
    assert_eq!(call("post", "/update-config", r#"{"cpu": 0}"#).status, 400);
    assert!(call("post", "/unpause", "").success());
    assert!(call("post", "/stop", "").success());
    assert!(ex.wait_exit(Duration::from_secs(60)).is_some());

    // Every documented operation was called and answered.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(
                covered.contains(&(method.clone(), path.clone())),
                "{method} {path} is documented but was not exercised"
            );
        }
    }
}

#[test]
fn refusals_of_the_front_answer_as_documented() {
    // 401 without the token, 503 beyond the requests in flight.
    let ex = Executor::start(
        "openapi-front",
        "auth_token: \"tok\"\nmax_requests_in_flight: 1",
    );
    let doc = document(&ex);
    for (method, path) in [("post", "/"), ("get", "/stats"), ("post", "/pause")] {
        let reply = if method == "get" {
            ex.get(path)
        } else {
            ex.post(path, "{}")
        };
        assert_eq!(reply.status, 401, "{method} {path}: {reply:?}");
        check(&doc, method, path, &reply);
    }
    let auth = [("Authorization", "Bearer tok")];
    let slow = {
        let url = ex.url("/");
        std::thread::spawn(move || {
            Client::new().request_with_headers(
                "POST",
                &url,
                Some(
                    json!({"id": "meca-test-slow-answer:latest", "input": "s"})
                        .to_string()
                        .into_bytes(),
                ),
                &[("Authorization", "Bearer tok")],
            )
        })
    };
    // While the slow task (a cold start, then 2 s) is served.
    std::thread::sleep(Duration::from_secs(1));
    let echo = json!({"id": ECHO, "input": "x"}).to_string();
    let busy = ex.request_with_headers("POST", "/", &echo, &auth);
    assert_eq!(busy.status, 503, "{busy:?}");
    check(&doc, "post", "/", &busy);
    assert!(slow.join().unwrap().unwrap().success());
}
