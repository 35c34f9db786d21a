//! Image garbage collection (`image_gc`): removes the task images used least recently when
//! the filesystem holding Docker's images passes `high_percent` (down to `low_percent`), when
//! the executor's images pass `max_bytes`, and to make room for a pull.
//!
//! Owns the choice of what to remove and the passes that remove it: every `interval`, right
//! after a pull, before a pull and while it lasts. Never removes an image with a container
//! (of this executor or any other: Docker's count, and Docker refuses besides), an image of
//! a key in the pool or of a spare, a `prewarm` image, the sandbox holder's image, an image
//! being pulled, one used within `min_age`, or one this executor never pulled nor ran
//! (unless `remove_unrecorded`). "Used least recently" is the executor's own record
//! (`image_use`), not Docker's creation time. It never runs on a request's path: a start
//! waits only when its image is being removed at that moment.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::context::Context;
use super::error::ExecError;
use super::image_use::{now_unix, ImageUse};
use super::pool::Pool;
use super::spares::Spares;
use crate::config::Config;
use crate::engine::{EngineError, StoredImage};
use crate::host::Filesystem;
use crate::image_ref::canonical;
use crate::metrics::ReasonLabel;
use crate::pull_progress::bytes as human;

/// How the image filesystem is measured.
#[derive(Debug, Clone)]
enum Measure {
    /// `high_percent` is off: it is not measured.
    Not,
    /// Docker's root directory is this path here too (the same filesystem): `statvfs`.
    Here(PathBuf),
    /// Through the engine (a holder with the directory mounted): the executor runs where it
    /// cannot see it (in a container with the Docker socket only).
    ThroughEngine,
}

/// What a pull brings, as far as its registry told yet: `total` bytes, of which
/// `remaining` are still to come (the disk holds the rest already; the byte budget counts
/// the image only once it is in place, so all of it). Nothing (the default) for a routine
/// pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Need {
    pub(super) total: u64,
    pub(super) remaining: u64,
}

/// What a pass found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Pass {
    /// Bytes the executor's images hold after it.
    pub(super) held: u64,
    /// The filesystem after it, when measured.
    pub(super) filesystem: Option<Filesystem>,
    pub(super) removed: usize,
}

pub(super) struct ImageCollector {
    ctx: Context,
    uses: Arc<ImageUse>,
    pool: Arc<Pool>,
    spares: Arc<Spares>,
    holder_image: String,
    measure: Measure,
    /// One pass at a time (a pull's pass and the routine one would choose the same images).
    one_pass: Semaphore,
    /// Wakes the routine loop for a pass now (after a pull).
    kick: Notify,
    /// When it last said it could not remove enough.
    warn_short: Throttle,
}

/// A warning said once, then at most every [`Throttle::EVERY`] while it holds.
#[derive(Default)]
struct Throttle(std::sync::Mutex<Option<tokio::time::Instant>>);

impl Throttle {
    const EVERY: Duration = Duration::from_secs(600);

    fn should_warn(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        if last.is_some_and(|at| now < at + Self::EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn reset(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl ImageCollector {
    /// The collector, once it knows how to measure the image filesystem: here when Docker's
    /// root directory is the same filesystem here (same id and size as the engine measures),
    /// else through the engine. Fails when `high_percent` is set and neither can measure it.
    pub(super) async fn new(
        ctx: Context,
        uses: Arc<ImageUse>,
        pool: Arc<Pool>,
        spares: Arc<Spares>,
        holder_image: String,
    ) -> Result<ImageCollector, ExecError> {
        let gc = ctx.config().image_gc.clone();
        let measure = if gc.by_percent() {
            Self::how_to_measure(&ctx, &holder_image).await?
        } else {
            Measure::Not
        };
        if gc.enabled {
            tracing::info!(
                high_percent = gc.high_percent,
                low_percent = gc.low_percent,
                max_bytes = gc.max_bytes.map(human),
                min_age = %humantime::format_duration(gc.min_age),
                measured = ?measure,
                "image_gc on"
            );
        }
        Ok(ImageCollector {
            ctx,
            uses,
            pool,
            spares,
            holder_image,
            measure,
            one_pass: Semaphore::new(1),
            kick: Notify::new(),
            warn_short: Throttle::default(),
        })
    }

    async fn how_to_measure(ctx: &Context, holder_image: &str) -> Result<Measure, ExecError> {
        let refused = |why: String| {
            ExecError::Engine(EngineError::Api(format!(
                "image_gc: cannot measure the filesystem of Docker's images for high_percent: \
                 {why}; use a byte budget instead (image_gc: {{high_percent: 0, max_bytes: \
                 50GB}}) or image_gc: off"
            )))
        };
        let root = ctx
            .engine
            .image_root()
            .await
            .map_err(|e| refused(e.to_string()))?;
        ctx.engine
            .ensure_holder_image(holder_image)
            .await
            .map_err(|e| refused(e.to_string()))?;
        let there = ctx
            .engine
            .image_filesystem(holder_image, &ctx.own_labels())
            .await
            .map_err(|e| refused(format!("{}: {e}", root.display())))?;
        ctx.metrics
            .image_disk_used_percent
            .set(there.used_percent());
        match Filesystem::of(&root) {
            Ok(here) if here.fsid == there.fsid && here.total_bytes == there.total_bytes => {
                Ok(Measure::Here(root))
            }
            _ => Ok(Measure::ThroughEngine),
        }
    }

    /// The image filesystem now, when measured.
    async fn filesystem(&self) -> Result<Option<Filesystem>, EngineError> {
        let measured = match &self.measure {
            Measure::Not => return Ok(None),
            Measure::Here(root) => Filesystem::of(root)
                .map_err(|e| EngineError::Api(format!("cannot measure {}: {e}", root.display())))?,
            Measure::ThroughEngine => {
                let labels = self.ctx.own_labels();
                self.ctx
                    .engine
                    .image_filesystem(&self.holder_image, &labels)
                    .await?
            }
        };
        self.ctx
            .metrics
            .image_disk_used_percent
            .set(measured.used_percent());
        Ok(Some(measured))
    }

    /// Whether the filesystem is measured here, cheaply (so often, during a pull).
    fn measured_here(&self) -> bool {
        matches!(self.measure, Measure::Here(_))
    }

    /// The routine passes: one at start, then every `interval` and at once when kicked;
    /// the record is written after each.
    pub(super) async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.collect("", Need::default()).await {
                tracing::warn!(error = %e, "image_gc pass failed");
            }
            let interval = self.ctx.config().image_gc.interval;
            tokio::select! {
                biased; // In the order written, not at random: a simulated run replays.
                () = self.ctx.closing.cancelled() => break,
                () = self.kick.notified() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
        self.save_record().await;
    }

    /// At shutdown (after `closing`): waits (at most `limit`) for a pass in progress to end,
    /// so that the holder it may be measuring with is gone before the executor sweeps its
    /// containers; no pass begins after `closing`.
    pub(super) async fn wait_passes(&self, limit: Duration) {
        if tokio::time::timeout(limit, self.one_pass.acquire())
            .await
            .is_err()
        {
            tracing::warn!("an image_gc pass did not end within {limit:?} of the stop");
        }
    }

    /// Writes the record (when it changed) off the runtime's threads: a file write and an
    /// fsync must not hold up requests.
    async fn save_record(&self) {
        let uses = Arc::clone(&self.uses);
        if let Err(e) = tokio::task::spawn_blocking(move || uses.save()).await {
            tracing::warn!(error = %e, "writing the image_gc record failed");
        }
    }

    /// Asks for a routine pass now (after a pull brought a new image).
    pub(super) fn kick(&self) {
        self.kick.notify_one();
    }

    /// One pass: removes images, least recently used first, until the thresholds and the
    /// budget (and the room a pull of `image` needs) are met or nothing more may be removed.
    /// A pull that even every removable image gone would leave without room removes nothing
    /// and fails: [`EngineError::NoSpace`], naming the disk or the budget.
    pub(super) async fn collect(&self, image: &str, need: Need) -> Result<Pass, EngineError> {
        let config = self.ctx.config();
        if !config.image_gc.enabled || self.ctx.closing.is_cancelled() {
            return Ok(Pass::default());
        }
        let _pass = self
            .one_pass
            .acquire()
            .await
            .expect("the semaphore is never closed");
        if self.ctx.closing.is_cancelled() {
            return Ok(Pass::default());
        }
        // Containers in the pool use their images now: the record learns it, so an image
        // in use for hours is not taken for one unused since its start.
        let in_pool = self.images_in_pool();
        self.uses.used_all(&in_pool);
        self.ctx.metrics.image_gc_passes.inc();
        let stored = self.ctx.engine.stored_images().await?;
        self.uses.forget_absent(&stored);
        let record = self.uses.record();
        let held: u64 = stored
            .iter()
            .filter(|image| recorded_name(image, &record).is_some())
            .map(|image| image.size)
            .sum();
        let mut pass = Pass {
            held,
            filesystem: self.filesystem().await?,
            removed: 0,
        };
        self.ctx.metrics.image_bytes.set(held as i64);
        let Some(reason) = over(&config, &pass, need, false) else {
            self.save_record().await;
            return Ok(pass);
        };
        let candidates = self.candidates(&config, &stored, &record, &in_pool);
        if need.total > 0 {
            no_room_even_so(image, need, &config, &pass, &candidates)?;
        }
        for (name, image) in candidates {
            if over(&config, &pass, need, true).is_none() {
                break;
            }
            if !self.remove(&name, image, reason, &pass, &config).await {
                continue;
            }
            pass.removed += 1;
            pass.held = pass.held.saturating_sub(image.size);
            pass.filesystem = self.filesystem().await?;
            self.ctx.metrics.image_bytes.set(pass.held as i64);
        }
        self.save_record().await;
        match over(&config, &pass, need, false) {
            Some(still) if self.warn_short.should_warn() => {
                tracing::warn!(reason = %describe(still, &config, &pass), removed = pass.removed, "image_gc could not remove enough: every other image is in use, protected, or used within min_age (said at most every 10 minutes)");
            }
            Some(_) => {}
            None => self.warn_short.reset(),
        }
        Ok(pass)
    }

    /// The images a pass may remove, least recently used first, each with the name to
    /// remove it by.
    fn candidates<'a>(
        &self,
        config: &Config,
        stored: &'a [StoredImage],
        record: &std::collections::BTreeMap<String, super::image_use::ImageEntry>,
        in_pool: &BTreeSet<String>,
    ) -> Vec<(String, &'a StoredImage)> {
        let gc = &config.image_gc;
        let now = now_unix();
        let protected: BTreeSet<String> = config
            .prewarm
            .iter()
            .map(|p| canonical(&p.key.image))
            .chain(std::iter::once(canonical(&self.holder_image)))
            .chain(in_pool.iter().map(|i| canonical(i)))
            .collect();
        let mut candidates: Vec<(u64, String, &StoredImage)> = stored
            .iter()
            .filter(|image| image.containers == 0)
            .filter(|image| {
                !image
                    .names
                    .iter()
                    .any(|n| protected.contains(&canonical(n)))
            })
            .filter_map(|image| match recorded_name(image, record) {
                Some(name) => Some((record[&name].last_used, name, image)),
                // The host owner's own images: only when they opted in, by their build
                // time, by their first name (the rest stay: an image goes with its last).
                None if gc.remove_unrecorded => {
                    let name = image.names.first().cloned().unwrap_or(image.id.clone());
                    Some((image.created.max(0) as u64, name, image))
                }
                None => None,
            })
            .filter(|(last_used, _, _)| now.saturating_sub(*last_used) >= gc.min_age.as_secs())
            .collect();
        candidates.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        candidates
            .into_iter()
            .map(|(_, name, image)| (name, image))
            .collect()
    }

    /// Removes `image` by `name` unless a start or a pull of it began meanwhile; returns
    /// whether it was removed.
    async fn remove(
        &self,
        name: &str,
        image: &StoredImage,
        reason: Reason,
        pass: &Pass,
        config: &Config,
    ) -> bool {
        if !self.uses.begin_removal(name) {
            return false;
        }
        let _ended = super::background::scopeguard(|| self.uses.removal_ended(name));
        // Marked first, then checked: a start that put its key in the pool before the mark
        // is seen here; one after it waits for the removal to end (`Pulls::ensure_image`).
        if self
            .images_in_pool()
            .iter()
            .any(|i| canonical(i) == canonical(name))
        {
            return false;
        }
        match self.ctx.engine.remove_image(name).await {
            Ok(()) => {
                self.uses.forget(name);
                let reclaimed = image.size.saturating_sub(image.shared);
                self.ctx
                    .metrics
                    .images_removed
                    .get_or_create(&ReasonLabel {
                        reason: reason.label(),
                    })
                    .inc();
                self.ctx.metrics.image_bytes_reclaimed.inc_by(reclaimed);
                tracing::info!(image = %name, size = %human(image.size), reclaimed = %human(reclaimed), reason = %describe(reason, config, pass), "image removed");
                true
            }
            Err(EngineError::ImageInUse(_)) => {
                tracing::debug!(image = %name, "image in use by a container: kept");
                false
            }
            Err(e) => {
                tracing::warn!(image = %name, error = %e, "could not remove image");
                false
            }
        }
    }

    fn images_in_pool(&self) -> BTreeSet<String> {
        let mut images = self.pool.images();
        images.extend(self.spares.images());
        images
    }

    /// Makes room for a pull of `image` that brings `need`; fails when no room can be made.
    pub(super) async fn room_for_pull(&self, image: &str, need: Need) -> Result<(), EngineError> {
        self.collect(image, need).await.map(|_| ())
    }

    /// While a pull of `image` lasts: makes room each time its known size grows, and
    /// every second (when the filesystem is measured here; else every 5 s) while the disk
    /// may pass its threshold. Returns only when no room can be made for it. Each pass runs
    /// as a task of its own: a pull that ends meanwhile does not cut a removal short.
    pub(super) async fn watch_pull(
        self: &Arc<Self>,
        image: &str,
        progress: &crate::pull_progress::PullProgress,
    ) -> EngineError {
        let every = if self.measured_here() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let mut asked = 0;
        let mut next_routine = tokio::time::Instant::now() + every;
        loop {
            let grew = progress.size_grew();
            let summary = progress.summary();
            let by_percent = self.ctx.config().image_gc.by_percent();
            let due = by_percent && tokio::time::Instant::now() >= next_routine;
            if summary.bytes_total > asked || due {
                asked = summary.bytes_total;
                next_routine = tokio::time::Instant::now() + every;
                let collector = Arc::clone(self);
                let image_name = image.to_string();
                let need = Need {
                    total: summary.bytes_total,
                    remaining: summary.bytes_total.saturating_sub(summary.bytes_done),
                };
                let pass = self
                    .ctx
                    .work
                    .spawn(async move { collector.room_for_pull(&image_name, need).await });
                match pass.await {
                    Ok(Err(e @ EngineError::NoSpace { .. })) => return e,
                    Ok(Err(e)) => {
                        tracing::warn!(image = %image, error = %e, "image_gc pass during a pull failed")
                    }
                    Ok(Ok(())) | Err(_) => {}
                }
            }
            tokio::select! {
                biased; // In the order written, not at random: a simulated run replays.
                () = grew => {}
                () = tokio::time::sleep_until(next_routine) => {}
            }
        }
    }
}

/// A pull that needs `need` bytes does not fit even with every candidate removed: the
/// error that says so, naming the budget or the disk.
fn no_room_even_so(
    image: &str,
    need: Need,
    config: &Config,
    pass: &Pass,
    candidates: &[(String, &StoredImage)],
) -> Result<(), EngineError> {
    let gc = &config.image_gc;
    let no_space = |detail: String| EngineError::NoSpace {
        image: image.to_string(),
        detail,
    };
    if let Some(max) = gc.max_bytes {
        let removable: u64 = candidates.iter().map(|(_, i)| i.size).sum();
        let staying = pass.held.saturating_sub(removable);
        if staying.saturating_add(need.total) > max {
            return Err(no_space(format!(
                "it needs at least {} and image_gc's max_bytes is {}, of which {} are held by \
                 images that stay (in use, protected, or used within min_age)",
                human(need.total),
                human(max),
                human(staying)
            )));
        }
    }
    if let Some(fs) = pass.filesystem.filter(|_| gc.by_percent()) {
        let freed: u64 = candidates
            .iter()
            .map(|(_, i)| i.size.saturating_sub(i.shared))
            .sum();
        if fs.available_bytes.saturating_add(freed) < need.remaining {
            return Err(no_space(format!(
                "it needs {} more, and {} are available even with every image image_gc may \
                 remove gone",
                human(need.remaining),
                human(fs.available_bytes.saturating_add(freed))
            )));
        }
    }
    Ok(())
}

/// The name under which the record knows `image`, if it does.
fn recorded_name(
    image: &StoredImage,
    record: &std::collections::BTreeMap<String, super::image_use::ImageEntry>,
) -> Option<String> {
    image
        .names
        .iter()
        .map(|n| canonical(n))
        .find(|n| record.contains_key(n))
}

/// What makes a pass remove images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// The filesystem is past `high_percent`.
    Disk,
    /// The executor's images are past `max_bytes`.
    Budget,
    /// A pull needs room.
    Pull,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Disk => "disk",
            Reason::Budget => "budget",
            Reason::Pull => "pull",
        }
    }
}

/// Whether `pass` is past what `config` allows with `need` bytes more to come: the reason,
/// or `None`. `removing`: a pass that began removing goes on down to `low_percent`.
fn over(config: &Config, pass: &Pass, need: Need, removing: bool) -> Option<Reason> {
    let pulling = need.total > 0;
    let gc = &config.image_gc;
    if let Some(fs) = pass.filesystem.filter(|_| gc.by_percent()) {
        let line = if removing {
            gc.low_percent
        } else {
            gc.high_percent
        };
        if fs.used_percent() >= f64::from(line) || fs.available_bytes < need.remaining {
            return Some(if pulling { Reason::Pull } else { Reason::Disk });
        }
    }
    if let Some(max) = gc.max_bytes {
        if pass.held.saturating_add(need.total) > max {
            return Some(if pulling {
                Reason::Pull
            } else {
                Reason::Budget
            });
        }
    }
    None
}

/// `reason` in words, with the figures of `pass`.
fn describe(reason: Reason, config: &Config, pass: &Pass) -> String {
    let gc = &config.image_gc;
    let disk = pass
        .filesystem
        .map(|fs| format!("{:.0}%", fs.used_percent()));
    match reason {
        Reason::Disk => format!(
            "the disk holding Docker's images is {} full (image_gc high_percent {}, low_percent {})",
            disk.unwrap_or_default(),
            gc.high_percent,
            gc.low_percent
        ),
        Reason::Budget => format!(
            "the executor's images take {} (image_gc max_bytes {})",
            human(pass.held),
            human(gc.max_bytes.unwrap_or(0))
        ),
        Reason::Pull => format!(
            "room for a pull (images take {}{})",
            human(pass.held),
            disk.map(|d| format!(", disk {d} full")).unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ImageGc;

    fn config(gc: ImageGc) -> Config {
        Config {
            image_gc: gc,
            ..Config::default()
        }
    }

    fn pass(held: u64, used_percent: u64) -> Pass {
        Pass {
            held,
            filesystem: Some(Filesystem {
                total_bytes: 100,
                free_bytes: 100 - used_percent,
                available_bytes: 100 - used_percent,
                fsid: 0,
            }),
            removed: 0,
        }
    }

    #[test]
    fn a_pass_begins_past_high_and_goes_on_to_low() {
        let c = config(ImageGc::default());
        let none = Need::default();
        assert_eq!(over(&c, &pass(0, 84), none, false), None);
        assert_eq!(over(&c, &pass(0, 85), none, false), Some(Reason::Disk));
        assert_eq!(over(&c, &pass(0, 82), none, true), Some(Reason::Disk));
        assert_eq!(over(&c, &pass(0, 79), none, true), None);
        // A pull whose rest needs more than is available.
        let pull = |total, remaining| Need { total, remaining };
        assert_eq!(
            over(&c, &pass(0, 50), pull(80, 60), false),
            Some(Reason::Pull)
        );
        assert_eq!(over(&c, &pass(0, 50), pull(80, 40), false), None);
    }

    #[test]
    fn the_byte_budget_counts_what_a_pull_brings() {
        let c = config(ImageGc {
            high_percent: 0,
            max_bytes: Some(1000),
            ..ImageGc::default()
        });
        let none = Need::default();
        assert_eq!(over(&c, &pass(1000, 99), none, false), None);
        assert_eq!(over(&c, &pass(1001, 99), none, false), Some(Reason::Budget));
        // The whole image counts, downloaded or not.
        let pull = Need {
            total: 200,
            remaining: 10,
        };
        assert_eq!(over(&c, &pass(900, 99), pull, false), Some(Reason::Pull));
    }
}
