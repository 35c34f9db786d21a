//! The executor's `/metrics`, read through `mecanywhere_executor::metrics_text`: scrapes,
//! the cold-start phases between two scrapes, and waiting for the executor to settle.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hyper::Method;
use mecanywhere_executor::metrics_text::Scrape;

use crate::conn::Conn;

pub const FREE_SANDBOXES: &str = "meca_sandboxes{state=\"free\"}";
pub const SPARES: &str = "meca_containers{state=\"spare\"}";
pub const SPARES_CLAIMED: &str = "meca_spares_claimed_total";
pub const WARM_REQUESTS: &str = "meca_request_duration_seconds_count{path=\"warm\"}";

pub const PHASE_ORDER: [&str; 4] = ["image", "reserve", "create", "start"];

pub async fn scrape(ctl: &mut Conn) -> Result<Scrape, String> {
    let body = ctl.control(Method::GET, "/metrics").await?;
    Ok(Scrape::parse(&String::from_utf8_lossy(&body)))
}

/// Per phase: (seconds, count) of `meca_cold_start_phase_seconds` in one scrape.
fn phase_sums(metrics: &Scrape) -> BTreeMap<String, (f64, f64)> {
    let mut out = BTreeMap::new();
    for (key, value) in metrics.series() {
        for (suffix, slot) in [("_sum{phase=\"", 0), ("_count{phase=\"", 1)] {
            let prefix = format!("meca_cold_start_phase_seconds{suffix}");
            if let Some(rest) = key.strip_prefix(&prefix) {
                let phase = rest.trim_end_matches("\"}").to_string();
                let entry: &mut (f64, f64) = out.entry(phase).or_default();
                if slot == 0 {
                    entry.0 = value;
                } else {
                    entry.1 = value;
                }
            }
        }
    }
    out
}

/// Per phase: (seconds, count) added between two scrapes.
pub fn phase_diff(before: &Scrape, after: &Scrape) -> BTreeMap<String, (f64, f64)> {
    let b = phase_sums(before);
    phase_sums(after)
        .into_iter()
        .map(|(phase, (sum, count))| {
            let (sum0, count0) = b.get(&phase).copied().unwrap_or_default();
            (phase, (sum - sum0, count - count0))
        })
        .filter(|(_, (_, count))| *count > 0.0)
        .collect()
}

/// Waits until the executor holds exactly `idle` idle containers and nothing is starting,
/// busy or being removed (e.g. the prewarmed container is ready).
pub async fn wait_settled(ctl: &mut Conn, idle: f64, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let m = scrape(ctl).await?;
        if m.value("meca_containers{state=\"idle\"}") == idle
            && m.value("meca_containers{state=\"starting\"}") == 0.0
            && m.value("meca_containers{state=\"busy\"}") == 0.0
            && m.value("meca_containers{state=\"removing\"}") == 0.0
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "executor did not settle with {idle} idle container(s) within {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the executor's gauge `key` reads `value`.
pub async fn wait_gauge(ctl: &mut Conn, key: &str, value: f64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if scrape(ctl).await?.value(key) == value {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{key} did not reach {value} within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes every warm container and spare (pause), then lets the prewarm keeper start its
/// key again and the sandbox pool (`sandbox_pool` holders) refill: every cold start measured
/// after it meets the same host, in the executor's steady state.
pub async fn reset_executor(ctl: &mut Conn, sandbox_pool: f64) -> Result<(), String> {
    ctl.control(Method::POST, "/pause").await?;
    ctl.control(Method::POST, "/unpause").await?;
    wait_settled(ctl, 1.0, Duration::from_secs(60)).await?;
    wait_gauge(ctl, FREE_SANDBOXES, sandbox_pool).await?;
    // Let dockerd finish its own cleanup of the removed containers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_added_between_two_scrapes() {
        let before = Scrape::parse(
            "meca_cold_start_phase_seconds_sum{phase=\"create\"} 0.5\n\
             meca_cold_start_phase_seconds_count{phase=\"create\"} 2\n\
             meca_cold_start_phase_seconds_sum{phase=\"image\"} 0.1\n\
             meca_cold_start_phase_seconds_count{phase=\"image\"} 2\n",
        );
        let after = Scrape::parse(
            "# TYPE meca_cold_start_phase_seconds histogram\n\
             meca_cold_start_phase_seconds_sum{phase=\"create\"} 0.75\n\
             meca_cold_start_phase_seconds_count{phase=\"create\"} 3\n\
             meca_cold_start_phase_seconds_bucket{phase=\"create\",le=\"0.1\"} 3\n\
             meca_cold_start_phase_seconds_sum{phase=\"image\"} 0.1\n\
             meca_cold_start_phase_seconds_count{phase=\"image\"} 2\n\
             meca_cold_start_phase_seconds_sum{phase=\"start\"} 0.25\n\
             meca_cold_start_phase_seconds_count{phase=\"start\"} 1\n",
        );
        let diff = phase_diff(&before, &after);
        assert_eq!(
            diff,
            BTreeMap::from([
                ("create".to_string(), (0.25, 1.0)),
                ("start".to_string(), (0.25, 1.0)),
            ])
        );
    }
}
