//! The table the bench prints, and the formats of its cells.

use std::collections::BTreeMap;

use serde_json::Value;

pub struct Row {
    n: &'static str,
    measure: String,
    executor: String,
    baseline: String,
    diff: String,
    target: String,
}

/// A row: its number (empty for a row that details the one above), what it measures, the
/// executor's figure, the baseline's, their difference, and the target with its verdict.
pub fn row(
    n: &'static str,
    measure: impl Into<String>,
    executor: impl Into<String>,
    baseline: impl Into<String>,
    diff: impl Into<String>,
    target: impl Into<String>,
) -> Row {
    Row {
        n,
        measure: measure.into(),
        executor: executor.into(),
        baseline: baseline.into(),
        diff: diff.into(),
        target: target.into(),
    }
}

/// A group of rows measured together (rows 8 and 9): its rows, its JSON, its targets.
pub struct Section {
    pub rows: Vec<Row>,
    pub json: Value,
    pub targets: Vec<Value>,
}

/// The lines of the table: the header, a rule, one line per row.
fn table_lines(rows: &[Row]) -> Vec<String> {
    let head = row(
        "#",
        "measure",
        "executor",
        "baseline",
        "difference",
        "target",
    );
    let all: Vec<&Row> = std::iter::once(&head).chain(rows.iter()).collect();
    let w = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let widths = [
        w(|r| r.n),
        w(|r| &r.measure),
        w(|r| &r.executor),
        w(|r| &r.baseline),
        w(|r| &r.diff),
    ];
    let line = |r: &Row| {
        format!(
            "{:<a$}  {:<b$}  {:>c$}  {:>d$}  {:>e$}  {}",
            r.n,
            r.measure,
            r.executor,
            r.baseline,
            r.diff,
            r.target,
            a = widths[0],
            b = widths[1],
            c = widths[2],
            d = widths[3],
            e = widths[4],
        )
        .trim_end()
        .to_string()
    };
    let header = line(&head);
    let rule = "-".repeat(header.chars().count().max(100));
    let mut lines = vec![header, rule];
    lines.extend(rows.iter().map(line));
    lines
}

pub fn print_table(rows: &[Row]) {
    for line in table_lines(rows) {
        println!("{line}");
    }
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

pub fn us(x: f64) -> String {
    format!("{x:.0} µs")
}

pub fn ms(x: f64) -> String {
    format!("{x:.1} ms")
}

pub fn signed_ms(x: f64) -> String {
    format!("{x:+.1} ms")
}

/// The phases in `order`, in ms, `a / b / c` (0.0 for a phase not recorded).
pub fn phases_text(phases: &BTreeMap<String, f64>, order: &[&str]) -> String {
    order
        .iter()
        .map(|p| format!("{:.1}", phases.get(*p).copied().unwrap_or(0.0)))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The executor's phases of one cold start, as rows 3, 3b and 8a print them.
pub const EXECUTOR_PHASES: [&str; 5] = ["image", "reserve", "create", "start", "first_call"];
/// The engine baseline's phases, as rows 3 and 4 print them.
pub const ENGINE_PHASES: [&str; 5] = ["create", "start", "ready", "inspect", "first_call"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_the_rule_is_at_least_100_wide() {
        let rows = [
            row(
                "1",
                "warm latency p50",
                us(41.4),
                "30 µs direct",
                "+11 µs",
                "met",
            ),
            row("", "  detail", "", ms(2.25), signed_ms(-1.0), ""),
        ];
        let lines = table_lines(&rows);
        assert_eq!(
            lines[0],
            "#  measure           executor      baseline  difference  target"
        );
        assert_eq!(lines[1], "-".repeat(100));
        assert_eq!(
            lines[2],
            "1  warm latency p50     41 µs  30 µs direct      +11 µs  met"
        );
        assert_eq!(
            lines[3],
            "     detail                          2.2 ms     -1.0 ms"
        );
        let phases = BTreeMap::from([("image".to_string(), 0.04), ("start".to_string(), 12.0)]);
        assert_eq!(
            phases_text(&phases, &["image", "reserve", "start"]),
            "0.0 / 0.0 / 12.0"
        );
        assert_eq!((verdict(true), verdict(false)), ("met", "MISSED"));
    }
}
