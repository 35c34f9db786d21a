//! The executor process a tool drives: this build's binary, on a free loopback port, with a
//! config and a log file of the tool's.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How to build the executor's binary that [`executor_binary`] looks for.
pub const BUILD_HINT: &str = "cargo build --release";

/// `mecanywhere-executor` next to the running tool: both are built into the same
/// `target/<profile>/` (the executor by `cargo build --release`, the tools by
/// `cargo build --release -p mecanywhere-tools`).
pub fn executor_binary() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("mecanywhere-executor"))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `binary --config <config> --listen <addr>`, standard output and error into `log`
/// (created), no standard input, `NO_COLOR=1`.
pub fn spawn_executor(
    binary: &Path,
    config: &Path,
    addr: SocketAddr,
    log: &Path,
) -> std::io::Result<Child> {
    let log = std::fs::File::create(log)?;
    let log2 = log.try_clone()?;
    Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(addr.to_string())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
}
