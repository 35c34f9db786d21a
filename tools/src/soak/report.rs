//! What the soak prints at the end, and whether the run passed.

use std::process::ExitStatus;

use serde_json::Value;

use crate::load::Counts;

pub struct Report<'a> {
    pub counts: &'a Counts,
    /// `task_used_cpu` and `task_used_mem` of `/stats` at rest, if it came to rest.
    pub at_rest: Option<(Value, Value)>,
    /// Containers left after `/stop`.
    pub left: usize,
    pub exit: std::io::Result<ExitStatus>,
    pub rss_idle_kb: u64,
    pub rss_peak_kb: u64,
}

impl Report<'_> {
    fn used_at_rest(&self) -> (Value, Value) {
        self.at_rest.clone().unwrap_or((Value::Null, Value::Null))
    }

    pub fn print(&self) {
        let c = self.counts;
        let (used_cpu, used_mem) = self.used_at_rest();
        println!("requests sent                 {}", Counts::get(&c.sent));
        println!("  succeeded (answer checked)  {}", Counts::get(&c.ok));
        println!(
            "  failed with a clear error   {}",
            Counts::get(&c.clear_error)
        );
        println!(
            "  failed otherwise            {}",
            Counts::get(&c.other_failure)
        );
        println!("task containers killed        {}", Counts::get(&c.kills));
        println!("budget reserved at rest       cpu {used_cpu}%  mem {used_mem}%");
        println!("containers left after /stop   {}", self.left);
        println!("executor exit                 {:?}", self.exit);
        println!(
            "executor RSS idle / peak      {:.1} MB / {:.1} MB",
            self.rss_idle_kb as f64 / 1024.0,
            self.rss_peak_kb as f64 / 1024.0
        );
        let mut kinds: Vec<(String, u64)> = c.errors.lock().unwrap().drain().collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        for (kind, n) in kinds.iter().take(8) {
            println!("  {n:>7} × {kind}");
        }
    }

    /// No failure without a clear error, no container left, no budget reserved at rest, and
    /// the executor exited 0.
    pub fn healthy(&self) -> bool {
        let (used_cpu, used_mem) = self.used_at_rest();
        let rest_ok = used_cpu.as_f64() == Some(0.0) && used_mem.as_f64() == Some(0.0);
        Counts::get(&self.counts.other_failure) == 0
            && self.left == 0
            && rest_ok
            && self.exit.as_ref().map(|s| s.success()).unwrap_or(false)
    }
}
