//! What the bench runs and looks for: the task image and its input, the label the baseline
//! puts on its containers (the executor's are `mecanywhere_executor::engine`'s), and the keys
//! and pauses that several rows share.
//! Constants only.

use std::time::Duration;

pub const IMAGE: &str = "meca-echo:latest";
pub const INPUT: &str = "{\"name\":\"sbip\"}";
pub const LABEL_BENCH: &str = "org.mecanywhere.bench";
/// The prewarmed key (row 7) and its non-prewarmed twin (same cpu, next mem).
pub const PREWARM_CPU: f64 = 0.25;
pub const PREWARM_MEM: u64 = 48;
/// CPU of the new keys of rows 3, 4, 8 and 9.
pub const COLD_CPU: f64 = 0.1;
pub const PARALLEL: usize = 8;
/// Pause before each cold start, so that the previous one's aftermath has settled.
pub const COLD_SETTLE: Duration = Duration::from_millis(500);
