//! The host and the executor's processes as `/proc` shows them: CPU time, the machine's
//! description.

use std::process::Command;

use serde_json::{json, Value};

/// utime + stime of the process (all threads, dead ones included), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime field 14, stime field 15.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Time on CPU of the live threads, in nanoseconds (schedstat: finer than clock ticks).
pub fn cpu_ns_schedstat(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Busy time of the whole host (all CPUs: user, nice, system, irq, softirq; not idle, iowait
/// or steal), in clock ticks.
pub fn host_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    get(0) + get(1) + get(2) + get(5) + get(6)
}

/// The host's busy time since [`host_busy_ticks`] read `busy0`, in ms.
pub fn host_busy_ms_since(busy0: u64) -> f64 {
    host_busy_ticks().saturating_sub(busy0) as f64 * 1000.0 / ticks_per_second() as f64
}

/// Clock ticks per second (`getconf CLK_TCK`, else 100), read once.
pub fn ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(clock_ticks)
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// The host's cores as the bench sees them.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The machine's description (the JSON's `machine`), printed as the bench's first line.
pub fn describe_machine(cores: usize, docker_version: &str) -> Value {
    let machine = json!({
        "cpu_model": cpu_model(),
        "cores": cores,
        "kernel": kernel(),
        "docker": docker_version,
    });
    println!(
        "bench: {} · {} cores · kernel {} · Docker {}",
        machine["cpu_model"].as_str().unwrap_or(""),
        cores,
        machine["kernel"].as_str().unwrap_or(""),
        docker_version
    );
    machine
}
