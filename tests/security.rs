//! Security properties end to end against the real Docker daemon: the hardening every task
//! container gets (and its config keys), a read-only root filesystem, the task's sandbox
//! (no network, a hardened holder; retired network keys refused or named), image
//! references checked before they reach Docker, the bearer token on every endpoint but
//! `/health`, and task input kept out of the log.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ROUTES: &str = "meca-test-routes:latest";

/// `docker inspect` of a container's HostConfig, as JSON.
fn host_config(id: &str) -> Value {
    let text = inspect(id, "{{json .HostConfig}}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("HostConfig of {id}: {e}: {text}"))
}

/// True when `v` is JSON null or an empty array/object (how Docker shows "none").
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Runs one echo request and returns the id of the (single) warm container it left.
fn warm_echo(ex: &Executor) -> String {
    let reply = ex.execute(&json!({"id": ECHO, "input": "hardened"}));
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    assert_eq!(reply.msg(), "hardened");
    let ids = ex.containers();
    assert_eq!(ids.len(), 1, "one warm container: {ids:?}");
    ids.into_iter().next().unwrap()
}

/// Checks the hardening of container `id` against the expected limits.
fn assert_hardened(id: &str, pids: i64, nofile: i64, log_size: &str, log_files: &str) {
    let hc = host_config(id);
    assert_eq!(hc["Privileged"], json!(false), "{hc}");
    let security_opt = hc["SecurityOpt"].as_array().cloned().unwrap_or_default();
    assert!(
        security_opt.contains(&json!("no-new-privileges")),
        "SecurityOpt: {hc}"
    );
    assert_eq!(hc["CapDrop"], json!(["ALL"]), "{hc}");
    assert!(is_empty(&hc["CapAdd"]), "CapAdd: {hc}");
    let memory = hc["Memory"].as_i64().unwrap_or(0);
    assert!(memory > 0, "a memory limit is set: {hc}");
    assert_eq!(
        hc["MemorySwap"].as_i64(),
        Some(memory),
        "no swap beyond the memory limit: {hc}"
    );
    assert_eq!(hc["PidsLimit"], json!(pids), "{hc}");
    assert_eq!(
        hc["Ulimits"],
        json!([{"Name": "nofile", "Soft": nofile, "Hard": nofile}]),
        "{hc}"
    );
    assert_eq!(hc["LogConfig"]["Type"], json!("json-file"), "{hc}");
    assert_eq!(
        hc["LogConfig"]["Config"],
        json!({"max-size": log_size, "max-file": log_files}),
        "{hc}"
    );
    // No host mounts, devices or namespaces.
    assert!(is_empty(&hc["Binds"]), "Binds: {hc}");
    assert!(is_empty(&hc["Mounts"]), "Mounts: {hc}");
    assert!(is_empty(&hc["Devices"]), "Devices: {hc}");
    assert!(is_empty(&hc["DeviceRequests"]), "DeviceRequests: {hc}");
    for key in ["NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode"] {
        assert_ne!(hc[key], json!("host"), "{key}: {hc}");
    }
    assert!(is_empty(&hc["PortBindings"]), "nothing published: {hc}");
}

#[test]
fn task_containers_are_hardened_by_default() {
    let ex = Executor::start("harden", "");
    let id = warm_echo(&ex);
    assert_hardened(&id, 1024, 4096, "10m", "2");
    let hc = host_config(&id);
    assert_eq!(hc["ReadonlyRootfs"], json!(false), "{hc}");
    assert!(is_empty(&hc["Tmpfs"]), "Tmpfs: {hc}");
    assert_eq!(
        inspect(&id, "{{.HostConfig.Memory}}"),
        (128u64 << 20).to_string()
    );
}

#[test]
fn hardening_limits_follow_the_config() {
    let ex = Executor::start(
        "harden-cfg",
        "pids_limit: 256\nnofile_limit: 1024\nlog_max_size: \"5m\"\nlog_max_files: 3\n",
    );
    let id = warm_echo(&ex);
    assert_hardened(&id, 256, 1024, "5m", "3");
}

#[test]
fn read_only_rootfs_gets_a_tmpfs_at_tmp_and_the_task_still_serves() {
    let ex = Executor::start("rofs", "read_only_rootfs: true\n");
    let id = warm_echo(&ex);
    let hc = host_config(&id);
    assert_eq!(hc["ReadonlyRootfs"], json!(true), "{hc}");
    let tmp = hc["Tmpfs"]["/tmp"]
        .as_str()
        .unwrap_or_else(|| panic!("no tmpfs at /tmp: {hc}"));
    assert!(tmp.split(',').any(|o| o == "rw"), "/tmp is writable: {tmp}");
    // The rest of the hardening is unchanged.
    assert_hardened(&id, 1024, 4096, "10m", "2");
    // The container serves again (warm).
    let reply = ex.execute(&json!({"id": ECHO, "input": "again"}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "again");
    assert_eq!(ex.containers(), vec![id]);
}

/// Asks the routes task whether its container has a default route.
fn routes(ex: &Executor) -> String {
    let reply = ex.execute(&json!({"id": ROUTES, "input": "x"}));
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    reply.msg().to_string()
}

#[test]
fn an_isolated_task_sits_in_a_sandbox_with_no_network_and_no_route() {
    let ex = Executor::start("isolated", "");
    assert_eq!(routes(&ex), "no default route");
    let ids = ex.containers();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let mode = inspect(&ids[0], "{{.HostConfig.NetworkMode}}");
    let holder = mode
        .strip_prefix("container:")
        .unwrap_or_else(|| panic!("the task is not in a sandbox: {mode}"));
    // The holder: no network but loopback, no capability, nothing published, read-only,
    // and one mount: the executor's socket directory.
    let hc = host_config(holder);
    assert_eq!(hc["NetworkMode"], json!("none"), "{hc}");
    assert_eq!(hc["CapDrop"], json!(["ALL"]), "{hc}");
    assert!(is_empty(&hc["CapAdd"]), "CapAdd: {hc}");
    assert!(is_empty(&hc["PortBindings"]), "{hc}");
    assert_eq!(hc["ReadonlyRootfs"], json!(true), "{hc}");
    let mounts = hc["Mounts"].as_array().cloned().unwrap_or_default();
    assert_eq!(mounts.len(), 1, "{hc}");
    assert_eq!(mounts[0]["Target"], json!("/run/meca"), "{hc}");
    assert!(
        mounts[0]["Source"]
            .as_str()
            .is_some_and(|s| s.starts_with("/run/mecanywhere-executor/")),
        "{hc}"
    );
    assert_eq!(
        inspect(holder, "{{len .NetworkSettings.Networks}}"),
        "1",
        "only Docker's `none` network"
    );
    assert_eq!(
        mecanywhere_executor::metrics_text::value(
            &ex.get("/metrics").raw,
            "meca_task_network{mode=\"isolated\"}"
        ),
        1.0,
        "/metrics states the mode"
    );
    assert!(
        ex.log().contains("tasks are isolated"),
        "the start-up log states the mode:\n{}",
        ex.log()
    );
}

/// The executor binary started directly with `yaml` (plus a unique `name:`) as its config,
/// for starts it must refuse. Its containers and default network are removed on drop.
struct Refusal {
    proc: Proc,
    name: String,
    _dir: tempfile::TempDir,
}

impl Refusal {
    fn spawn(prefix: &str, yaml: &str) -> Refusal {
        let dir = tempfile::tempdir().unwrap();
        let name = unique_name(prefix);
        let config = dir.path().join("mecanywhere_executor.yaml");
        std::fs::write(&config, format!("{yaml}\nname: {name}\n")).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let proc = Proc::spawn(&["--config", config.to_str().unwrap(), "--listen", &listen]);
        Refusal {
            proc,
            name,
            _dir: dir,
        }
    }

    /// The executor must exit with `code` within `limit`; returns its stderr.
    fn expect_refusal(&mut self, code: i32, limit: Duration) -> String {
        let status = self.proc.wait(limit);
        let stderr = self.proc.output();
        let status = status.unwrap_or_else(|| {
            panic!("the executor kept running (it should refuse to start); stderr:\n{stderr}")
        });
        assert_eq!(status.code(), Some(code), "{status}; stderr:\n{stderr}");
        assert!(containers_of(&self.name).is_empty(), "it started nothing");
        stderr
    }
}

impl Drop for Refusal {
    fn drop(&mut self) {
        remove_containers_of(&self.name);
    }
}

#[test]
fn retired_network_keys_are_refused_or_named_and_nothing_is_weaker_than_configured() {
    // Publishing task ports would open a way in: refused, naming the key.
    let mut proc = Refusal::spawn("refuse-publish", "publish_task_ports: true\n");
    let stderr = proc.expect_refusal(2, Duration::from_secs(10));
    assert!(stderr.contains("publish_task_ports"), "{stderr}");
    assert!(stderr.contains("retired"), "{stderr}");
    // A task network in isolated mode would mean nothing: refused, saying what applies.
    let mut proc = Refusal::spawn("refuse-network", "network: bridge\n");
    let stderr = proc.expect_refusal(2, Duration::from_secs(10));
    assert!(stderr.contains("network"), "{stderr}");
    assert!(stderr.contains("task_network: internet"), "{stderr}");
    let mut proc = Refusal::spawn(
        "refuse-contradiction",
        "internal_network: true\ntask_network: internet\n",
    );
    let stderr = proc.expect_refusal(2, Duration::from_secs(10));
    assert!(stderr.contains("internal_network"), "{stderr}");
    let mut proc = Refusal::spawn("refuse-mode", "task_network: open\n");
    let stderr = proc.expect_refusal(2, Duration::from_secs(10));
    assert!(stderr.contains("task_network"), "{stderr}");
    // `internal_network: true` asked for less than isolation gives: accepted, and named.
    let ex = Executor::start("retired-internal", "internal_network: true\n");
    assert_eq!(routes(&ex), "no default route");
    assert!(
        ex.log().contains("internal_network: true is retired"),
        "{}",
        ex.log()
    );
}

#[test]
fn sandboxes_the_executor_cannot_make_are_refused_at_start() {
    // A socket directory that cannot exist: isolation cannot be enforced, so the executor
    // does not start (exit 1), and says why.
    let mut proc = Refusal::spawn("refuse-dir", "socket_dir: /proc/no-such-dir\n");
    let stderr = proc.expect_refusal(1, Duration::from_secs(20));
    assert!(stderr.contains("cannot isolate tasks"), "{stderr}");
    assert!(stderr.contains("/proc/no-such-dir"), "{stderr}");
}

#[test]
fn invalid_image_references_are_refused_before_docker() {
    let ex = Executor::start("image-ref", "");
    for id in [
        "a b",
        "UPPER",
        "a//b",
        "a:b:c",
        "../../etc",
        "a@sha256:short",
        "-rf",
    ] {
        let reply = ex.execute(&json!({"id": id, "input": "x"}));
        assert_eq!(reply.status, 200, "{id:?}: {reply:?}");
        assert_eq!(reply.body["success"], json!(false), "{id:?}: {reply:?}");
        assert!(
            reply.msg().starts_with("invalid image reference"),
            "{id:?}: {}",
            reply.msg()
        );
    }
    assert!(ex.containers().is_empty(), "nothing was created");
    let log = ex.log();
    assert!(
        !log.contains("pulling image"),
        "nothing was pulled; log:\n{log}"
    );
    let reply = ex.execute(&json!({"id": ECHO, "input": "valid"}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "valid");
}

const TOKEN: &str = "s3cret-token";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `method path` with the given `Authorization` header (none when `None`).
fn call(ex: &Executor, method: &str, path: &str, body: &str, auth: Option<&str>) -> Reply {
    match auth {
        Some(value) => ex.request_with_headers(method, path, body, &[("Authorization", value)]),
        None => ex.request_with_headers(method, path, body, &[]),
    }
}

fn assert_unauthorized(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {reply:?}");
    assert_eq!(reply.body["success"], json!(false), "{what}: {reply:?}");
    assert!(!reply.msg().is_empty(), "{what}: {reply:?}");
}

#[test]
fn bearer_token_protects_every_endpoint_but_health() {
    let mut ex = Executor::start("token", &format!("auth_token: {TOKEN}\n"));
    let right = bearer(TOKEN);
    let right = Some(right.as_str());
    let health = ex.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.body, json!({"status": "ok"}));

    let request = json!({"id": ECHO, "input": "authorized"}).to_string();
    assert_unauthorized(&call(&ex, "POST", "/", &request, None), "no token");
    // A distinctive wrong token, to see that the answer does not echo it. (The refusal's
    // own message says "missing or wrong bearer token", so the word "wrong" is no marker.)
    let guess = "Bearer guess-7f3a9c";
    let prefix = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let longer = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    for wrong in [
        guess,
        "Bearer wrong",
        TOKEN,
        "Bearer ",
        prefix.as_str(),
        longer.as_str(),
        basic.as_str(),
    ] {
        let reply = call(&ex, "POST", "/", &request, Some(wrong));
        assert_unauthorized(&reply, wrong);
        assert!(!reply.raw.contains("guess-7f3a9c"), "{wrong}: {reply:?}");
        assert!(!reply.raw.contains(TOKEN), "{wrong}: {reply:?}");
    }
    assert!(ex.containers().is_empty(), "nothing ran without the token");
    let reply = call(&ex, "POST", "/", &request, right);
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "authorized");

    // /stats
    assert_unauthorized(&call(&ex, "GET", "/stats", "", None), "/stats");
    let stats = call(&ex, "GET", "/stats", "", right);
    assert_eq!(stats.status, 200, "{stats:?}");
    assert!(stats.body.get("total_cpu").is_some(), "{stats:?}");

    // /pause: refused without the token, and it did not pause.
    assert_unauthorized(&call(&ex, "POST", "/pause", "", None), "/pause");
    let stats = call(&ex, "GET", "/stats", "", right);
    assert!(
        stats.body.get("total_cpu").is_some(),
        "still running: {stats:?}"
    );
    assert_eq!(ex.containers().len(), 1, "the warm container is kept");
    let reply = call(&ex, "POST", "/pause", "", right);
    assert!(reply.success(), "{reply:?}");
    assert!(ex.containers().is_empty());

    // /update-config (while paused)
    let update = "{\"cpu\": 1, \"mem\": 512}";
    assert_unauthorized(
        &call(&ex, "POST", "/update-config", update, None),
        "/update-config",
    );
    let reply = call(&ex, "POST", "/update-config", update, right);
    assert!(reply.success(), "{reply:?}");

    // /unpause: refused without the token, and it stayed paused.
    assert_unauthorized(&call(&ex, "POST", "/unpause", "", None), "/unpause");
    let stats = call(&ex, "GET", "/stats", "", right);
    assert_eq!(
        stats.body["success"],
        json!(false),
        "still paused: {stats:?}"
    );
    let reply = call(&ex, "POST", "/unpause", "", right);
    assert!(reply.success(), "{reply:?}");
    let stats = call(&ex, "GET", "/stats", "", right);
    assert_eq!(
        stats.body["task_cpu"],
        json!(1),
        "update applied: {stats:?}"
    );
    assert_eq!(stats.body["task_mem"], json!(512), "{stats:?}");

    // /stop: refused without the token (the executor keeps serving), then stops with it.
    assert_unauthorized(&call(&ex, "POST", "/stop", "", None), "/stop");
    assert!(ex.try_wait().is_none(), "still running");
    let reply = call(&ex, "POST", "/", &request, right);
    assert!(reply.success(), "{reply:?}");
    let reply = call(&ex, "POST", "/stop", "", right);
    assert!(reply.success(), "{reply:?}");
    let status = ex
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no exit after /stop; log:\n{}", ex.log()));
    assert_eq!(status.code(), Some(0), "{status}; log:\n{}", ex.log());
    assert!(ex.containers().is_empty());
    assert!(!ex.log().contains(TOKEN), "the token is not logged");
}

#[test]
fn token_from_the_environment_protects_the_api_and_overrides_the_file() {
    let ex = Executor::start_with_env(
        "env-token",
        "",
        &[("MECANYWHERE_EXECUTOR_TOKEN", "env-token")],
    );
    let request = json!({"id": ECHO, "input": "from env"}).to_string();
    assert_unauthorized(&call(&ex, "POST", "/", &request, None), "no token");
    assert_unauthorized(
        &call(&ex, "POST", "/", &request, Some("Bearer wrong")),
        "wrong token",
    );
    assert!(ex.containers().is_empty());
    let reply = call(&ex, "POST", "/", &request, Some("Bearer env-token"));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), "from env");
    assert_eq!(ex.get("/health").status, 200);
    drop(ex);

    let ex = Executor::start_with_env(
        "env-over-file",
        "auth_token: file-token\n",
        &[("MECANYWHERE_EXECUTOR_TOKEN", "env-token")],
    );
    assert_unauthorized(
        &call(&ex, "GET", "/stats", "", Some("Bearer file-token")),
        "the file's token is overridden",
    );
    let stats = call(&ex, "GET", "/stats", "", Some("Bearer env-token"));
    assert_eq!(stats.status, 200, "{stats:?}");
    assert!(stats.body.get("total_cpu").is_some(), "{stats:?}");
}

#[test]
fn task_input_never_reaches_the_log_or_an_error_message() {
    let mut ex = Executor::start("no-input-log", "");
    let marker = format!("secret-input-{}", std::process::id());
    let input = format!("{{\"password\": \"{marker}\"}}");

    let reply = ex.execute(&json!({"id": ECHO, "input": input}));
    assert!(reply.success(), "{reply:?}");
    assert_eq!(reply.msg(), input, "the answer itself is the task's");

    // Failures: an image that cannot be pulled (nothing listens on 127.0.0.1:9), a task
    // answering HTTP 500, and one that crashes on the request.
    for image in [
        "127.0.0.1:9/nothing:v1",
        "meca-test-bad-status:latest",
        "meca-test-crash:latest",
    ] {
        let reply = ex.execute(&json!({"id": image, "input": input}));
        assert!(!reply.success(), "{image}: {reply:?}");
        assert!(!reply.msg().is_empty(), "{image}: {reply:?}");
        assert!(
            !reply.raw.contains(&marker),
            "{image}: the error quotes the input: {reply:?}"
        );
    }
    assert!(ex.stop().success());
    let log = ex.log();
    // The log does describe the requests (debug level is on), just not their input.
    assert!(
        log.contains("127.0.0.1:9/nothing:v1") && log.contains(ECHO),
        "requests are logged at debug level:\n{log}"
    );
    assert!(!log.contains(&marker), "the log contains the input:\n{log}");
}
