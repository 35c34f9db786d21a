//! The `image_gc` section of the config file: when the executor removes task images to keep
//! the disk holding them from filling, and what it never removes.
//!
//! Owns the section's format, defaults and checks. It reads no file and knows nothing of
//! Docker; its messages name the subkey, and the caller adds `image_gc`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// When task images are removed (`image_gc`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGc {
    /// `false` (`image_gc: off`): no image is ever removed.
    pub enabled: bool,
    /// Once the filesystem of Docker's root directory is this full (percent), images are
    /// removed until it is at most `low_percent` full; 0: no filesystem threshold.
    pub high_percent: u8,
    pub low_percent: u8,
    /// What the images the executor pulled or ran may take in all (Docker's sizes, as
    /// `docker images` shows them); `None`: no byte budget.
    pub max_bytes: Option<u64>,
    /// An image pulled or run within this long is never removed.
    pub min_age: Duration,
    /// Images the executor never pulled nor ran (the host owner's own) may be removed too.
    pub remove_unrecorded: bool,
    /// How often the images are looked at (also before and during every pull).
    pub interval: Duration,
    /// The file that keeps when each image last ran, across restarts; `None`:
    /// `config::default_state_file`.
    pub state_file: Option<PathBuf>,
}

impl Default for ImageGc {
    /// kubelet's thresholds (85% / 80%, images younger than 2 minutes kept).
    fn default() -> Self {
        ImageGc {
            enabled: true,
            high_percent: 85,
            low_percent: 80,
            max_bytes: None,
            min_age: Duration::from_secs(120),
            remove_unrecorded: false,
            interval: Duration::from_secs(60),
            state_file: None,
        }
    }
}

/// The section as written (a mapping; `off` is read by [`ImageGc::from_value`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImageGc {
    high_percent: Option<u8>,
    low_percent: Option<u8>,
    max_bytes: Option<serde_norway::Value>,
    min_age: Option<String>,
    remove_unrecorded: Option<bool>,
    interval: Option<String>,
    state_file: Option<String>,
}

impl ImageGc {
    /// The section from its YAML value: `off` (or `false`), or a mapping of the keys above;
    /// durations up to `longest`.
    pub fn from_value(value: serde_norway::Value, longest: Duration) -> Result<ImageGc, String> {
        use serde_norway::Value;
        match &value {
            Value::Bool(false) => return Ok(ImageGc::off()),
            Value::String(s) if matches!(s.trim(), "off" | "false") => return Ok(ImageGc::off()),
            Value::Mapping(_) => {}
            other => {
                return Err(format!(
                    "{}: use `off` or a mapping (high_percent, low_percent, max_bytes, \
                     min_age, remove_unrecorded, interval, state_file)",
                    describe(other)
                ))
            }
        }
        let raw: RawImageGc = serde_norway::from_value(value).map_err(|e| e.to_string())?;
        let mut gc = ImageGc::default();
        if let Some(high) = raw.high_percent {
            if high > 99 {
                return Err(format!("high_percent {high}: use 0 (off) to 99"));
            }
            gc.high_percent = high;
        }
        if let Some(low) = raw.low_percent {
            gc.low_percent = low;
        } else if gc.high_percent > 0 && gc.low_percent >= gc.high_percent {
            gc.low_percent = gc.high_percent.saturating_sub(5);
        }
        if gc.high_percent > 0 && gc.low_percent >= gc.high_percent {
            return Err(format!(
                "low_percent {} must be below high_percent {}",
                gc.low_percent, gc.high_percent
            ));
        }
        if let Some(bytes) = raw.max_bytes {
            gc.max_bytes = Some(byte_size(&bytes)?).filter(|&n| n > 0);
        }
        if let Some(d) = raw.min_age {
            gc.min_age = duration("min_age", &d, Duration::ZERO, longest)?;
        }
        if let Some(d) = raw.interval {
            gc.interval = duration("interval", &d, Duration::from_secs(1), longest)?;
        }
        gc.remove_unrecorded = raw.remove_unrecorded.unwrap_or(false);
        if let Some(path) = raw.state_file {
            if path.trim().is_empty() {
                return Err("state_file must not be empty".into());
            }
            gc.state_file = Some(PathBuf::from(path));
        }
        if gc.high_percent == 0 && gc.max_bytes.is_none() {
            return Err(
                "high_percent 0 and no max_bytes leave nothing to collect by: set one, or \
                 image_gc: off"
                    .into(),
            );
        }
        Ok(gc)
    }

    /// `image_gc: off`.
    pub fn off() -> ImageGc {
        ImageGc {
            enabled: false,
            ..ImageGc::default()
        }
    }

    /// Whether the filesystem thresholds are in force.
    pub fn by_percent(&self) -> bool {
        self.enabled && self.high_percent > 0
    }
}

fn describe(value: &serde_norway::Value) -> String {
    serde_norway::to_string(value)
        .map(|s| format!("{:?}", s.trim()))
        .unwrap_or_else(|_| "this value".into())
}

fn duration(key: &str, text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{key} {text:?} is not a duration like \"2m\" ({e})"))?;
    if d < min || d > max {
        return Err(format!(
            "{key} {text:?}: use a duration from {} to {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// A byte size: a whole number of bytes, or a number with a unit (`500MB`, `50 GB`,
/// `1.5TiB`; kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024).
fn byte_size(value: &serde_norway::Value) -> Result<u64, String> {
    let bad = |text: &str| {
        format!("max_bytes {text:?}: use a size like \"50GB\" or \"500 MiB\", or a number of bytes (0: no byte budget)")
    };
    let text = match value {
        serde_norway::Value::Number(n) => return n.as_u64().ok_or_else(|| bad(&n.to_string())),
        serde_norway::Value::String(s) => s.trim(),
        other => return Err(bad(&describe(other))),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad(text))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad(text)),
    };
    let bytes = number * scale;
    if !bytes.is_finite() || bytes > 1e18 {
        return Err(bad(text));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ImageGc, String> {
        let year = Duration::from_secs(365 * 24 * 3600);
        ImageGc::from_value(serde_norway::from_str(yaml).unwrap(), year)
    }

    #[test]
    fn defaults_are_kubelets() {
        let gc = parse("{}").unwrap();
        assert!(gc.enabled && gc.by_percent());
        assert_eq!((gc.high_percent, gc.low_percent), (85, 80));
        assert_eq!(gc.min_age, Duration::from_secs(120));
        assert_eq!(gc.max_bytes, None);
        assert!(!gc.remove_unrecorded);
    }

    #[test]
    fn off_turns_it_off() {
        for yaml in ["off", "false", "\"off\""] {
            assert!(!parse(yaml).unwrap().enabled, "{yaml}");
        }
    }

    #[test]
    fn sizes_read_with_their_units() {
        let bytes = |yaml: &str| parse(&format!("max_bytes: {yaml}")).unwrap().max_bytes;
        assert_eq!(bytes("1000"), Some(1000));
        assert_eq!(bytes("50GB"), Some(50_000_000_000));
        assert_eq!(bytes("\"500 MiB\""), Some(500 * 1024 * 1024));
        assert_eq!(bytes("1.5kB"), Some(1500));
        assert_eq!(bytes("0"), None);
    }

    #[test]
    fn bad_values_are_named() {
        let error = |yaml: &str| parse(yaml).unwrap_err();
        assert!(error("high_percent: 100").contains("high_percent 100"));
        assert!(error("{high_percent: 70, low_percent: 70}").contains("low_percent 70"));
        assert!(error("max_bytes: 12 parsecs").contains("max_bytes"));
        assert!(error("min_age: soon").contains("min_age"));
        assert!(error("interval: 1ms").contains("interval"));
        assert!(error("high_percent: 0").contains("nothing to collect by"));
        assert!(error("colour: blue").contains("colour"));
        assert!(error("7").contains("use `off` or a mapping"));
    }

    #[test]
    fn a_high_threshold_alone_brings_its_low_one_down() {
        let gc = parse("high_percent: 60").unwrap();
        assert_eq!((gc.high_percent, gc.low_percent), (60, 55));
        let gc = parse("{high_percent: 0, max_bytes: 1GB}").unwrap();
        assert!(!gc.by_percent());
    }
}
