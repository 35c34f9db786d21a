//! The replay's tables (markdown), the target's verdicts, and the per-key CSV.

use crate::policy::Policy;
use crate::simulate::{Outcome, MB_S_PER_GB_H};
use crate::trace::{Trace, PATTERNS};

/// The target: no more cold starts than fixed `TARGET_OF` minutes at no more than
/// `TARGET_MEMORY_SHARE` of its idle memory-time.
pub const TARGET_OF: u64 = 10;
pub const TARGET_MEMORY_SHARE: f64 = 0.7;

/// The table of every policy, then the same by invocation pattern.
pub fn print_tables(outcomes: &[Outcome]) {
    println!("| policy | requests | cold starts | cold % | idle memory-time (MB·s) | idle GB·h | predicted pre-warms (unused) | evictions | failed |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let predicted = match o.policy {
            Policy::Fixed(_) => "—".to_string(),
            Policy::Adaptive(_) | Policy::Priced(..) => format!("{} ({})", o.predicted, o.unused),
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.3e} | {:.1} | {predicted} | {} | {} |",
            o.policy.label(),
            o.requests,
            o.cold,
            o.cold_percent(),
            o.idle_mb_s,
            o.idle_gb_h(),
            o.evictions,
            o.failed
        );
    }
    println!("\nBy invocation pattern (cold % / idle GB·h):\n");
    println!("| policy | {} |", PATTERNS.map(|p| p.name()).join(" | "));
    println!("|---|---:|---:|---:|");
    for o in outcomes {
        let cells: Vec<String> = o
            .by_pattern
            .iter()
            .map(|(n, cold, idle)| {
                format!(
                    "{:.1} / {:.1}",
                    *cold as f64 * 100.0 / (*n).max(1) as f64,
                    idle / MB_S_PER_GB_H
                )
            })
            .collect();
        println!("| {} | {} |", o.policy.label(), cells.join(" | "));
    }
}

/// One line per policy and key: policy, key, pattern, memory, requests, cold starts, idle
/// MB·s.
pub fn write_per_key(
    outcomes: &[Outcome],
    trace: &Trace,
    path: &std::path::Path,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "policy,key,pattern,mem_mb,requests,cold,idle_mb_s")?;
    for o in outcomes {
        for (i, (requests, cold, idle)) in o.by_key.iter().enumerate() {
            let f = &trace.functions[i];
            writeln!(
                out,
                "{},{i},{},{},{requests},{cold},{idle:.0}",
                o.policy.label().replace(',', ";"),
                f.pattern.name(),
                f.key.demand.mem_mb
            )?;
        }
    }
    out.flush()
}

/// The outcome of fixed `minutes`, if it was replayed.
pub fn fixed(outcomes: &[Outcome], minutes: u64) -> Option<&Outcome> {
    outcomes.iter().find(|o| o.policy == Policy::Fixed(minutes))
}

/// Whether each policy but the fixed ones met the target.
pub fn print_target(outcomes: &[Outcome]) {
    let Some(reference) = fixed(outcomes, TARGET_OF) else {
        return;
    };
    let budget = reference.idle_mb_s * TARGET_MEMORY_SHARE;
    println!(
        "\ntarget: no more cold starts than fixed {TARGET_OF} min ({}, {:.2}%) at no more than {:.0}% of its idle memory-time ({:.1} GB·h)",
        reference.cold,
        reference.cold_percent(),
        TARGET_MEMORY_SHARE * 100.0,
        budget / MB_S_PER_GB_H
    );
    for o in outcomes
        .iter()
        .filter(|o| !matches!(o.policy, Policy::Fixed(_)))
    {
        let met = o.cold <= reference.cold && o.idle_mb_s <= budget;
        println!(
            "- {}: {} cold ({:+.1}%), {:.1} GB·h idle ({:.0}% of fixed {TARGET_OF} min): {}",
            o.policy.label(),
            o.cold,
            (o.cold as f64 / reference.cold.max(1) as f64 - 1.0) * 100.0,
            o.idle_gb_h(),
            o.idle_mb_s / reference.idle_mb_s * 100.0,
            if met { "met" } else { "not met" }
        );
    }
}
