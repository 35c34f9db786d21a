//! The warm path: the default key's container through the executor against a container of
//! the same image and limits called directly (row 1), and the same with many image tags on
//! the host (row 6).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bollard::query_parameters::TagImageOptions;
use bollard::Docker;
use bytes::Bytes;
use mecanywhere_tools::docker;
use serde_json::{json, Value};

use crate::baseline::engine_cold;
use crate::cleanup::leftovers;
use crate::conn::{execute_answer, execute_body, timed_calls, Conn};
use crate::error::err;
use crate::fixture::{IMAGE, INPUT};
use crate::host::cpu_ns_schedstat;
use crate::session::Session;
use crate::stats::{percentiles, Percentiles};
use crate::table::{row, us, verdict, Row};
use mecanywhere_executor::engine::{LABEL_EXECUTOR, LABEL_MEM, LABEL_ROLE};

pub const WARM_UP_CALLS: usize = 200;
pub const LATENCY_CALLS: usize = 2000;
pub const TAGGED_CALLS: usize = 1000;
pub const EXTRA_TAGS: usize = 50;
/// Targets from the issue.
const P50_OVERHEAD_TARGET_US: f64 = 200.0;
const P99_OVERHEAD_TARGET_US: f64 = 1000.0;

pub struct Bodies {
    /// `POST /` to the executor, default resources.
    pub exec: Bytes,
    pub exec_answer: Bytes,
    /// The input, as sent straight to the task (and echoed back).
    pub input: Bytes,
}

/// Both ends of the warm path, warmed up: the executor's task (and its sandbox's relay) and
/// the direct container with its connection.
pub struct WarmPath {
    pub bodies: Bodies,
    pub direct: Conn,
    /// The direct container: the caller removes it before `/stop`.
    pub direct_id: String,
    pub task_addr: SocketAddr,
    exec_pid: u32,
    relay_pid: u32,
    /// The task's own process (host PID), to compare its CPU per request with the executor's.
    pub task_pid: u32,
}

impl WarmPath {
    /// Starts the default key's container (1 core, 128 MB) with a first call on `conn`, and
    /// the direct container; warms both up.
    pub async fn open(conn: &mut Conn, s: &Session) -> Result<WarmPath, String> {
        let input = Bytes::from_static(INPUT.as_bytes());
        let bodies = Bodies {
            exec: execute_body(None, None, INPUT),
            exec_answer: execute_answer(INPUT),
            input: input.clone(),
        };
        // The first call starts the default key's container (1 core, 128 MB).
        let mut scratch = Vec::with_capacity(WARM_UP_CALLS);
        timed_calls(conn, &bodies.exec, &bodies.exec_answer, 1, &mut scratch).await?;
        // The key's container, not a spare of its image started since (also 128 MB).
        let ids: Vec<String> = docker::lines(&[
            "ps",
            "--filter",
            &format!("label={LABEL_EXECUTOR}={}", s.name),
            "--filter",
            &format!("label={LABEL_MEM}=128"),
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{LABEL_ROLE}\"}}}}"),
        ])
        .into_iter()
        .filter(|l| l.split_whitespace().nth(1) != Some("spare"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
        let [id] = ids.as_slice() else {
            return Err(format!(
                "expected one task container for the default key, found {ids:?}"
            ));
        };
        // The executor's task is isolated (no network; the executor reaches it through its
        // sandbox's relay socket), so "direct" is a container of the same image and limits
        // that the bench starts on Docker's default bridge and calls at its address.
        let mode = docker::cli(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", id]);
        let holder = mode
            .strip_prefix("container:")
            .ok_or_else(|| format!("the task is not in a sandbox: network mode {mode:?}"))?
            .to_string();
        let relay_pid: u32 = docker::cli(&["inspect", "-f", "{{.State.Pid}}", &holder])
            .parse()
            .map_err(err("sandbox holder pid"))?;
        let (_, direct_id) = engine_cold(&s.docker, &s.bench_label, 1.0, 128, &input).await?;
        let ip: IpAddr = docker::cli(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &direct_id,
        ])
        .parse()
        .map_err(err("direct container address"))?;
        let task_addr = SocketAddr::new(ip, 8080);
        let task_pid: u32 = docker::cli(&["inspect", "-f", "{{.State.Pid}}", id])
            .parse()
            .map_err(err("task container pid"))?;
        let mut direct = Conn::open(task_addr).await?;
        scratch.clear();
        timed_calls(
            conn,
            &bodies.exec,
            &bodies.exec_answer,
            WARM_UP_CALLS,
            &mut scratch,
        )
        .await?;
        scratch.clear();
        timed_calls(
            &mut direct,
            &bodies.input,
            &bodies.input,
            WARM_UP_CALLS,
            &mut scratch,
        )
        .await?;
        Ok(WarmPath {
            bodies,
            direct,
            direct_id,
            task_addr,
            exec_pid: s.exec_pid,
            relay_pid,
            task_pid,
        })
    }

    /// CPU time of the executor's path (the executor and its task's relay), ns.
    pub fn path_cpu_ns(&self) -> u64 {
        cpu_ns_schedstat(self.exec_pid) + cpu_ns_schedstat(self.relay_pid)
    }

    /// `n` calls through the executor (on `conn`) and `n` straight to the task, interleaved
    /// in blocks of 100 so that both see the same noise on the shared cores; within `limit`.
    async fn interleaved_latency(
        &mut self,
        conn: &mut Conn,
        n: usize,
        limit: Duration,
        what: &'static str,
    ) -> Result<(Vec<u64>, Vec<u64>), String> {
        let bodies = &self.bodies;
        let direct = &mut self.direct;
        let calls = async {
            let mut via = Vec::with_capacity(n);
            let mut straight = Vec::with_capacity(n);
            let block = 100;
            let mut done = 0;
            while done < n {
                let k = block.min(n - done);
                timed_calls(conn, &bodies.exec, &bodies.exec_answer, k, &mut via).await?;
                timed_calls(direct, &bodies.input, &bodies.input, k, &mut straight).await?;
                done += k;
            }
            Ok::<_, String>((via, straight))
        };
        tokio::time::timeout(limit, calls)
            .await
            .map_err(err(what))?
    }
}

/// Row 1: warm latency, executor against direct.
pub struct Latency {
    exec: Percentiles,
    direct: Percentiles,
    cpu_us: f64,
}

impl Latency {
    pub async fn measure(conn: &mut Conn, warm: &mut WarmPath) -> Result<Latency, String> {
        let cpu0 = warm.path_cpu_ns();
        let (mut via, mut straight) = warm
            .interleaved_latency(
                conn,
                LATENCY_CALLS,
                Duration::from_secs(120),
                "warm latency",
            )
            .await?;
        let cpu_us = warm.path_cpu_ns().saturating_sub(cpu0) as f64 / 1000.0 / LATENCY_CALLS as f64;
        Ok(Latency {
            exec: percentiles(&mut via),
            direct: percentiles(&mut straight),
            cpu_us,
        })
    }

    fn p50_overhead(&self) -> f64 {
        self.exec.p50_us - self.direct.p50_us
    }

    fn p99_overhead(&self) -> f64 {
        self.exec.p99_us - self.direct.p99_us
    }

    pub fn rows(&self) -> Vec<Row> {
        let (p50, p99) = (self.p50_overhead(), self.p99_overhead());
        vec![
            row(
                "1",
                format!(
                    "warm latency p50 ({LATENCY_CALLS} seq. calls; executor+relay CPU {:.0} µs/req)",
                    self.cpu_us
                ),
                us(self.exec.p50_us),
                format!("{} direct", us(self.direct.p50_us)),
                format!("{p50:+.0} µs"),
                format!(
                    "≤ +{P50_OVERHEAD_TARGET_US:.0} µs: {}",
                    verdict(p50 <= P50_OVERHEAD_TARGET_US)
                ),
            ),
            row(
                "",
                "warm latency p99",
                us(self.exec.p99_us),
                format!("{} direct", us(self.direct.p99_us)),
                format!("{p99:+.0} µs"),
                format!(
                    "≤ +{P99_OVERHEAD_TARGET_US:.0} µs: {}",
                    verdict(p99 <= P99_OVERHEAD_TARGET_US)
                ),
            ),
        ]
    }

    /// The JSON's `warm_latency`.
    pub fn json(&self) -> Value {
        json!({
            "calls": LATENCY_CALLS,
            "executor": self.exec.json(),
            "direct": self.direct.json(),
            "overhead_p50_us": self.p50_overhead(),
            "overhead_p99_us": self.p99_overhead(),
            "executor_cpu_us_per_request": self.cpu_us,
        })
    }

    pub fn targets(&self) -> Vec<Value> {
        let (p50, p99) = (self.p50_overhead(), self.p99_overhead());
        vec![
            json!({"name": "warm_p50_overhead", "target": format!("<= {P50_OVERHEAD_TARGET_US} us"), "value_us": p50, "met": p50 <= P50_OVERHEAD_TARGET_US}),
            json!({"name": "warm_p99_overhead", "target": format!("<= {P99_OVERHEAD_TARGET_US} us"), "value_us": p99, "met": p99 <= P99_OVERHEAD_TARGET_US}),
        ]
    }
}

/// Row 6: warm latency just before and with [`EXTRA_TAGS`] extra tags of the image.
pub struct ManyImages {
    image_entries: usize,
    untagged_exec: Percentiles,
    untagged_direct: Percentiles,
    tagged_exec: Percentiles,
    tagged_direct: Percentiles,
}

impl ManyImages {
    pub async fn measure(
        conn: &mut Conn,
        warm: &mut WarmPath,
        docker: &Docker,
    ) -> Result<ManyImages, String> {
        let limit = Duration::from_secs(120);
        let (mut via0, mut straight0) = warm
            .interleaved_latency(conn, TAGGED_CALLS, limit, "warm latency before tagging")
            .await?;
        let untagged_exec = percentiles(&mut via0);
        let untagged_direct = percentiles(&mut straight0);
        for i in 0..EXTRA_TAGS {
            let tag = format!("meca-bench-extra:{i}");
            leftovers().tags.push(tag);
            let options = TagImageOptions {
                repo: Some("meca-bench-extra".into()),
                tag: Some(i.to_string()),
            };
            docker
                .tag_image(IMAGE, Some(options))
                .await
                .map_err(err("docker tag"))?;
        }
        let image_entries = docker::lines(&["images", "-q"]).len();
        let (mut via1, mut straight1) = warm
            .interleaved_latency(conn, TAGGED_CALLS, limit, "warm latency with tags")
            .await?;
        let tagged_exec = percentiles(&mut via1);
        let tagged_direct = percentiles(&mut straight1);
        {
            let tags = std::mem::take(&mut leftovers().tags);
            let mut rmi = vec!["rmi"];
            rmi.extend(tags.iter().map(String::as_str));
            docker::cli(&rmi);
            // Anything that did not go stays registered for the final cleanup.
            let left: Vec<String> = tags
                .into_iter()
                .filter(|t| docker::image_present(t))
                .collect();
            leftovers().tags = left;
        }
        Ok(ManyImages {
            image_entries,
            untagged_exec,
            untagged_direct,
            tagged_exec,
            tagged_direct,
        })
    }

    /// Growth of the executor's own overhead (executor − direct), which cancels shared
    /// noise: (without tags, with tags), µs.
    fn overheads(&self) -> (f64, f64) {
        (
            self.untagged_exec.p50_us - self.untagged_direct.p50_us,
            self.tagged_exec.p50_us - self.tagged_direct.p50_us,
        )
    }

    fn met(&self) -> bool {
        let (overhead0, overhead1) = self.overheads();
        overhead1 <= overhead0 + (0.2 * overhead0.abs()).max(50.0)
    }

    pub fn rows(&self) -> Vec<Row> {
        let (overhead0, overhead1) = self.overheads();
        vec![
            row(
                "6",
                format!(
                    "warm p50 / p99, {EXTRA_TAGS} extra tags ({} image list entries)",
                    self.image_entries
                ),
                format!(
                    "{:.0} / {:.0} µs",
                    self.tagged_exec.p50_us, self.tagged_exec.p99_us
                ),
                format!(
                    "{:.0} / {:.0} µs no tags",
                    self.untagged_exec.p50_us, self.untagged_exec.p99_us
                ),
                format!(
                    "{:+.0} µs",
                    self.tagged_exec.p50_us - self.untagged_exec.p50_us
                ),
                format!("no growth*: {}", verdict(self.met())),
            ),
            row(
                "",
                "  overhead p50 (executor − direct), tags / no tags",
                us(overhead1),
                us(overhead0),
                format!("{:+.0} µs", overhead1 - overhead0),
                "",
            ),
        ]
    }

    /// The JSON's `many_images`.
    pub fn json(&self) -> Value {
        let (overhead0, overhead1) = self.overheads();
        json!({
            "extra_tags": EXTRA_TAGS,
            "calls": TAGGED_CALLS,
            "image_list_entries": self.image_entries,
            "without_tags": {"executor": self.untagged_exec.json(), "direct": self.untagged_direct.json()},
            "with_tags": {"executor": self.tagged_exec.json(), "direct": self.tagged_direct.json()},
            "overhead_p50_growth_us": overhead1 - overhead0,
        })
    }

    pub fn target(&self) -> Value {
        let (overhead0, overhead1) = self.overheads();
        json!({"name": "warm_latency_with_many_images", "target": "overhead p50 with tags <= without + max(20%, 50 us) (bench criterion)", "value_us": overhead1 - overhead0, "met": self.met()})
    }
}
