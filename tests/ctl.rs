//! `mecanywhere-executor ctl` against a real executor (and so a real Docker daemon): the
//! operator flows of the README, where it finds the executor and its token, what it prints,
//! and its exit codes.

mod common;

use std::process::{Command, Output};

use common::*;

/// Runs `mecanywhere-executor ctl ARGS` with `env` (and no token or URL from this process's
/// environment).
fn ctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mecanywhere-executor"))
        .arg("ctl")
        .args(args)
        .env_remove("MECANYWHERE_EXECUTOR_TOKEN")
        .env_remove("MECANYWHERE_EXECUTOR_URL")
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn operator_flow_stats_pause_update_unpause_run_stop() {
    let mut ex = Executor::start("ctl-flow", "");
    let url = ex.url("");
    let with_url = |args: &[&str]| {
        let mut all = vec!["--url", url.as_str()];
        all.extend_from_slice(args);
        ctl(&all, &[])
    };

    let stats = with_url(&["stats"]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    let table = stdout(&stats);
    assert!(
        table.contains("task budget") && table.contains("cores"),
        "{table}"
    );
    let json = with_url(&["--json", "stats"]);
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("--json is JSON");
    assert!(parsed["task_cpu"].is_number(), "{parsed}");

    let paused = with_url(&["pause"]);
    assert!(paused.status.success());
    assert!(stdout(&paused).contains("paused"), "{}", stdout(&paused));
    // While paused, stats are refused: a failure, exit 1, the reason on stderr.
    let refused = with_url(&["stats"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("failed to retrieve resource stats"));

    let updated = with_url(&[
        "update-config",
        "--cpu",
        "1",
        "--mem",
        "512",
        "--timeout",
        "2",
    ]);
    assert!(updated.status.success(), "{}", stderr(&updated));
    let bad = with_url(&["update-config", "--cpu", "0"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("cpu"), "{}", stderr(&bad));
    assert!(with_url(&["unpause"]).status.success());
    let stats = with_url(&["--json", "stats"]);
    let parsed: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(parsed["task_mem"], serde_json::json!(512));

    let ran = with_url(&["run", ECHO, "--cpu", "0.5", "--mem", "64", "hello from ctl"]);
    assert!(ran.status.success(), "{}", stderr(&ran));
    assert_eq!(stdout(&ran).trim_end(), "hello from ctl");
    let crashed = with_url(&["run", "meca-test-crash:latest", "x"]);
    assert_eq!(crashed.status.code(), Some(1));
    assert!(
        stderr(&crashed).contains("exited with code 3"),
        "{}",
        stderr(&crashed)
    );

    let stopped = with_url(&["stop"]);
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    assert!(ex.wait_exit(std::time::Duration::from_secs(60)).is_some());
}

#[test]
fn url_and_token_come_from_flags_the_environment_or_the_config() {
    let ex = Executor::start("ctl-token", "auth_token: \"s3cret-token\"");
    let url = ex.url("");
    // Without the token: refused (401), exit 1.
    let refused = ctl(&["--url", &url, "stats"], &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("401"), "{}", stderr(&refused));
    // From the flag, from the environment.
    assert!(
        ctl(&["--url", &url, "--token", "s3cret-token", "stats"], &[])
            .status
            .success()
    );
    let from_env = ctl(
        &["stats"],
        &[
            ("MECANYWHERE_EXECUTOR_URL", url.as_str()),
            ("MECANYWHERE_EXECUTOR_TOKEN", "s3cret-token"),
        ],
    );
    assert!(from_env.status.success(), "{}", stderr(&from_env));
    // From a config file: its `listen` and `auth_token`.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("executor.yaml");
    std::fs::write(
        &config,
        format!("listen: 0.0.0.0:{}\nauth_token: s3cret-token\n", ex.port),
    )
    .unwrap();
    let from_config = ctl(&["--config", config.to_str().unwrap(), "health"], &[]);
    assert!(from_config.status.success(), "{}", stderr(&from_config));
    assert_eq!(stdout(&from_config).trim(), "ok");
    assert!(ctl(&["--config", config.to_str().unwrap(), "stats"], &[])
        .status
        .success());
}

#[test]
fn an_unreachable_executor_and_bad_usage_have_their_own_exit_codes() {
    let port = free_port();
    let down = ctl(
        &["--url", &format!("http://127.0.0.1:{port}"), "stats"],
        &[],
    );
    assert_eq!(down.status.code(), Some(3), "{}", stderr(&down));
    assert!(stderr(&down).contains("cannot reach the executor"));
    let usage = ctl(&["--url", "ftp://x", "stats"], &[]);
    assert_eq!(usage.status.code(), Some(2));
    let usage = ctl(&["frobnicate"], &[]);
    assert_eq!(usage.status.code(), Some(2));
}
