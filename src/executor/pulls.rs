//! Images: makes sure a start's image is present, pulling it if not.
//!
//! Owns the pulls in progress (by image, shared by every start that needs the image) and the
//! pull slots (`max_concurrent_pulls`). A pull waits for a slot within its `pull_timeout`.
//! While it lasts, its progress (as the engine reports it) is logged every
//! [`PROGRESS_EVERY`], and a pull whose progress stands still for `pull_stall_timeout` is
//! cancelled. Before a pull and while it lasts, the image collector makes room for it
//! (`image_gc`); a start whose image is being removed waits for the removal to end, then
//! pulls it again. It never reserves budget (a pull never holds room) and never touches the
//! pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::context::Context;
use super::image_gc::ImageCollector;
use super::image_use::ImageUse;
use crate::engine::EngineError;
use crate::pull_progress::{PullProgress, PullSummary};

/// How often a pull in progress is logged.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A pull in progress, awaited by every start that needs its image.
type SharedPull = Shared<BoxFuture<'static, Result<(), EngineError>>>;
/// Pulls in progress by image, each with an id (so a pull removes its own entry only) and
/// its progress.
type PullMap = Arc<Mutex<HashMap<String, (u64, SharedPull, Arc<PullProgress>)>>>;

pub(super) struct Pulls {
    ctx: Context,
    /// Pulls in progress, by image: starts that need the same image share one.
    pulls: PullMap,
    next_id: AtomicU64,
    /// Pull slots (`max_concurrent_pulls`): a pull waits for one within its timeout.
    slots: Arc<Semaphore>,
    uses: Arc<ImageUse>,
    collector: Arc<ImageCollector>,
}

impl Pulls {
    pub(super) fn new(
        ctx: Context,
        max_concurrent: usize,
        uses: Arc<ImageUse>,
        collector: Arc<ImageCollector>,
    ) -> Pulls {
        Pulls {
            ctx,
            pulls: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(max_concurrent)),
            uses,
            collector,
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
        // The engine's machines pull it when its task starts.
        if self.ctx.engine.pulls_at_start() {
            return Ok(());
        }
        // An image being removed is pulled again once the removal ended.
        self.uses.wait_not_removing(image).await;
        if self.ctx.engine.image_present(image).await? {
            return Ok(());
        }
        let pull = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
            let (_, pull, _) = pulls
                .entry(image.to_string())
                .or_insert_with(|| self.spawn_pull(image, pull_timeout));
            pull.clone()
        };
        pull.await
    }

    /// A container of `image` started: it is in use now (image_gc's record).
    pub(super) fn used(&self, image: &str) {
        self.uses.used(image);
    }

    /// The pulls in progress now, by image, with how far each has come.
    pub(super) fn in_flight(&self) -> Vec<(String, PullSummary)> {
        let pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = pulls
            .iter()
            .map(|(image, (_, _, progress))| (image.clone(), progress.summary()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Starts the pull of `image` as a tracked task, which removes its own entry when done.
    fn spawn_pull(
        &self,
        image: &str,
        pull_timeout: Duration,
    ) -> (u64, SharedPull, Arc<PullProgress>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stall_timeout = self.ctx.config().pull_stall_timeout;
        let progress = Arc::new(PullProgress::new());
        let pull_progress = Arc::clone(&progress);
        let engine = Arc::clone(&self.ctx.engine);
        let image = image.to_string();
        let pulls = self.ctx.metrics.pulls.clone();
        let pull_seconds = self.ctx.metrics.pull_seconds.clone();
        let slots = Arc::clone(&self.slots);
        let map = Arc::clone(&self.pulls);
        let closing = self.ctx.closing.clone();
        let uses = Arc::clone(&self.uses);
        let collector = Arc::clone(&self.collector);
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
                uses.pull_began(&image);
                let _ended = super::background::scopeguard(|| uses.pull_ended(&image));
                // Room first: the images used least recently make way (image_gc).
                collector.room_for_pull(&image, Default::default()).await?;
                tracing::info!(image = %image, "pulling image");
                tokio::select! {
                    biased; // In the order written, not at random: a simulated run replays.
                    pulled = engine.pull(&image, &pull_progress) => pulled,
                    stalled = watch_pull(&image, &pull_progress, stall_timeout) => Err(stalled),
                    no_room = collector.watch_pull(&image, &pull_progress) => Err(no_room),
                }
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
            if result.is_ok() {
                uses.pulled(&image);
                collector.kick();
            }
            match &result {
                Ok(()) => tracing::info!(image = %image, progress = %pull_progress.describe(), took = ?started.elapsed(), "image pulled"),
                Err(e) => tracing::warn!(image = %image, progress = %pull_progress.describe(), error = %e, "pull failed"),
            }
            let outcome = if result.is_ok() { "success" } else { "failure" };
            pulls
                .get_or_create(&crate::metrics::OutcomeLabel { outcome })
                .inc();
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&image).is_some_and(|(entry, _, _)| *entry == id) {
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
        (id, shared, progress)
    }
}

/// Logs a pull's progress every [`PROGRESS_EVERY`] and returns once it has stood still for
/// `stall_timeout` (never, while it moves).
async fn watch_pull(image: &str, progress: &PullProgress, stall_timeout: Duration) -> EngineError {
    let mut next_log = Instant::now() + PROGRESS_EVERY;
    loop {
        let still = progress.still_for();
        if still >= stall_timeout {
            return EngineError::PullStalled {
                image: image.to_string(),
                after: stall_timeout,
            };
        }
        let stall_at = Instant::now() + (stall_timeout - still);
        tokio::time::sleep_until(next_log.min(stall_at)).await;
        if Instant::now() >= next_log {
            tracing::info!(image = %image, progress = %progress.describe(), "pull in progress");
            next_log += PROGRESS_EVERY;
        }
    }
}
