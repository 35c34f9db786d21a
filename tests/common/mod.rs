//! Test harness: runs the real `mecanywhere-executor` binary against the real Docker
//! daemon, talks to it over loopback, and checks Docker's state with the `docker` CLI.
//!
//! Every executor started here gets a unique `name`, so its containers carry a unique
//! `org.mecanywhere.executor` label; dropping the [`Executor`] (also when a test panics)
//! stops the process and force-removes anything left with that label.
//!
//! [`memory`] is the other harness: the real executor on the in-memory engine and tokio's
//! paused clock, for the policy tests and the simulator (no Docker).
//!
//! Each test binary uses a part of this: the rest would be dead code there.

#![allow(dead_code)]

pub mod memory;
pub mod registry;
pub mod swarm;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ECHO: &str = "meca-echo:latest";
pub const LABEL: &str = "org.mecanywhere.executor";

/// Runs `docker` with `args`; returns its trimmed stdout, panicking on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Ids of all containers (any state) labelled as created by the executor named `name`.
pub fn containers_of(name: &str) -> Vec<String> {
    let filter = format!("label={LABEL}={name}");
    docker(&["ps", "-aq", "--filter", &filter])
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Label naming what a container is for when it is not a task (`sandbox` for holders).
pub const ROLE_LABEL: &str = "org.mecanywhere.role";

/// Ids and roles of all containers (any state) labelled as created by executor `name`.
fn containers_with_roles(name: &str) -> Vec<(String, String)> {
    let filter = format!("label={LABEL}={name}");
    let format = format!("{{{{.ID}}}} {{{{.Label \"{ROLE_LABEL}\"}}}}");
    docker(&["ps", "-a", "--filter", &filter, "--format", &format])
        .lines()
        .filter_map(|l| {
            let (id, role) = l.split_once(' ').unwrap_or((l, ""));
            (!id.is_empty()).then(|| (id.to_string(), role.trim().to_string()))
        })
        .collect()
}

/// Roles of the one-shot holders the executor runs to measure its host (the host's
/// addresses, the image filesystem): they exit at once and are removed.
pub const MEASURING_ROLES: [&str; 2] = ["host-addresses", "image-filesystem"];

/// Ids of the task containers (not sandbox holders, not measuring holders) of executor
/// `name`, any state.
pub fn tasks_of(name: &str) -> Vec<String> {
    containers_with_roles(name)
        .into_iter()
        .filter(|(_, role)| role != "sandbox" && !MEASURING_ROLES.contains(&role.as_str()))
        .map(|(id, _)| id)
        .collect()
}

/// Ids of the sandbox holders of executor `name`, any state.
pub fn holders_of(name: &str) -> Vec<String> {
    containers_with_roles(name)
        .into_iter()
        .filter(|(_, role)| role == "sandbox")
        .map(|(id, _)| id)
        .collect()
}

/// `meca_sandboxes{state="free"}` in a `/metrics` text.
pub fn free_sandboxes(metrics: &str) -> u64 {
    mecanywhere_executor::metrics_text::value(metrics, "meca_sandboxes{state=\"free\"}") as u64
}

/// `docker inspect -f FORMAT ID`.
pub fn inspect(id: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, id])
}

/// Panics with a hint when the test images have not been built.
pub fn require_images() {
    let out = Command::new("docker")
        .args(["image", "inspect", ECHO])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("docker CLI runs");
    assert!(
        out.success(),
        "test image {ECHO} is missing: run scripts/build-task-images.sh (scripts/test.sh does)"
    );
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name no other test (or test run) uses: for executor names, networks, containers.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("test-{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// A failure as the contract answers it: HTTP 200 with `success: false` and a message.
pub fn assert_failed(reply: &Reply) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body["success"],
        serde_json::json!(false),
        "expected a failure: {reply:?}"
    );
    assert!(
        !reply.msg().is_empty(),
        "failure without a message: {reply:?}"
    );
}

/// Waits until `ex` has no container left; fails naming those left.
pub fn assert_no_container(ex: &Executor, limit: Duration) {
    let left = ex.wait_containers(0, limit);
    assert!(
        left.is_empty(),
        "containers left behind: {left:?}; log:\n{}",
        ex.log()
    );
}

/// Force-removes every container labelled as created by the executor named `name`.
pub fn remove_containers_of(name: &str) {
    let left = containers_of(name);
    if !left.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(left.iter().map(String::as_str));
        let _ = Command::new("docker").args(&args).output();
    }
}

/// Waits up to `limit` for `child` to exit.
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `limit` for `done`, checking every 100 ms; returns whether it came.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops `child` as an operator would (SIGTERM, up to 30 s), then kills it, and reaps it.
pub fn terminate(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        if wait_for_exit(child, Duration::from_secs(30)).is_none() {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// The executor binary started directly with `args` (to test its command line, or starts it
/// must refuse, where [`Executor::start`] would panic). Its output goes to a file; dropping it
/// stops and reaps the process.
pub struct Proc {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("output.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mecanywhere-executor"))
            .args(args)
            .env_remove("MECANYWHERE_EXECUTOR_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("executor binary starts");
        Proc {
            child: Some(child),
            dir,
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = wait_for_exit(self.child.as_mut().expect("running"), limit);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// What the process wrote (the executor logs to stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// A running executor process.
pub struct Executor {
    pub name: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    client: Client,
}

/// Answer of the executor: HTTP status and JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub raw: String,
}

impl Reply {
    pub fn success(&self) -> bool {
        self.body["success"] == Value::Bool(true)
    }
    pub fn msg(&self) -> &str {
        self.body["msg"].as_str().unwrap_or("")
    }
}

impl Executor {
    /// Starts an executor with `yaml` as its config (a unique `name:` is appended) and
    /// waits until `/health` answers.
    pub fn start(prefix: &str, yaml: &str) -> Executor {
        Self::start_named(&unique_name(prefix), yaml)
    }

    /// Starts an executor with the given instance `name`.
    pub fn start_named(name: &str, yaml: &str) -> Executor {
        Self::start_full(name, yaml, &[], "127.0.0.1")
    }

    /// Starts an executor with extra environment variables (e.g. `DOCKER_HOST`).
    pub fn start_with_env(prefix: &str, yaml: &str, env: &[(&str, &str)]) -> Executor {
        Self::start_full(&unique_name(prefix), yaml, env, "127.0.0.1")
    }

    /// Starts an executor named `name` with extra environment variables.
    pub fn start_named_with_env(name: &str, yaml: &str, env: &[(&str, &str)]) -> Executor {
        Self::start_full(name, yaml, env, "127.0.0.1")
    }

    /// Starts an executor listening on every interface (`0.0.0.0`, no token), so its API is
    /// at the bridge gateway and the host's own address too.
    pub fn start_everywhere(prefix: &str, yaml: &str) -> Executor {
        Self::start_full(
            &unique_name(prefix),
            yaml,
            &[("MECANYWHERE_EXECUTOR_TOKEN", "")],
            "0.0.0.0",
        )
    }

    fn start_full(name: &str, yaml: &str, env: &[(&str, &str)], host: &str) -> Executor {
        require_images();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mecanywhere_executor.yaml");
        let mut f = std::fs::File::create(&config).unwrap();
        writeln!(f, "{yaml}\nname: {name}").unwrap();
        // Spare containers are tested on their own (tests/cold_path.rs): elsewhere they would
        // add containers the tests do not expect.
        if !yaml.contains("spare_containers") {
            writeln!(f, "spare_containers: 0").unwrap();
        }
        // Image GC is tested on its own (tests/image_gc.rs): elsewhere it would write the
        // host's state file and could remove the test images on a full disk.
        if !yaml.contains("image_gc") {
            writeln!(f, "image_gc: off").unwrap();
        }
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("executor.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mecanywhere-executor"))
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("{host}:{port}"))
            .env("RUST_LOG", "info,mecanywhere_executor=debug")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("executor binary starts");
        let mut executor = Executor {
            name: name.to_string(),
            port,
            dir,
            child: Some(child),
            client: Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = executor.try_wait() {
                panic!(
                    "executor exited at start ({status}); log:\n{}",
                    executor.log()
                );
            }
            if executor.try_get("/health").is_some() {
                return executor;
            }
            assert!(
                Instant::now() < deadline,
                "executor did not answer /health within 30s; log:\n{}",
                executor.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("executor.log")).unwrap_or_default()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mecanywhere_executor.yaml")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = wait_for_exit(self.child.as_mut()?, limit);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Forgets the process without stopping it (after SIGKILL, to simulate a crash).
    pub fn reap_killed(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    fn try_get(&self, path: &str) -> Option<Reply> {
        self.client.request("GET", &self.url(path), None).ok()
    }

    pub fn get(&self, path: &str) -> Reply {
        self.client
            .request("GET", &self.url(path), None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log()))
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.client
            .request("POST", &self.url(path), Some(body.as_bytes().to_vec()))
            .unwrap_or_else(|e| panic!("POST {path}: {e}; log:\n{}", self.log()))
    }

    /// A request with extra headers (e.g. `Authorization`).
    pub fn request_with_headers(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.client
            .request_with_headers(
                method,
                &self.url(path),
                Some(body.as_bytes().to_vec()),
                headers,
            )
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log()))
    }

    /// `POST /` with a JSON value.
    pub fn execute(&self, request: &Value) -> Reply {
        self.post("/", &request.to_string())
    }

    /// Containers carrying this executor's label.
    /// This executor's task containers (sandbox holders left out).
    pub fn containers(&self) -> Vec<String> {
        tasks_of(&self.name)
    }

    /// This executor's sandbox holders.
    pub fn holders(&self) -> Vec<String> {
        holders_of(&self.name)
    }

    /// Waits up to `limit` until this executor's task container count equals `n`.
    pub fn wait_containers(&self, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let ids = self.containers();
            if ids.len() == n || Instant::now() >= deadline {
                return ids;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `/stop`, then waits for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        let reply = self.post("/stop", "");
        assert!(reply.success(), "{reply:?}");
        self.wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("executor did not exit after /stop; log:\n{}", self.log()))
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        remove_containers_of(&self.name);
    }
}

/// A minimal blocking HTTP/1.1 client over loopback (one connection per request).
#[derive(Clone, Default)]
pub struct Client;

impl Client {
    pub fn new() -> Client {
        Client
    }

    pub fn request(&self, method: &str, url: &str, body: Option<Vec<u8>>) -> Result<Reply, String> {
        self.request_with_headers(method, url, body, &[])
    }

    /// Like [`Client::request`], with extra request headers.
    pub fn request_with_headers(
        &self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        use std::io::{BufRead, BufReader, Read};
        let rest = url.strip_prefix("http://").ok_or("http only")?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut stream =
            std::net::TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        let body = body.unwrap_or_default();
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .map_err(|e| e.to_string())?;
        stream.write_all(&body).map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader
            .read_line(&mut status_line)
            .map_err(|e| e.to_string())?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut raw = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).map_err(|e| e.to_string())?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .map_err(|e| e.to_string())?;
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = length {
            raw.resize(n, 0);
            reader.read_exact(&mut raw).map_err(|e| e.to_string())?;
        } else {
            reader.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        }
        let raw = String::from_utf8(raw).map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        Ok(Reply { status, body, raw })
    }
}

/// Repository root (for scripts and Dockerfiles).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
