//! `mecanywhere-executor ctl`: the operator's client of a running executor, for the flows
//! the README shows (stats, pause, unpause, update-config, stop, running a task).
//!
//! Owns the command line of `ctl`, where it finds the executor and its token, the HTTP call,
//! and how answers are printed (a readable table, or the executor's JSON with `--json`).
//! It speaks only the executor's public API: nothing here reaches into the daemon.
//!
//! Exit codes: 0 the executor did it; 1 the executor answered a failure; 2 bad usage;
//! 3 the executor could not be reached.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use mecanywhere_executor::config::{Config, TOKEN_ENV};

/// Environment variable naming the executor's URL.
pub const URL_ENV: &str = "MECANYWHERE_EXECUTOR_URL";
/// Where the Debian package installs the config.
pub const SYSTEM_CONFIG: &str = "/etc/mecanywhere/executor.yaml";

/// Talks to a running executor.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Executor URL [default: $MECANYWHERE_EXECUTOR_URL, else the config's `listen`, else
    /// http://127.0.0.1:2591]
    #[arg(long)]
    url: Option<String>,
    /// Bearer token [default: $MECANYWHERE_EXECUTOR_TOKEN, else the config's `auth_token`]
    #[arg(long)]
    token: Option<String>,
    /// Config file to take `listen` and `auth_token` from [default:
    /// ./mecanywhere_executor.yaml, else /etc/mecanywhere/executor.yaml, when present]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the executor's JSON answer as it is
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CtlCommand {
    /// Host, budget and container figures
    Stats,
    /// Whether the executor answers
    Health,
    /// Refuse new tasks and remove every task container
    Pause,
    /// Accept tasks again
    Unpause,
    /// Change the task budget or idle timeout (only while paused)
    UpdateConfig {
        /// Task CPU budget, cores
        #[arg(long)]
        cpu: Option<f64>,
        /// Task memory budget, MB
        #[arg(long)]
        mem: Option<i64>,
        /// Idle timeout of a warm container, minutes
        #[arg(long)]
        timeout: Option<i64>,
        /// Schedule NVIDIA GPUs
        #[arg(long)]
        has_gpu: Option<bool>,
        /// Docker runtime for `runtime: microVM` ("" to unset)
        #[arg(long = "microvm-runtime")]
        microvm_runtime: Option<String>,
    },
    /// Remove every task container and stop the executor
    Stop,
    /// Run a task: IMAGE with INPUT as its input; prints the task's answer
    Run {
        image: String,
        input: String,
        /// Cores [default: 1]
        #[arg(long)]
        cpu: Option<f64>,
        /// Memory, MB [default: 128]
        #[arg(long)]
        mem: Option<i64>,
        /// `container` or `microVM`
        #[arg(long)]
        runtime: Option<String>,
        /// Whole GPUs to give the task
        #[arg(long)]
        gpus: Option<u32>,
        /// Run as an SGX task
        #[arg(long)]
        sgx: bool,
    },
}

/// The `ctl` subcommand.
pub async fn run(args: CtlArgs) -> ExitCode {
    let target = match Target::resolve(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mecanywhere-executor ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let (method, path, body) = request_of(&args.command);
    let answer = match target.call(method, path, body).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "mecanywhere-executor ctl: cannot reach the executor at {}: {e}",
                target.url
            );
            return ExitCode::from(3);
        }
    };
    report(&args, answer)
}

/// Where the executor is and how to authenticate to it.
struct Target {
    url: String,
    token: Option<String>,
}

impl Target {
    fn resolve(args: &CtlArgs) -> Result<Target, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = args.url.clone().or_else(|| env(URL_ENV));
        let token = args.token.clone().or_else(|| env(TOKEN_ENV));
        // The config only for what flags and environment left open (it may be unreadable to
        // this user when both are given).
        let config = match (&url, &token) {
            (Some(_), Some(_)) => None,
            _ => load_config(args.config.as_deref())?,
        };
        let url = url
            .or_else(|| config.as_ref().map(|c| url_of_listen(c.listen)))
            .unwrap_or_else(|| "http://127.0.0.1:2591".to_string());
        let token = token.or_else(|| config.and_then(|c| c.auth_token));
        let url = url.trim_end_matches('/').to_string();
        url.parse::<Uri>()
            .map_err(|e| format!("bad executor URL {url:?}: {e}"))?;
        if !url.starts_with("http://") {
            return Err(format!("bad executor URL {url:?}: use http://HOST:PORT"));
        }
        Ok(Target { url, token })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, String> {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the token is not a valid header value".to_string())?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let response = client
            .request(request)
            .await
            .map_err(|e| mecanywhere_executor::error_text::chain(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

/// The config that names the executor's address and token: the one given, else the first
/// that exists of ./mecanywhere_executor.yaml and /etc/mecanywhere/executor.yaml.
fn load_config(path: Option<&Path>) -> Result<Option<Config>, String> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => match [
            mecanywhere_executor::config::DEFAULT_CONFIG_FILE,
            SYSTEM_CONFIG,
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Config::from_yaml(&text, &path)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The URL that reaches an executor listening on `listen` from this host.
fn url_of_listen(listen: std::net::SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        listen.ip()
    };
    format!("http://{}", std::net::SocketAddr::new(ip, listen.port()))
}

struct Answer {
    status: u16,
    body: Bytes,
}

fn request_of(command: &CtlCommand) -> (Method, &'static str, Option<Value>) {
    match command {
        CtlCommand::Stats => (Method::GET, "/stats", None),
        CtlCommand::Health => (Method::GET, "/health", None),
        CtlCommand::Pause => (Method::POST, "/pause", None),
        CtlCommand::Unpause => (Method::POST, "/unpause", None),
        CtlCommand::Stop => (Method::POST, "/stop", None),
        CtlCommand::UpdateConfig {
            cpu,
            mem,
            timeout,
            has_gpu,
            microvm_runtime,
        } => {
            let mut update = serde_json::Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    update.insert(k.to_string(), v);
                }
            };
            put("cpu", cpu.map(Value::from));
            put("mem", mem.map(Value::from));
            put("timeout", timeout.map(Value::from));
            put("has_gpu", has_gpu.map(Value::from));
            put("microVM_runtime", microvm_runtime.clone().map(Value::from));
            (Method::POST, "/update-config", Some(Value::Object(update)))
        }
        CtlCommand::Run {
            image,
            input,
            cpu,
            mem,
            runtime,
            gpus,
            sgx,
        } => {
            let mut resource = json!({
                "cpu": cpu.unwrap_or(1.0),
                "mem": mem.unwrap_or(128),
            });
            if let Some(n) = gpus {
                resource["use_gpu"] = json!(*n > 0);
                resource["gpu_count"] = json!(n);
            }
            let mut body = json!({"id": image, "input": input, "resource": resource});
            if let Some(r) = runtime {
                body["runtime"] = json!(r);
            }
            if *sgx {
                body["use_sgx"] = json!(true);
            }
            (Method::POST, "/", Some(body))
        }
    }
}

/// Prints the answer and turns it into the exit code.
fn report(args: &CtlArgs, answer: Answer) -> ExitCode {
    let text = String::from_utf8_lossy(&answer.body);
    let value: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let failed = !(200..300).contains(&answer.status)
        || value.as_ref().and_then(|v| v["success"].as_bool()) == Some(false);
    if args.json {
        println!("{text}");
    } else {
        let msg = value
            .as_ref()
            .and_then(|v| v["msg"].as_str())
            .map(str::to_string);
        match (&args.command, &value, failed) {
            (_, _, true) => {
                let why = msg.unwrap_or_else(|| text.trim().to_string());
                eprintln!("mecanywhere-executor ctl: {why} (HTTP {})", answer.status);
            }
            (CtlCommand::Stats, Some(stats), false) => print!("{}", stats_table(stats)),
            (CtlCommand::Health, _, false) => println!("ok"),
            (_, _, false) => println!("{}", msg.unwrap_or_else(|| text.to_string())),
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `/stats` as a table for people.
fn stats_table(s: &Value) -> String {
    let num = |k: &str| s[k].as_f64().unwrap_or(0.0);
    let gpu_model = s["gpu_model"]
        .as_str()
        .filter(|m| !m.is_empty())
        .unwrap_or("-");
    let runtimes = s["runtimes"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let rows = [
        (
            "host",
            format!(
                "{} cores, {} MB; CPU {:.1}% busy, memory {:.1}% used",
                num("total_cpu"),
                num("total_mem"),
                num("used_cpu"),
                num("used_mem")
            ),
        ),
        (
            "task budget",
            format!("{} cores, {} MB", num("task_cpu"), num("task_mem")),
        ),
        (
            "tasks hold",
            format!(
                "{:.1}% of the CPU budget, {:.1}% of the memory budget",
                num("task_used_cpu"),
                num("task_used_mem")
            ),
        ),
        (
            "GPUs",
            format!(
                "{} usable, {} reserved (model: {gpu_model})",
                num("task_gpu"),
                num("task_used_gpu")
            ),
        ),
        ("containers", format!("{}", num("containers"))),
        (
            "stock",
            format!(
                "{} spare containers ({:.1}% of the CPU budget, {:.1}% of the memory budget), \
                 {} free sandboxes",
                num("spare_containers"),
                num("spare_used_cpu"),
                num("spare_used_mem"),
                num("free_sandboxes")
            ),
        ),
        ("runtimes", runtimes),
    ];
    let pulls = s["pulls"].as_array().cloned().unwrap_or_default();
    let pull_rows = pulls.iter().map(|p| {
        let n = |key: &str| p[key].as_u64().unwrap_or(0);
        let mb = |bytes: u64| bytes as f64 / 1e6;
        (
            "pulling",
            format!(
                "{} {} {}/{} layers, {:.0}/{:.0} MB",
                p["image"].as_str().unwrap_or("?"),
                progress_bar(n("bytes_done"), n("bytes_total"), 20),
                n("layers_done"),
                n("layers"),
                mb(n("bytes_done")),
                mb(n("bytes_total"))
            ),
        )
    });
    rows.into_iter()
        .chain(pull_rows)
        .map(|(k, v)| format!("{k:<12} {v}\n"))
        .collect()
}

/// `[#####---------------]`: `done` of `total` in `width` cells (empty while the total is
/// not known).
fn progress_bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as f64 / total as f64) * width as f64).round() as usize
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_become_urls_reachable_from_this_host() {
        assert_eq!(
            url_of_listen("0.0.0.0:2591".parse().unwrap()),
            "http://127.0.0.1:2591"
        );
        assert_eq!(
            url_of_listen("192.0.2.1:80".parse().unwrap()),
            "http://192.0.2.1:80"
        );
    }

    #[test]
    fn stats_read_as_a_table() {
        let table = stats_table(&json!({"total_cpu": 2, "total_mem": 2048, "used_cpu": 1.5,
            "used_mem": 10.0, "task_cpu": 2, "task_mem": 1024, "task_used_cpu": 50.0,
            "task_used_mem": 12.5, "gpu_model": "", "task_gpu": 0, "task_used_gpu": 0,
            "containers": 1, "runtimes": ["container"], "spare_containers": 1,
            "spare_used_cpu": 25.0, "spare_used_mem": 12.5, "free_sandboxes": 2}));
        assert!(table.contains("task budget  2 cores, 1024 MB\n"), "{table}");
        assert!(
            table.contains("tasks hold   50.0% of the CPU budget"),
            "{table}"
        );
        assert!(table.contains("runtimes     container\n"), "{table}");
        assert!(
            table.contains("stock        1 spare containers (25.0% of the CPU budget, 12.5% of the memory budget), 2 free sandboxes\n"),
            "{table}"
        );
        assert!(!table.contains("pulling"), "no pull in flight: {table}");
    }

    #[test]
    fn pulls_in_flight_read_as_progress_bars() {
        let table = stats_table(&json!({"pulls": [
            {"image": "r:5000/big:v1", "layers": 7, "layers_done": 3,
             "bytes_done": 412_000_000u64, "bytes_total": 1_900_000_000u64},
            {"image": "r:5000/new:v1", "layers": 0, "layers_done": 0,
             "bytes_done": 0, "bytes_total": 0}]}));
        assert!(
            table.contains(
                "pulling      r:5000/big:v1 [####----------------] 3/7 layers, 412/1900 MB\n"
            ),
            "{table}"
        );
        assert!(
            table
                .contains("pulling      r:5000/new:v1 [--------------------] 0/0 layers, 0/0 MB\n"),
            "{table}"
        );
        assert_eq!(progress_bar(5, 5, 4), "[####]");
        assert_eq!(progress_bar(9, 5, 4), "[####]");
    }
}
