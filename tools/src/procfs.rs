//! Readings of a process from `/proc`.

/// A field of `/proc/<pid>/status` given in kB (`"VmRSS:"`, `"VmHWM:"`); 0 when unreadable.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_zero_for_an_unknown_field() {
        assert!(status_kb(std::process::id(), "VmRSS:") > 0);
        assert_eq!(status_kb(std::process::id(), "NoSuchField:"), 0);
    }
}
