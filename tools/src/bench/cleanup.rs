//! Cleanup: everything the bench creates is registered here before it exists, and removed by
//! [`cleanup`] from the guard in `main`, from the panic hook, and on Ctrl-C / SIGTERM.

use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;

use mecanywhere_tools::docker;

use crate::fixture::LABEL_BENCH;
use mecanywhere_executor::engine::LABEL_EXECUTOR;

pub struct Leftovers {
    pub executor: Option<Child>,
    pub executor_name: Option<String>,
    pub bench_label: Option<String>,
    pub tags: Vec<String>,
    pub temp_dir: Option<PathBuf>,
}

static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers {
    executor: None,
    executor_name: None,
    bench_label: None,
    tags: Vec::new(),
    temp_dir: None,
});

pub fn leftovers() -> std::sync::MutexGuard<'static, Leftovers> {
    LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes whatever is still registered; idempotent. Never panics.
pub fn cleanup() {
    // try_lock: a panic inside cleanup must not deadlock the panic hook.
    let mut state = match LEFTOVERS.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if let Some(mut child) = state.executor.take() {
        if let Ok(None) = child.try_wait() {
            eprintln!("bench: cleanup: killing executor (pid {})", child.id());
            let _ = child.kill();
        }
        let _ = child.wait();
    }
    if let Some(name) = state.executor_name.take() {
        let ids = docker::labelled(LABEL_EXECUTOR, &name);
        if !ids.is_empty() {
            eprintln!(
                "bench: cleanup: removing {} executor container(s)",
                ids.len()
            );
            docker::remove(&ids, true);
        }
    }
    if let Some(label) = state.bench_label.take() {
        let ids = docker::labelled(LABEL_BENCH, &label);
        if !ids.is_empty() {
            eprintln!(
                "bench: cleanup: removing {} baseline container(s)",
                ids.len()
            );
            docker::remove(&ids, true);
        }
    }
    let tags = std::mem::take(&mut state.tags);
    if !tags.is_empty() {
        let present: Vec<&String> = tags.iter().filter(|t| docker::image_present(t)).collect();
        if !present.is_empty() {
            let mut rmi = vec!["rmi"];
            rmi.extend(present.iter().map(|t| t.as_str()));
            docker::cli(&rmi);
            eprintln!("bench: cleanup: removed {} image tag(s)", present.len());
        }
    }
    if let Some(dir) = state.temp_dir.take() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup();
    }
}
