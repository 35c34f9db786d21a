//! Reading the Prometheus text exposition that `/metrics` serves: one parser for the
//! executor's tests, its bench, soak and replay tools, so that they all read a series the
//! same way.
//!
//! Owns only the text format (`name{labels} value` lines, `#` comments); it must not know
//! which series the executor exposes (that is `metrics`).

use std::collections::BTreeMap;

/// A parsed scrape: each series, `name{labels}` exactly as exposed, with its value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Parses a scrape; lines that are not a series with a number are skipped.
    pub fn parse(text: &str) -> Scrape {
        Scrape(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| {
                    let (series, value) = line.trim_end().rsplit_once(' ')?;
                    Some((series.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The value of `series` (name with its labels, exactly as exposed); 0 when absent, as
    /// a counter or gauge that was never touched is.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series).unwrap_or(0.0)
    }

    /// The value of `series`, `None` when the scrape has no such series.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// Every series with its value, in name order.
    pub fn series(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0
            .iter()
            .map(|(series, value)| (series.as_str(), *value))
    }
}

/// The value of `series` in the scrape `text`; 0 when absent.
pub fn value(text: &str, series: &str) -> f64 {
    Scrape::parse(text).value(series)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP meca_requests_total Requests.\n\
        # TYPE meca_requests_total counter\n\
        meca_requests_total{outcome=\"ok\"} 3\n\
        meca_requests_total{outcome=\"error\"} 0\n\
        meca_budget_cpu_cores{kind=\"tasks\"} 0.5\n\
        meca_up 1\n\
        garbage line\n";

    #[test]
    fn reads_series_with_and_without_labels() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(scrape.value("meca_requests_total{outcome=\"ok\"}"), 3.0);
        assert_eq!(scrape.value("meca_budget_cpu_cores{kind=\"tasks\"}"), 0.5);
        assert_eq!(scrape.value("meca_up"), 1.0);
        assert_eq!(
            scrape.get("meca_requests_total{outcome=\"error\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn an_absent_series_reads_zero_and_a_prefix_is_not_a_match() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(scrape.get("meca_requests_total"), None);
        assert_eq!(scrape.value("meca_requests"), 0.0);
        assert_eq!(value(TEXT, "meca_missing"), 0.0);
        assert_eq!(scrape.series().count(), 4);
    }
}
