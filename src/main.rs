//! The `mecanywhere-executor` daemon: command line, logging, and the process lifecycle
//! (start, serve, stop on `/stop` or SIGINT/SIGTERM with every task container removed).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod ctl;
use tokio_util::sync::CancellationToken;

use mecanywhere_executor::config::EngineChoice;
use mecanywhere_executor::config::{Config, LogFormat};
use mecanywhere_executor::engine::docker::DockerEngine;
use mecanywhere_executor::engine::swarm::SwarmEngine;
use mecanywhere_executor::engine::{Engine, EngineError};
use mecanywhere_executor::executor::{Executor, GpuLoader};
use mecanywhere_executor::gpu::nvml::NvmlInventory;
use mecanywhere_executor::gpu::{GpuInventory, IDLE_PERCENT};

/// Runs MECAnywhere tasks in isolated containers on the local Docker engine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// YAML config file [default: ./mecanywhere_executor.yaml when present]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve the API on [default: `listen` in the config, else 127.0.0.1:2591]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Log format: `text` for people, `json` (one object per line) for log collectors
    /// [default: `log_format` in the config, else text]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the NVIDIA GPUs NVML sees (count, model, UUIDs, utilisation, memory) and exit.
    Gpus,
    /// Talk to a running executor: stats, pause, unpause, update-config, stop, run a task.
    Ctl(ctl::CtlArgs),
    /// Print the API's OpenAPI document (as served at /openapi.json) and exit.
    Openapi,
}

/// The `gpus` subcommand.
fn print_gpus() -> ExitCode {
    let inventory = match NvmlInventory::load() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("mecanywhere-executor: {e}");
            return ExitCode::from(1);
        }
    };
    let devices = match inventory.devices() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("mecanywhere-executor: cannot list GPUs: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{} GPU(s)", devices.len());
    for gpu in devices {
        match inventory.load(&gpu.uuid) {
            Ok(load) => println!(
                "[{}] {} {} memory {}/{} MB, utilisation compute {}% memory {}% ({})",
                gpu.index,
                gpu.uuid,
                gpu.model,
                load.memory_used_mb,
                gpu.memory_total_mb,
                load.compute_percent,
                load.memory_percent,
                if load.is_idle() {
                    format!("free for tasks: both <= {IDLE_PERCENT}%")
                } else {
                    "busy".to_string()
                }
            ),
            Err(e) => println!(
                "[{}] {} {}: utilisation unreadable: {e}",
                gpu.index, gpu.uuid, gpu.model
            ),
        }
    }
    ExitCode::SUCCESS
}

/// Accepts the Go executor's single-dash `-config FILE` / `-config=FILE` too.
fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| match arg.to_str() {
            Some("-config") => OsString::from("--config"),
            Some(s) if s.starts_with("-config=") => OsString::from(format!("-{s}")),
            Some("-listen") => OsString::from("--listen"),
            Some(s) if s.starts_with("-listen=") => OsString::from(format!("-{s}")),
            _ => arg,
        })
        .collect()
}

async fn shutdown_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = stop.cancelled() => return,
    }
    stop.cancel();
}

/// On each SIGHUP (`systemctl reload`), reads the config file again and applies it
/// ([`Executor::reload`]); a file that no longer parses is named in the log and changes nothing.
async fn reload_on_hangup(executor: Arc<Executor>, path: Option<PathBuf>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP: reloading the config is off");
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reading the config file again");
        let config = match Config::load(path.as_deref()) {
            Ok((config, _)) => config,
            Err(e) => {
                tracing::error!(error = %e, "config not reloaded: the file is not valid; nothing changed");
                continue;
            }
        };
        if let Err(e) = executor.reload(config).await {
            tracing::error!(error = %e, "config not reloaded");
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines. Text is
/// coloured only on a terminal (and not with `NO_COLOR` set): a journal or a log file gets
/// plain lines.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Each line one JSON object: the event's fields, its level and target, and the
        // spans it happened in (the request span carries the request id).
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args_os()));
    match cli.command {
        Some(Command::Gpus) => return print_gpus(),
        Some(Command::Ctl(args)) => return ctl::run(args).await,
        Some(Command::Openapi) => {
            println!("{}", mecanywhere_executor::api::document::document());
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    let (config, path) = match Config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("mecanywhere-executor: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.log_format.unwrap_or(config.log_format));
    match &path {
        Some(p) => tracing::info!(file = %p.display(), "config loaded"),
        None => tracing::info!("no config file: using defaults"),
    }
    let config_listen = config.listen;
    let limits = mecanywhere_executor::api::server::Limits {
        max_connections: config.max_connections as usize,
        max_connections_per_peer: config.max_connections_per_peer as usize,
        header_read_timeout: config.header_read_timeout,
        idle_connection_timeout: config.idle_connection_timeout,
    };
    let engine: Arc<dyn Engine> = match connect_engine(&config).await {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("mecanywhere-executor: {e}");
            return ExitCode::from(1);
        }
    };
    let gpu_loader: GpuLoader = Box::new(|| {
        NvmlInventory::load().map(|inventory| Arc::new(inventory) as Arc<dyn GpuInventory>)
    });
    let executor = match Executor::start(config, engine, gpu_loader).await {
        Ok(executor) => executor,
        Err(e) => {
            eprintln!("mecanywhere-executor: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let listen = cli.listen.unwrap_or(config_listen);
    let listener = match mecanywhere_executor::api::server::bind(listen, limits) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mecanywhere-executor: cannot listen on {listen}: {e}");
            executor.shutdown().await;
            return ExitCode::from(1);
        }
    };
    tracing::info!(addr = %listen, "listening");
    if !listen.ip().is_loopback() && executor.config().auth_token.is_none() {
        tracing::warn!(
            addr = %listen,
            "listening beyond this host without auth_token: anyone who can reach this address \
             can run any image here, pause or stop the executor; set auth_token (or \
             MECANYWHERE_EXECUTOR_TOKEN) or listen on 127.0.0.1"
        );
    }

    let stop = CancellationToken::new();
    tokio::spawn(shutdown_signal(stop.clone()));
    let reloads = tokio::spawn(reload_on_hangup(Arc::clone(&executor), path));
    let app = mecanywhere_executor::api::router(Arc::clone(&executor), stop.clone());
    let refused_per_peer = executor
        .metrics()
        .connections_refused
        .get_or_create_owned(&mecanywhere_executor::metrics::ReasonLabel { reason: "per_peer" });
    let server = tokio::spawn(mecanywhere_executor::api::server::serve(
        listener,
        app,
        limits,
        stop.clone(),
        Duration::from_secs(10),
        refused_per_peer,
    ));

    stop.cancelled().await;
    reloads.abort();
    executor.shutdown().await;
    if let Err(e) = server.await {
        tracing::error!(error = %e, "server task failed");
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// The engine `engine:` names, on the daemon `DOCKER_HOST` names.
async fn connect_engine(config: &Config) -> Result<Arc<dyn Engine>, EngineError> {
    let docker = DockerEngine::connect().await?;
    Ok(match &config.engine {
        EngineChoice::Docker => Arc::new(docker),
        EngineChoice::Swarm(settings) => Arc::new(
            SwarmEngine::connect(
                docker,
                settings.clone(),
                config.queue_timeout,
                config.pull_timeout,
            )
            .await?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_flags_are_accepted() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(normalize_args(args.iter().map(OsString::from))).unwrap()
        };
        let cli = parse(&["x", "-config", "a.yaml"]);
        assert_eq!(cli.config, Some(PathBuf::from("a.yaml")));
        let cli = parse(&["x", "-config=b.yaml", "--listen", "127.0.0.1:1"]);
        assert_eq!(cli.config, Some(PathBuf::from("b.yaml")));
        assert_eq!(cli.listen, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(parse(&["x"]).listen, None);
    }
}
