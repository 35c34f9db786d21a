//! Security properties end to end against the real Docker daemon: the hardening every task
//! container gets (and its config keys), a read-only root filesystem, the internal task
//! network (no route out, created and removed by the executor, refused when unsafe), image
//! references checked before they reach Docker, the bearer token on every endpoint but
//! `/health`, and task input kept out of the log.

mod common;

use std::process::{Command, Stdio};
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

/// Removes a Docker network on drop (when a test created it, or in case an executor
/// under test failed to remove its own).
struct NetworkGuard(String);

impl NetworkGuard {
    /// Creates a bridge network; `internal` adds `--internal`.
    fn create(name: &str, internal: bool) -> NetworkGuard {
        let mut args = vec!["network", "create", "--driver", "bridge"];
        if internal {
            args.push("--internal");
        }
        args.push(name);
        docker(&args);
        NetworkGuard(name.to_string())
    }
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn network_exists(name: &str) -> bool {
    docker(&["network", "ls", "--format", "{{.Name}}"])
        .lines()
        .any(|l| l == name)
}

/// Asks the routes task whether its container has a default route.
fn routes(ex: &Executor) -> String {
    let reply = ex.execute(&json!({"id": ROUTES, "input": "x"}));
    assert!(reply.success(), "{reply:?}; log:\n{}", ex.log());
    reply.msg().to_string()
}

/// Major version of the Docker daemon.
fn docker_major_version() -> u32 {
    let version = docker(&["version", "-f", "{{.Server.Version}}"]);
    version
        .split('.')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected Docker version {version:?}"))
}

/// Checks that the routes task `ex` runs on internal `network` has no way out. Docker 25
/// and later give a container on an internal network no default route (moby/moby#46603),
/// which the task sees in its routing table. Older daemons (20.10 here) do give it a
/// default route via the bridge and drop whatever would leave the bridge with iptables
/// rules on the host; then those rules are checked instead (read, no packet is sent).
fn assert_no_way_out(ex: &Executor, network: &str) {
    let answer = routes(ex);
    let major = docker_major_version();
    if major >= 25 {
        assert_eq!(answer, "no default route", "Docker {major}");
        return;
    }
    if answer == "no default route" {
        return;
    }
    assert_eq!(answer, "default route");
    let id = docker(&["network", "inspect", "-f", "{{.Id}}", network]);
    let subnet = docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
        network,
    ]);
    let subnet = subnet.split_whitespace().next().expect("an IPv4 subnet");
    let bridge = format!("br-{}", &id[..12]);
    let rules = match Command::new("iptables")
        .args(["-S", "DOCKER-ISOLATION-STAGE-1"])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => {
            eprintln!(
                "Docker {major} gives tasks on internal networks a default route, and the \
                 host's iptables rules are not readable here: only the network's Internal \
                 flag was checked"
            );
            return;
        }
    };
    let drops_outbound = rules.lines().any(|rule| {
        rule.contains(&format!("-i {bridge} "))
            && rule.contains(&format!("! -d {subnet}"))
            && rule.ends_with("-j DROP")
    });
    assert!(
        drops_outbound,
        "Docker {major}: the task has a default route and nothing drops traffic leaving \
         {bridge} ({subnet}):\n{rules}"
    );
}

#[test]
fn internal_network_is_created_has_no_route_out_and_is_removed_at_stop() {
    let name = unique_name("internal");
    let network = format!("mecanywhere-tasks-{name}");
    // Declared first: dropped after the executor, whose containers use the network.
    let _guard = NetworkGuard(network.clone());
    let mut ex = Executor::start_named(&name, "internal_network: true\n");
    assert!(
        network_exists(&network),
        "network {network} was not created"
    );
    assert_eq!(
        docker(&["network", "inspect", "-f", "{{.Internal}}", &network]),
        "true"
    );
    let labels: Value = serde_json::from_str(&docker(&[
        "network",
        "inspect",
        "-f",
        "{{json .Labels}}",
        &network,
    ]))
    .unwrap();
    assert_eq!(labels[LABEL], json!(name), "{labels}");

    // The executor reaches the task on the internal network; the task has no way out.
    assert_no_way_out(&ex, &network);
    let ids = ex.containers();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let networks: Value =
        serde_json::from_str(&inspect(&ids[0], "{{json .NetworkSettings.Networks}}")).unwrap();
    let joined: Vec<&String> = networks.as_object().unwrap().keys().collect();
    assert_eq!(joined, vec![&network], "only the internal network");

    let status = ex.stop();
    assert!(status.success(), "{status}; log:\n{}", ex.log());
    assert!(ex.containers().is_empty());
    assert!(
        !network_exists(&network),
        "the executor left its network {network}; log:\n{}",
        ex.log()
    );

    // The same image on Docker's default bridge does have a default route, so the answer
    // above is the network's doing.
    let plain = Executor::start("not-internal", "");
    assert_eq!(routes(&plain), "default route");
}

#[test]
fn an_existing_internal_network_is_used_and_left_in_place() {
    let network = unique_name("own-internal-net");
    let _guard = NetworkGuard::create(&network, true);
    let mut ex = Executor::start(
        "use-internal",
        &format!("internal_network: true\nnetwork: {network}\n"),
    );
    assert_no_way_out(&ex, &network);
    let ids = ex.containers();
    assert_eq!(ids.len(), 1);
    assert!(
        inspect(&ids[0], "{{json .NetworkSettings.Networks}}").contains(&network),
        "task joined {network}"
    );
    assert!(ex.stop().success());
    assert!(
        network_exists(&network),
        "the executor removed a network it did not create"
    );
}

#[test]
fn internal_network_left_by_a_crashed_instance_is_removed_by_the_next_one() {
    let name = unique_name("net-orphan");
    let network = format!("mecanywhere-tasks-{name}");
    let _guard = NetworkGuard(network.clone());
    let mut crashed = Executor::start_named(&name, "internal_network: true\n");
    crashed.signal("KILL");
    crashed.reap_killed();
    assert!(network_exists(&network), "left behind by the crash");
    // The next instance of the same name adopts the network (it carries the name's label)
    // and so removes it when it stops, as it removes the crashed instance's containers.
    let mut restarted = Executor::start_named(&name, "internal_network: true\n");
    assert_no_way_out(&restarted, &network);
    assert!(restarted.stop().success());
    assert!(
        !network_exists(&network),
        "{network} outlives every instance; log:\n{}",
        restarted.log()
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
        // In case a broken executor created its default internal network.
        let _ = NetworkGuard(format!("mecanywhere-tasks-{}", self.name));
    }
}

#[test]
fn internal_network_refuses_an_existing_network_that_is_not_internal() {
    let network = unique_name("open-net");
    let _guard = NetworkGuard::create(&network, false);
    let mut proc = Refusal::spawn(
        "refuse-open",
        &format!("internal_network: true\nnetwork: {network}\n"),
    );
    let stderr = proc.expect_refusal(1, Duration::from_secs(20));
    assert!(stderr.contains("not internal"), "{stderr}");
    assert!(stderr.contains(&network), "names the network: {stderr}");
    // The operator's network is left as it was.
    assert!(network_exists(&network));
    assert_eq!(
        docker(&["network", "inspect", "-f", "{{.Internal}}", &network]),
        "false"
    );
}

#[test]
fn internal_network_with_published_ports_is_a_config_error() {
    let mut proc = Refusal::spawn(
        "refuse-publish",
        "internal_network: true\npublish_task_ports: true\n",
    );
    let stderr = proc.expect_refusal(2, Duration::from_secs(10));
    assert!(stderr.contains("internal_network"), "{stderr}");
    assert!(
        !network_exists(&format!("mecanywhere-tasks-{}", proc.name)),
        "no network is created for a refused config"
    );
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
