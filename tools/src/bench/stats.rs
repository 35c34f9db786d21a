//! Percentiles and medians of the samples.

use std::collections::BTreeMap;

use serde_json::{json, Value};

#[derive(Clone, Copy, Default)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

impl Percentiles {
    pub fn json(self) -> Value {
        json!({"p50_us": self.p50_us, "p99_us": self.p99_us, "mean_us": self.mean_us})
    }
}

/// Of samples in nanoseconds, in µs (nearest rank).
pub fn percentiles(samples: &mut [u64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    Percentiles {
        p50_us: at(0.50),
        p99_us: at(0.99),
        mean_us: samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0,
    }
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Per phase, the median over the runs that have it.
pub fn median_phases<'a>(
    runs: impl Iterator<Item = &'a BTreeMap<String, f64>>,
) -> BTreeMap<String, f64> {
    let mut by_phase: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for (phase, ms) in run {
            by_phase.entry(phase.clone()).or_default().push(*ms);
        }
    }
    by_phase
        .into_iter()
        .map(|(phase, values)| (phase, median(&values)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let mut samples: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let p = percentiles(&mut samples);
        assert_eq!((p.p50_us, p.p99_us, p.mean_us), (50.0, 99.0, 50.5));
        let runs = [
            BTreeMap::from([("a".to_string(), 1.0), ("b".to_string(), 5.0)]),
            BTreeMap::from([("a".to_string(), 3.0)]),
        ];
        assert_eq!(
            median_phases(runs.iter()),
            BTreeMap::from([("a".to_string(), 2.0), ("b".to_string(), 5.0)])
        );
    }
}
