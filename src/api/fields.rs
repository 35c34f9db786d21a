//! The spellings of the execute request's resource fields that real MECAnywhere callers send,
//! and the lookup that reads one field under all of them.
//!
//! Owns the table of accepted spellings (the README lists the same) and the rule for
//! conflicts: two spellings of one field with different values are an error naming both. It
//! decides nothing about defaults or ranges; `request.rs` does.
//!
//! Where each caller puts the fields:
//! - the contract (and pymeca hosts before mid-2024): `resource: {cpu, mem, use_gpu, gpu_count}`;
//! - the desktop app's Run Test: `resource: {task_cpu, task_mem}` with `useGpu`, `gpuCount`,
//!   `useSgx` at top level;
//! - older clients and the SGX example task's `config.json`: `resource: {cpu, memory, use_gpu,
//!   gpu_count, use_sgx}`;
//! - the pymeca host: the task's whole `config.json` as `resource`, so the limits arrive as
//!   `resource: {resource: {...}}`.

use serde_json::{Map, Value};

/// One field of a request, with every name it is sent under.
pub struct Field {
    /// The contract's name, used in messages.
    pub name: &'static str,
    pub spellings: &'static [&'static str],
    /// Whether the field may also stand at the top level of the request (the flags may; the
    /// limits only inside `resource`).
    pub top_level: bool,
}

pub const CPU: Field = Field {
    name: "cpu",
    spellings: &["cpu", "task_cpu"],
    top_level: false,
};
pub const MEM: Field = Field {
    name: "mem",
    spellings: &["mem", "memory", "task_mem"],
    top_level: false,
};
pub const USE_GPU: Field = Field {
    name: "use_gpu",
    spellings: &["use_gpu", "useGpu"],
    top_level: true,
};
pub const GPU_COUNT: Field = Field {
    name: "gpu_count",
    spellings: &["gpu_count", "gpuCount"],
    top_level: true,
};
pub const USE_SGX: Field = Field {
    name: "use_sgx",
    spellings: &["use_sgx", "useSgx"],
    top_level: true,
};

const FIELDS: [&Field; 5] = [&CPU, &MEM, &USE_GPU, &GPU_COUNT, &USE_SGX];
/// Top-level keys that are not resource fields.
const TOP_KEYS: [&str; 4] = ["id", "input", "runtime", "resource"];
/// The key, inside `resource`, of a nested task `config.json`'s own `resource`.
const NESTED: &str = "resource";

/// One JSON object of a request and where it sits, e.g. `resource.resource.`.
struct Level<'a> {
    prefix: &'static str,
    map: &'a Map<String, Value>,
    top: bool,
}

/// The objects of a request that may hold resource fields: the top level, `resource`, and
/// `resource.resource`.
pub struct Levels<'a>(Vec<Level<'a>>);

/// Why a field could not be read.
#[derive(Debug, PartialEq)]
pub enum FieldError {
    /// A value of the wrong type, e.g. `resource.cpu must be a number`.
    Type(String),
    /// Two spellings with different values.
    Conflict(String),
}

impl<'a> Levels<'a> {
    /// The levels of a request whose top-level object is `top`. A `resource` that is absent
    /// or `null` contributes nothing; one that is not an object is a type error.
    pub fn of(top: &'a Map<String, Value>) -> Result<Levels<'a>, FieldError> {
        let mut levels = vec![Level {
            prefix: "",
            map: top,
            top: true,
        }];
        if let Some(resource) = object_at(top, "resource", "")? {
            levels.push(Level {
                prefix: "resource.",
                map: resource,
                top: false,
            });
            if let Some(nested) = object_at(resource, NESTED, "resource.")? {
                levels.push(Level {
                    prefix: "resource.resource.",
                    map: nested,
                    top: false,
                });
            }
        }
        Ok(Levels(levels))
    }

    /// The value of `field` under any of its spellings, read by `read` (which returns `None`
    /// for a value of the wrong type and names the type it wanted in `wanted`). `null` counts
    /// as absent.
    pub fn get<T: PartialEq + std::fmt::Display>(
        &self,
        field: &Field,
        wanted: &str,
        read: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<T>, FieldError> {
        let mut found: Option<(String, T)> = None;
        for level in &self.0 {
            if level.top && !field.top_level {
                continue;
            }
            for name in field.spellings {
                let Some(value) = level.map.get(*name).filter(|v| !v.is_null()) else {
                    continue;
                };
                let path = format!("{}{name}", level.prefix);
                let value = read(value)
                    .ok_or_else(|| FieldError::Type(format!("{path} must be {wanted}")))?;
                match &found {
                    Some((first, seen)) if *seen != value => {
                        return Err(FieldError::Conflict(format!(
                            "{first} ({seen}) and {path} ({value}) disagree: send {} once",
                            field.name
                        )))
                    }
                    Some(_) => {}
                    None => found = Some((path, value)),
                }
            }
        }
        Ok(found.map(|(_, value)| value))
    }

    /// The keys no accepted spelling explains, with their paths (the executor ignores them,
    /// as the Go executor did, and logs them at debug level).
    pub fn unknown_keys(&self) -> Vec<String> {
        let mut unknown = Vec::new();
        for level in &self.0 {
            for key in level.map.keys() {
                let known = if level.top {
                    TOP_KEYS.contains(&key.as_str())
                        || FIELDS
                            .iter()
                            .any(|f| f.top_level && f.spellings.contains(&key.as_str()))
                } else {
                    (level.prefix == "resource." && key == NESTED)
                        || FIELDS.iter().any(|f| f.spellings.contains(&key.as_str()))
                };
                if !known {
                    unknown.push(format!("{}{key}", level.prefix));
                }
            }
        }
        unknown
    }
}

fn object_at<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    prefix: &str,
) -> Result<Option<&'a Map<String, Value>>, FieldError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(_) => Err(FieldError::Type(format!("{prefix}{key} must be an object"))),
    }
}

/// Reads a JSON number as `f64`.
pub fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Reads a JSON number that is a whole number (`1024` or `1024.0`) as `i64`.
pub fn whole(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|x| x.fract() == 0.0 && x.abs() < 9.0e15)
            .map(|x| x as i64)
    })
}

pub fn boolean(v: &Value) -> Option<bool> {
    v.as_bool()
}

/// Every accepted spelling of every field with where it may stand, for documentation and
/// tests: `(contract name, spelling, may stand at top level)`.
pub fn spellings() -> impl Iterator<Item = (&'static str, &'static str, bool)> {
    FIELDS
        .into_iter()
        .flat_map(|f| f.spellings.iter().map(move |s| (f.name, *s, f.top_level)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn each_spelling_at_each_level() {
        for (_, spelling, top_level) in spellings() {
            let field = FIELDS
                .iter()
                .find(|f| f.spellings.contains(&spelling))
                .unwrap();
            let value = if field.name.starts_with("use_") {
                "true"
            } else {
                "3"
            };
            for (body, allowed) in [
                (format!(r#"{{"{spelling}": {value}}}"#), top_level),
                (
                    format!(r#"{{"resource": {{"{spelling}": {value}}}}}"#),
                    true,
                ),
                (
                    format!(r#"{{"resource": {{"resource": {{"{spelling}": {value}}}}}}}"#),
                    true,
                ),
            ] {
                let map = object(&body);
                let levels = Levels::of(&map).unwrap();
                let got = levels.get(field, "x", |v| Some(v.to_string())).unwrap();
                assert_eq!(got.is_some(), allowed, "{body}");
                assert_eq!(levels.unknown_keys().is_empty(), allowed, "{body}");
            }
        }
    }

    #[test]
    fn conflicts_name_both_spellings() {
        let map = object(r#"{"resource": {"cpu": 1, "resource": {"task_cpu": 2}}}"#);
        let err = Levels::of(&map).unwrap().get(&CPU, "a number", number);
        assert_eq!(
            err,
            Err(FieldError::Conflict(
                "resource.cpu (1) and resource.resource.task_cpu (2) disagree: send cpu once"
                    .into()
            ))
        );
        // Equal values under two spellings are fine.
        let map = object(r#"{"resource": {"mem": 64, "memory": 64.0}}"#);
        assert_eq!(
            Levels::of(&map).unwrap().get(&MEM, "a whole number", whole),
            Ok(Some(64))
        );
    }

    #[test]
    fn wrong_types_name_the_path() {
        let map = object(r#"{"useGpu": "yes"}"#);
        assert_eq!(
            Levels::of(&map)
                .unwrap()
                .get(&USE_GPU, "true or false", boolean),
            Err(FieldError::Type("useGpu must be true or false".into()))
        );
        let map = object(r#"{"resource": 5}"#);
        assert!(matches!(Levels::of(&map), Err(FieldError::Type(_))));
    }

    #[test]
    fn unknown_keys_are_reported_with_paths() {
        let map = object(
            r#"{"id": "a", "extra": 1, "resource": {"cpu": 1, "gpu": 2, "resource": {"mem": 1, "resource": {}}}}"#,
        );
        assert_eq!(
            Levels::of(&map).unwrap().unknown_keys(),
            vec!["extra", "resource.gpu", "resource.resource.resource"]
        );
    }
}
