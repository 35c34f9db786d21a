//! The wire format of `POST /` and `POST /update-config`, and the checks that need nothing
//! but the request itself (what depends on the host is checked by the executor).

use bytes::Bytes;
use serde::Deserialize;

use crate::config;
use crate::executor::{ConfigUpdate, TaskRequest};
use crate::resources::{cores_to_milli, Demand};
use crate::task::{Runtime, TaskKey};

/// Defaults when `resource` is absent or both `cpu` and `mem` are zero.
pub const DEFAULT_CPU: f64 = 1.0;
pub const DEFAULT_MEM_MB: i64 = 128;

/// Why a request is refused before it reaches the executor.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    /// Not JSON, or not the expected shape: answered with HTTP 400.
    #[error("bad execution request: {0}")]
    Malformed(String),
    #[error("invalid resource limit: {0}")]
    InvalidResource(String),
    #[error("invalid image reference {0:?}: {1}")]
    InvalidImage(String, String),
    #[error("unknown runtime {0:?}: use \"container\" or \"microVM\"")]
    UnknownRuntime(String),
    #[error("invalid config update: {0}")]
    InvalidUpdate(String),
}

#[derive(Debug, Deserialize)]
struct WireResource {
    #[serde(default)]
    cpu: f64,
    #[serde(default)]
    mem: i64,
    #[serde(default)]
    use_gpu: bool,
    #[serde(default)]
    gpu_count: i64,
}

#[derive(Debug, Deserialize)]
struct WireRequest {
    id: Option<String>,
    resource: Option<WireResource>,
    runtime: Option<String>,
    /// Absent and `null` both mean an empty input.
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    use_sgx: bool,
}

/// Parses and checks an execute request body.
pub fn parse_execute(body: &[u8]) -> Result<TaskRequest, RequestError> {
    let wire: WireRequest =
        serde_json::from_slice(body).map_err(|e| RequestError::Malformed(e.to_string()))?;
    let image = match wire.id {
        Some(id) if !id.trim().is_empty() => id,
        _ => {
            return Err(RequestError::Malformed(
                "missing task id (the image to run)".into(),
            ))
        }
    };
    if let Err(why) = crate::image_ref::validate(&image) {
        return Err(RequestError::InvalidImage(image, why));
    }
    let resource = wire.resource.unwrap_or(WireResource {
        cpu: 0.0,
        mem: 0,
        use_gpu: false,
        gpu_count: 0,
    });
    let (cpu, mem) = if resource.cpu == 0.0 && resource.mem == 0 {
        (DEFAULT_CPU, DEFAULT_MEM_MB)
    } else {
        (resource.cpu, resource.mem)
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
    if resource.gpu_count < 0 || resource.gpu_count > 1024 {
        return Err(RequestError::InvalidResource(format!(
            "gpu_count {} is not a GPU count",
            resource.gpu_count
        )));
    }
    let gpu_count = if resource.use_gpu {
        resource.gpu_count.max(1) as u32
    } else {
        0
    };
    let runtime = match wire.runtime.as_deref() {
        None | Some("") | Some("container") => Runtime::Container,
        Some("microVM") => Runtime::MicroVm,
        Some(other) => return Err(RequestError::UnknownRuntime(other.to_string())),
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
            use_sgx: wire.use_sgx,
        },
        input: Bytes::from(wire.input.unwrap_or_default()),
    })
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
        for bad in [
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
