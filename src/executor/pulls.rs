//! Images: makes sure a start's image is present, pulling it if not.
//!
//! Owns the pulls in progress (by image, shared by every start that needs the image) and the
//! pull slots (`max_concurrent_pulls`). A pull waits for a slot within its `pull_timeout`.
//! It never reserves budget (a pull never holds room) and never touches the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::context::Context;
use crate::engine::EngineError;

/// A pull in progress, awaited by every start that needs its image.
type SharedPull = Shared<BoxFuture<'static, Result<(), EngineError>>>;
/// Pulls in progress by image, each with an id (so a pull removes its own entry only).
type PullMap = Arc<Mutex<HashMap<String, (u64, SharedPull)>>>;

pub(super) struct Pulls {
    ctx: Context,
    /// Pulls in progress, by image: starts that need the same image share one.
    pulls: PullMap,
    next_id: AtomicU64,
    /// Pull slots (`max_concurrent_pulls`): a pull waits for one within its timeout.
    slots: Arc<Semaphore>,
}

impl Pulls {
    pub(super) fn new(ctx: Context, max_concurrent: usize) -> Pulls {
        Pulls {
            ctx,
            pulls: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(max_concurrent)),
        }
    }

    /// Makes sure the image is present, pulling it if not. Concurrent starts needing the same
    /// image share one pull; a pull longer than `pull_timeout` fails. Each pull runs as a
    /// task of its own: a start that gives up waiting (pause, stop, a client gone) never
    /// leaves a pull half-done holding its slot.
    pub(super) async fn ensure_image(
        &self,
        image: &str,
        pull_timeout: Duration,
    ) -> Result<(), EngineError> {
        if self.ctx.engine.image_present(image).await? {
            return Ok(());
        }
        let pull = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
            let (_, pull) = pulls
                .entry(image.to_string())
                .or_insert_with(|| self.spawn_pull(image, pull_timeout));
            pull.clone()
        };
        pull.await
    }

    /// Starts the pull of `image` as a tracked task, which removes its own entry when done.
    fn spawn_pull(&self, image: &str, pull_timeout: Duration) -> (u64, SharedPull) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let engine = Arc::clone(&self.ctx.engine);
        let image = image.to_string();
        let pulls = self.ctx.metrics.pulls.clone();
        let pull_seconds = self.ctx.metrics.pull_seconds.clone();
        let slots = Arc::clone(&self.slots);
        let map = Arc::clone(&self.pulls);
        let closing = self.ctx.closing.clone();
        let task = self.ctx.work.spawn(async move {
            let started = Instant::now();
            // The wait for a pull slot counts against the pull's timeout.
            let pull = async {
                let _slot = slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                // Another pull of this image may have finished meanwhile.
                if engine.image_present(&image).await.unwrap_or(false) {
                    return Ok(());
                }
                engine.pull(&image).await
            };
            let result = tokio::select! {
                biased; // In the order written, not at random: a simulated run replays.
                result = tokio::time::timeout(pull_timeout, pull) => match result {
                    Ok(result) => result,
                    Err(_) => Err(EngineError::PullTimeout {
                        image: image.clone(),
                        after: pull_timeout,
                    }),
                },
                () = closing.cancelled() => Err(EngineError::ImageUnavailable {
                    image: image.clone(),
                    detail: "the executor is stopping".into(),
                }),
            };
            pull_seconds.observe(started.elapsed().as_secs_f64());
            let outcome = if result.is_ok() { "success" } else { "failure" };
            pulls
                .get_or_create(&crate::metrics::OutcomeLabel { outcome })
                .inc();
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&image).is_some_and(|(entry, _)| *entry == id) {
                map.remove(&image);
            }
            result
        });
        let shared = async move {
            task.await
                .unwrap_or_else(|e| Err(EngineError::Api(format!("the pull task failed: {e}"))))
        }
        .boxed()
        .shared();
        (id, shared)
    }
}
