//! Background tasks that cannot die unnoticed: a supervised task that panics is logged as
//! an error, counted, and started again after a pause.
//!
//! Owns only the restart loop. What a task does, and when it ends normally (returns), is the
//! task's own business; a task that returns is not restarted.

use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt;

/// The pause before a panicked task is started again (so a task that panics at once does
/// not spin).
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Runs the task made by `make` until it returns; each time it panics, logs the panic as
/// an error naming `name`, calls `on_panic`, waits [`RESTART_DELAY`] and makes it again.
pub async fn supervise<F, Fut>(name: &'static str, mut make: F, on_panic: impl Fn())
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send,
{
    loop {
        match std::panic::AssertUnwindSafe(make()).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                tracing::error!(task = name, panic = %what, "background task panicked; restarting it");
                on_panic();
                tokio::time::sleep(RESTART_DELAY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_a_returning_one_is_not() {
        let runs = Arc::new(AtomicUsize::new(0));
        let panics = Arc::new(AtomicUsize::new(0));
        let (r, p) = (Arc::clone(&runs), Arc::clone(&panics));
        let started = tokio::time::Instant::now();
        supervise(
            "test",
            move || {
                let run = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    if run < 2 {
                        panic!("run {run} fails");
                    }
                }
            },
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(panics.load(Ordering::SeqCst), 2);
        assert_eq!(started.elapsed(), 2 * RESTART_DELAY);
    }
}
