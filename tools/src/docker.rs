//! The Docker CLI, for lookups and cleanup; nothing measured goes through it.

use std::process::{Command, Stdio};

/// Runs `docker <args>`: its standard output, trimmed (standard error is dropped); an error
/// only when the CLI cannot be run at all.
pub fn try_cli(args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// [`try_cli`], empty when the CLI cannot be run.
pub fn cli(args: &[&str]) -> String {
    try_cli(args).unwrap_or_default()
}

/// The non-empty lines of [`cli`], trimmed.
pub fn lines(args: &[&str]) -> Vec<String> {
    cli(args)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Ids of the containers, running or not, that carry the label `key=value`.
pub fn labelled(key: &str, value: &str) -> Vec<String> {
    lines(&["ps", "-aq", "--filter", &format!("label={key}={value}")])
}

/// Whether the image (or tag) is on the host.
pub fn image_present(image: &str) -> bool {
    !cli(&["image", "inspect", "-f", "{{.Id}}", image]).is_empty()
}

/// Removes containers by force (`docker rm -f`), with their anonymous volumes when `volumes`
/// (`-v`).
pub fn remove(ids: &[String], volumes: bool) {
    let mut rm = vec!["rm", "-f"];
    if volumes {
        rm.push("-v");
    }
    rm.extend(ids.iter().map(String::as_str));
    cli(&rm);
}
