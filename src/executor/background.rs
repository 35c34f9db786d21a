//! Helpers of the executor's background tasks and cancellable futures: running a loop
//! supervised, sleeping until a deadline that may not exist, running code on drop.
//!
//! Owns nothing; knows no component.

use std::sync::Arc;

use tokio::time::Instant;

use super::context::Context;

/// Runs a background task under [`supervise`](crate::supervise), holding only the component
/// it runs: a panic is logged, counted in `meca_background_panics_total`, and the task
/// started again.
pub(super) fn spawn_supervised<C, Fut>(
    ctx: &Context,
    task: &'static str,
    component: Arc<C>,
    run: fn(Arc<C>) -> Fut,
) where
    C: Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let metrics = Arc::clone(&ctx.metrics);
    tokio::spawn(async move {
        let counter = metrics
            .background_panics
            .get_or_create_owned(&crate::metrics::TaskLabel { task });
        crate::supervise::supervise(
            task,
            || run(Arc::clone(&component)),
            move || {
                counter.inc();
            },
        )
        .await;
    });
}

/// Sleeps until `at`, or forever when there is nothing to wake for (a background loop's
/// next deadline).
pub(super) async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs `f` when dropped (also when the future holding it is cancelled).
pub(super) fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
