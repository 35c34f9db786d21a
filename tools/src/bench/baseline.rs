//! The Docker baseline: the task's container created, started, followed to its ready line
//! and called once through the Docker API, as the executor would, without the executor.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, LogsOptions, RemoveContainerOptions,
    StartContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::{Method, StatusCode};

use crate::conn::Conn;
use crate::error::err;
use crate::fixture::{IMAGE, LABEL_BENCH};
use crate::host::{host_busy_ms_since, host_busy_ticks};
use mecanywhere_executor::engine::READY_LINE;

#[derive(Clone)]
pub struct EngineCold {
    pub total_ms: f64,
    pub host_cpu_ms: f64,
    /// create, start, ready (log line), inspect (address), first_call (ms).
    pub phases: BTreeMap<String, f64>,
    pub answered_at: Instant,
}

pub async fn remove_baseline(docker: &Docker, id: &str) -> Result<(), String> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    docker
        .remove_container(id, Some(options))
        .await
        .map_err(err("baseline: remove"))
}

/// The engine baseline: the same container (limits and hardening as the executor sets them)
/// created, started, followed to its ready line and called once, through the Docker API.
/// Returns the container's id too: the caller removes it (outside the timed part); on error
/// it is removed here.
pub async fn engine_cold(
    docker: &Docker,
    bench_label: &str,
    cpu: f64,
    mem: u64,
    input: &Bytes,
) -> Result<(EngineCold, String), String> {
    let memory = mem as i64 * 1024 * 1024;
    let host_config = HostConfig {
        nano_cpus: Some((cpu * 1e9) as i64),
        memory: Some(memory),
        memory_swap: Some(memory),
        privileged: Some(false),
        security_opt: Some(vec!["no-new-privileges".into()]),
        cap_drop: Some(vec!["ALL".into()]),
        pids_limit: Some(1024),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("nofile".into()),
            soft: Some(4096),
            hard: Some(4096),
        }]),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "10m".to_string()),
                ("max-file".to_string(), "2".to_string()),
            ])),
        }),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        labels: Some(HashMap::from([(
            LABEL_BENCH.to_string(),
            bench_label.to_string(),
        )])),
        exposed_ports: Some(HashMap::from([("8080/tcp".to_string(), HashMap::new())])),
        host_config: Some(host_config),
        ..Default::default()
    };
    let busy0 = host_busy_ticks();
    let t0 = Instant::now();
    let id = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(err("baseline: create"))?
        .id;
    let t_created = Instant::now();
    let result = async {
        docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .map_err(err("baseline: start"))?;
        let t_started = Instant::now();
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut logs = docker.logs(&id, Some(options));
        let mut pending: Vec<u8> = Vec::new();
        let mut ready = false;
        while let Some(item) = logs.next().await {
            if let LogOutput::StdOut { message } | LogOutput::Console { message } =
                item.map_err(err("baseline: logs"))?
            {
                pending.extend_from_slice(&message);
                if pending
                    .split(|b| *b == b'\n')
                    .any(|line| line.trim_ascii() == READY_LINE.as_bytes())
                {
                    ready = true;
                    break;
                }
            }
        }
        drop(logs);
        if !ready {
            return Err("baseline: the container's output ended before its ready line".into());
        }
        let t_ready = Instant::now();
        let info = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .map_err(err("baseline: inspect"))?;
        let ip: IpAddr = info
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|n| n.get("bridge").and_then(|e| e.ip_address.clone()))
            .and_then(|ip| ip.parse().ok())
            .ok_or("baseline: container has no address on the bridge network")?;
        let t_inspected = Instant::now();
        let mut conn = Conn::open(SocketAddr::new(ip, 8080)).await?;
        let (status, answer) = conn.send(Method::POST, "/", input.clone()).await?;
        let t_answered = Instant::now();
        if status != StatusCode::OK || answer != *input {
            return Err(format!("baseline: task answered HTTP {status}"));
        }
        let host_cpu_ms = host_busy_ms_since(busy0);
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
        Ok(EngineCold {
            total_ms: ms(t0, t_answered),
            host_cpu_ms,
            phases: BTreeMap::from([
                ("create".to_string(), ms(t0, t_created)),
                ("start".to_string(), ms(t_created, t_started)),
                ("ready".to_string(), ms(t_started, t_ready)),
                ("inspect".to_string(), ms(t_ready, t_inspected)),
                ("first_call".to_string(), ms(t_inspected, t_answered)),
            ]),
            answered_at: t_answered,
        })
    }
    .await;
    match result {
        Ok(run) => Ok((run, id)),
        Err(e) => {
            let _ = remove_baseline(docker, &id).await;
            Err(e)
        }
    }
}

/// One settled baseline start (after `COLD_SETTLE`), removed again; its total in ms.
pub async fn settled_baseline(
    docker: &Docker,
    bench_label: &str,
    mem: u64,
    input: &Bytes,
) -> Result<f64, String> {
    tokio::time::sleep(crate::fixture::COLD_SETTLE).await;
    let (run, id) = engine_cold(docker, bench_label, crate::fixture::COLD_CPU, mem, input).await?;
    remove_baseline(docker, &id).await?;
    Ok(run.total_ms)
}
