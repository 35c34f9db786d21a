//! The wire format of `POST /` and `POST /update-config`, and the checks that need nothing
//! but the request itself (what depends on the host is checked by the executor).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config;
use crate::executor::{ConfigUpdate, TaskRequest};
use crate::resources::{cores_to_milli, Demand};
use crate::task::{Runtime, TaskKey};

use super::fields::{self, FieldError, Levels};

/// Defaults when `resource` is absent or both `cpu` and `mem` are zero.
pub const DEFAULT_CPU: f64 = 1.0;
pub const DEFAULT_MEM_MB: i64 = 128;

/// Why a request is refused before it reaches the executor.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    /// Not JSON, or not the expected shape: answered with HTTP 400.
    #[error("bad execution request: {0}")]
    Malformed(String),
    /// Two spellings of one field with different values: answered with HTTP 400.
    #[error("bad execution request: {0}")]
    Conflict(String),
    #[error("invalid resource limit: {0}")]
    InvalidResource(String),
    #[error("invalid image reference {0:?}: {1}")]
    InvalidImage(String, String),
    #[error("unknown runtime {0:?}: use \"container\" or \"microVM\"")]
    UnknownRuntime(String),
    #[error("invalid config update: {0}")]
    InvalidUpdate(String),
}

/// Parses and checks an execute request body. The resource fields are read under every
/// spelling real callers use (see `fields.rs`); a missing limit takes its default.
pub fn parse_execute(body: &[u8]) -> Result<TaskRequest, RequestError> {
    let top: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| RequestError::Malformed(e.to_string()))?;
    let image = match top.get("id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(RequestError::Malformed(
                "missing task id (the image to run)".into(),
            ))
        }
        Some(_) => return Err(RequestError::Malformed("id must be a string".into())),
    };
    if let Err(why) = crate::image_ref::validate(&image) {
        return Err(RequestError::InvalidImage(image, why));
    }
    let input = match top.get("input") {
        // Absent and `null` both mean an empty input.
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(input)) => Bytes::from(input.clone()),
        Some(_) => return Err(RequestError::Malformed("input must be a string".into())),
    };
    let runtime = match top.get("runtime") {
        None | Some(Value::Null) => Runtime::Container,
        Some(Value::String(r)) => match r.as_str() {
            "" | "container" => Runtime::Container,
            "microVM" => Runtime::MicroVm,
            other => return Err(RequestError::UnknownRuntime(other.to_string())),
        },
        Some(_) => return Err(RequestError::Malformed("runtime must be a string".into())),
    };

    let levels = Levels::of(&top)?;
    let cpu = levels.get(&fields::CPU, "a number", fields::number)?;
    let mem = levels.get(&fields::MEM, "a whole number of MB", fields::whole)?;
    let use_gpu = levels.get(&fields::USE_GPU, "true or false", fields::boolean)?;
    let gpu_count = levels.get(&fields::GPU_COUNT, "a whole number", fields::whole)?;
    let use_sgx = levels.get(&fields::USE_SGX, "true or false", fields::boolean)?;
    let unknown = levels.unknown_keys();
    if !unknown.is_empty() {
        tracing::debug!(keys = ?unknown, "ignoring unknown request fields");
    }

    // As in the Go executor, cpu and mem both zero (or absent) mean the defaults; otherwise
    // a missing one takes its default and a given one must be above 0.
    let (cpu, mem) = if cpu.unwrap_or(0.0) == 0.0 && mem.unwrap_or(0) == 0 {
        (DEFAULT_CPU, DEFAULT_MEM_MB)
    } else {
        (cpu.unwrap_or(DEFAULT_CPU), mem.unwrap_or(DEFAULT_MEM_MB))
    };
    if !cpu.is_finite() || cpu <= 0.0 || cores_to_milli(cpu) == 0 {
        return Err(RequestError::InvalidResource(format!(
            "cpu {cpu} must be above 0"
        )));
    }
    if mem <= 0 {
        return Err(RequestError::InvalidResource(format!(
            "mem {mem} MB must be above 0"
        )));
    }
    let gpu_count = gpu_count.unwrap_or(0);
    if !(0..=1024).contains(&gpu_count) {
        return Err(RequestError::InvalidResource(format!(
            "gpu_count {gpu_count} is not a GPU count"
        )));
    }
    let gpu_count = if use_gpu.unwrap_or(false) {
        gpu_count.max(1) as u32
    } else {
        0
    };
    Ok(TaskRequest {
        key: TaskKey {
            image,
            runtime,
            demand: Demand {
                milli_cpu: cores_to_milli(cpu),
                mem_mb: mem as u64,
            },
            gpu_count,
            use_sgx: use_sgx.unwrap_or(false),
        },
        input,
    })
}

impl From<FieldError> for RequestError {
    fn from(e: FieldError) -> RequestError {
        match e {
            FieldError::Type(why) => RequestError::Malformed(why),
            FieldError::Conflict(why) => RequestError::Conflict(why),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireUpdate {
    timeout: Option<i64>,
    cpu: Option<f64>,
    mem: Option<i64>,
    has_gpu: Option<serde_json::Value>,
    #[serde(rename = "microVM_runtime")]
    microvm_runtime: Option<String>,
    keep_alive: Option<String>,
    keep_alive_price: Option<f64>,
}

/// Parses an `/update-config` body.
pub fn parse_update(body: &[u8]) -> Result<ConfigUpdate, RequestError> {
    let wire: WireUpdate =
        serde_json::from_slice(body).map_err(|e| RequestError::InvalidUpdate(e.to_string()))?;
    let bad = |e: config::ConfigError| RequestError::InvalidUpdate(e.to_string());
    let has_gpu = match wire.has_gpu {
        None => None,
        Some(serde_json::Value::Bool(b)) => Some(b),
        Some(serde_json::Value::Number(n)) if n.as_i64().is_some() => Some(n.as_i64() != Some(0)),
        Some(other) => {
            return Err(RequestError::InvalidUpdate(format!(
                "has_gpu must be a boolean or an integer, not {other}"
            )))
        }
    };
    Ok(ConfigUpdate {
        idle_timeout: wire
            .timeout
            .map(config::check_timeout_minutes)
            .transpose()
            .map_err(bad)?,
        cpu: wire.cpu.map(config::check_cpu).transpose().map_err(bad)?,
        mem_mb: wire.mem.map(config::check_mem).transpose().map_err(bad)?,
        has_gpu,
        microvm_runtime: wire
            .microvm_runtime
            .map(|r| Some(r).filter(|r| !r.trim().is_empty())),
        // A price alone sets the priced policy's price.
        keep_alive: match (wire.keep_alive.as_deref(), wire.keep_alive_price) {
            (None, None) => None,
            (name, price) => {
                Some(config::keep_alive_policy(name.unwrap_or("priced"), price).map_err(bad)?)
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_request_without_resource_gets_defaults() {
        let r = parse_execute(br#"{"id": "sampleserver:latest", "input": "{\"name\": \"sbip\"}"}"#)
            .unwrap();
        assert_eq!(r.key.image, "sampleserver:latest");
        assert_eq!(
            r.key.demand,
            Demand {
                milli_cpu: 1000,
                mem_mb: 128
            }
        );
        assert_eq!(r.key.runtime, Runtime::Container);
        assert_eq!(&r.input[..], br#"{"name": "sbip"}"#);
    }

    #[test]
    fn zero_resources_get_defaults_and_fractions_are_kept() {
        let r = parse_execute(br#"{"id":"a","resource":{"cpu":0,"mem":0}}"#).unwrap();
        assert_eq!(
            r.key.demand,
            Demand {
                milli_cpu: 1000,
                mem_mb: 128
            }
        );
        let r = parse_execute(br#"{"id":"a","resource":{"cpu":0.5,"mem":64}}"#).unwrap();
        assert_eq!(
            r.key.demand,
            Demand {
                milli_cpu: 500,
                mem_mb: 64
            }
        );
    }

    #[test]
    fn bad_requests() {
        use RequestError::*;
        assert!(matches!(parse_execute(b"{not json"), Err(Malformed(_))));
        assert!(matches!(
            parse_execute(br#"{"input":"x"}"#),
            Err(Malformed(_))
        ));
        assert!(matches!(parse_execute(br#"{"id":""}"#), Err(Malformed(_))));
        assert!(matches!(
            parse_execute(br#"{"id":"a","resource":{"mem":1.5}}"#),
            Err(Malformed(_))
        ));
        assert!(matches!(
            parse_execute(br#"{"id":"a","resource":{"cpu":-1,"mem":128}}"#),
            Err(InvalidResource(_))
        ));
        assert!(matches!(
            parse_execute(br#"{"id":"a","resource":{"cpu":1,"mem":-5}}"#),
            Err(InvalidResource(_))
        ));
        assert!(matches!(
            parse_execute(br#"{"id":"a","resource":{"cpu":1,"mem":0}}"#),
            Err(InvalidResource(_))
        ));
        assert!(matches!(
            parse_execute(br#"{"id":"a b"}"#),
            Err(InvalidImage(..))
        ));
        assert!(matches!(
            parse_execute(br#"{"id":"a","runtime":"vm"}"#),
            Err(UnknownRuntime(_))
        ));
    }

    fn demand(cpu_milli: u64, mem_mb: u64) -> Demand {
        Demand {
            milli_cpu: cpu_milli,
            mem_mb,
        }
    }

    #[test]
    fn what_real_clients_send() {
        // The desktop app's Run Test.
        let r = parse_execute(
            br#"{"id":"0123456789:latest","input":"{}","resource":{"task_cpu":2,"task_mem":512},"useGpu":false,"gpuCount":1,"useSgx":true}"#,
        )
        .unwrap();
        assert_eq!(r.key.demand, demand(2000, 512));
        assert_eq!((r.key.gpu_count, r.key.use_sgx), (0, true));
        let r = parse_execute(
            br#"{"id":"a","resource":{"task_cpu":1,"task_mem":128},"useGpu":true,"gpuCount":2}"#,
        )
        .unwrap();
        assert_eq!(r.key.gpu_count, 2);
        // Older clients: `memory`.
        let r = parse_execute(br#"{"id":"a","resource":{"cpu":1,"memory":96}}"#).unwrap();
        assert_eq!(r.key.demand, demand(1000, 96));
        // The pymeca host: the task's whole config.json (knn, stablediffusion, sgx-task).
        let r = parse_execute(
            br#"{"id": "a", "input": "x", "resource": {"resource": {"cpu": 2, "mem": 1024}}}"#,
        )
        .unwrap();
        assert_eq!(r.key.demand, demand(2000, 1024));
        let r =
            parse_execute(br#"{"id": "a", "resource": {"resource": {"cpu": 16, "mem": 32000}}}"#)
                .unwrap();
        assert_eq!(r.key.demand, demand(16000, 32000));
        let r = parse_execute(
            br#"{"id": "a", "input": "SGXRAREQUEST", "use_sgx": true, "resource": {"resource": {"cpu": 1, "memory": 128, "use_gpu": false, "gpu_count": 0, "use_sgx": true}}}"#,
        )
        .unwrap();
        assert_eq!(r.key.demand, demand(1000, 128));
        assert_eq!((r.key.gpu_count, r.key.use_sgx), (0, true));
    }

    #[test]
    fn a_missing_limit_takes_its_default() {
        let k = |body: &str| parse_execute(body.as_bytes()).unwrap().key.demand;
        assert_eq!(k(r#"{"id":"a","resource":{"cpu":2}}"#), demand(2000, 128));
        assert_eq!(k(r#"{"id":"a","resource":{"mem":512}}"#), demand(1000, 512));
        // The desktop with a config.json that says `memory`: task_mem is left out.
        assert_eq!(
            k(r#"{"id":"a","resource":{"task_cpu":1}}"#),
            demand(1000, 128)
        );
        assert_eq!(
            k(r#"{"id":"a","resource":{"cpu":null,"mem":null}}"#),
            demand(1000, 128)
        );
        assert_eq!(k(r#"{"id":"a","resource":null}"#), demand(1000, 128));
        assert_eq!(
            k(r#"{"id":"a","resource":{"resource":null}}"#),
            demand(1000, 128)
        );
    }

    #[test]
    fn two_spellings_that_disagree_are_refused_naming_both() {
        for (body, names) in [
            (
                r#"{"id":"a","resource":{"cpu":1,"task_cpu":2}}"#,
                ["resource.cpu", "resource.task_cpu"],
            ),
            (
                r#"{"id":"a","resource":{"mem":64,"memory":96}}"#,
                ["resource.mem", "resource.memory"],
            ),
            (
                r#"{"id":"a","useGpu":true,"resource":{"use_gpu":false}}"#,
                ["useGpu", "resource.use_gpu"],
            ),
            (
                r#"{"id":"a","use_sgx":false,"resource":{"resource":{"use_sgx":true}}}"#,
                ["use_sgx", "resource.resource.use_sgx"],
            ),
        ] {
            match parse_execute(body.as_bytes()) {
                Err(RequestError::Conflict(msg)) => {
                    for name in names {
                        assert!(msg.contains(name), "{msg} should name {name}");
                    }
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        // The same value twice is not a conflict.
        let r = parse_execute(br#"{"id":"a","use_sgx":true,"useSgx":true}"#).unwrap();
        assert!(r.key.use_sgx);
    }

    #[test]
    fn unknown_fields_are_ignored_and_wrong_types_refused() {
        let r = parse_execute(br#"{"id":"a","colour":"red","resource":{"cpu":1,"disk":5,"resource":{"mem":64,"name":"x"}}}"#).unwrap();
        assert_eq!(r.key.demand, demand(1000, 64));
        for bad in [
            r#"{"id":"a","useGpu":"yes"}"#,
            r#"{"id":"a","resource":{"task_cpu":"2"}}"#,
            r#"{"id":"a","resource":{"resource":7}}"#,
            r#"{"id":"a","resource":[1,2]}"#,
            r#"{"id":5}"#,
            r#"{"id":"a","input":5}"#,
            r#"[1]"#,
        ] {
            assert!(
                matches!(
                    parse_execute(bad.as_bytes()),
                    Err(RequestError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_differ_by_every_field() {
        let k = |body: &str| parse_execute(body.as_bytes()).unwrap().key;
        let base = k(r#"{"id":"a","resource":{"cpu":1,"mem":128}}"#);
        assert_eq!(base, k(r#"{"id":"a","input":"other"}"#));
        for other in [
            r#"{"id":"b","resource":{"cpu":1,"mem":128}}"#,
            r#"{"id":"a","resource":{"cpu":2,"mem":128}}"#,
            r#"{"id":"a","resource":{"cpu":1,"mem":256}}"#,
            r#"{"id":"a","resource":{"cpu":1,"mem":128},"runtime":"microVM"}"#,
            r#"{"id":"a","resource":{"cpu":1,"mem":128,"use_gpu":true,"gpu_count":2}}"#,
            r#"{"id":"a","resource":{"cpu":1,"mem":128},"use_sgx":true}"#,
        ] {
            assert_ne!(base, k(other), "{other}");
        }
    }

    #[test]
    fn update_config() {
        let u = parse_update(
            br#"{"timeout":2,"cpu":1.5,"mem":512,"has_gpu":0,"microVM_runtime":"kata"}"#,
        )
        .unwrap();
        assert_eq!(u.idle_timeout, Some(std::time::Duration::from_secs(120)));
        assert_eq!(u.cpu, Some(1.5));
        assert_eq!(u.mem_mb, Some(512));
        assert_eq!(u.has_gpu, Some(false));
        assert_eq!(u.microvm_runtime, Some(Some("kata".into())));
        assert_eq!(u.keep_alive, None);
        use crate::config::KeepAlivePolicy;
        let priced = |price| {
            Some(KeepAlivePolicy::Priced {
                params: crate::keepalive::Params::priced(),
                price,
            })
        };
        for (body, policy) in [
            (r#"{"keep_alive":"fixed"}"#, Some(KeepAlivePolicy::Fixed)),
            (
                r#"{"keep_alive":"priced","keep_alive_price":96000}"#,
                priced(96000.0),
            ),
            (r#"{"keep_alive_price":5e4}"#, priced(5e4)),
            (
                r#"{"keep_alive":"priced"}"#,
                priced(config::DEFAULT_KEEP_ALIVE_PRICE),
            ),
        ] {
            assert_eq!(
                parse_update(body.as_bytes()).unwrap().keep_alive,
                policy,
                "{body}"
            );
        }
        for bad in [
            r#"{"keep_alive":"sometimes"}"#,
            r#"{"keep_alive":"priced","keep_alive_price":0}"#,
            r#"{"keep_alive":"fixed","keep_alive_price":96000}"#,
            r#"{"cpu":0}"#,
            r#"{"mem":-1}"#,
            r#"{"timeout":0}"#,
            r#"{"cpus":2}"#,
            "nope",
        ] {
            assert!(parse_update(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
