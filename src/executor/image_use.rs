//! What the executor knows of its task images' use: when each image it pulled or ran was
//! last used (kept across restarts in a small JSON state file), and which images are being
//! pulled or removed right now.
//!
//! Owns the record and its file, and the marks that keep a removal and a start or a pull of
//! the same image apart: an image being pulled is never removed, and a start waits while its
//! image is being removed (then pulls it again). It never calls the engine and decides
//! nothing: `image_gc` chooses what to remove, `pulls` and `start` report use.
//!
//! Images are named by their canonical reference ([`crate::image_ref::canonical`]), as
//! Docker lists them. "Used" is a start of a container of the image (a task's, a spare's or a
//! prewarm's), a pull, or a container of it seen in the pool by the collector's pass.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::image_ref::canonical;

/// One image of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ImageEntry {
    /// When it was last used, in Unix seconds.
    pub(super) last_used: u64,
    /// Whether this executor pulled it (else it only ran it).
    pub(super) pulled: bool,
}

/// The state file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    images: BTreeMap<String, ImageEntry>,
}

const STATE_VERSION: u32 = 1;

#[derive(Default)]
struct State {
    record: BTreeMap<String, ImageEntry>,
    /// The record changed since it was last written.
    dirty: bool,
    pulling: BTreeSet<String>,
    removing: BTreeSet<String>,
}

pub(super) struct ImageUse {
    /// `None`: the record lives in memory only (`image_gc: off`).
    file: Option<PathBuf>,
    state: Mutex<State>,
    /// Told when a removal ends.
    removed: Notify,
}

/// The state file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("image_gc state file {path}: {source}; set image_gc.state_file to a writable path, or image_gc: off")]
pub struct StateFileError {
    path: PathBuf,
    source: std::io::Error,
}

/// Now, in Unix seconds.
pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ImageUse {
    /// A record in memory only.
    pub(super) fn in_memory() -> ImageUse {
        ImageUse {
            file: None,
            state: Mutex::new(State::default()),
            removed: Notify::new(),
        }
    }

    /// The record kept in `file`: read when it exists, written at once (so a path that
    /// cannot be written fails here, at start, not later). A file that is not a record is
    /// set aside (`.corrupt`) and the record starts empty.
    pub(super) fn load(file: PathBuf) -> Result<ImageUse, StateFileError> {
        let fail = |source| StateFileError {
            path: file.clone(),
            source,
        };
        let record = match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(state) => state.images,
                Err(e) => {
                    let aside = file.with_extension("json.corrupt");
                    tracing::warn!(file = %file.display(), error = %e, set_aside = %aside.display(), "image_gc state file unreadable: starting with an empty record");
                    std::fs::rename(&file, &aside).map_err(fail)?;
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(fail(e)),
        };
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let uses = ImageUse {
            file: Some(file.clone()),
            state: Mutex::new(State {
                record,
                ..State::default()
            }),
            removed: Notify::new(),
        };
        uses.write().map_err(fail)?;
        tracing::info!(file = %file.display(), images = uses.lock().record.len(), "image use record loaded");
        Ok(uses)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section below can panic half-way.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A container of `image` started (or was seen running) now.
    pub(super) fn used(&self, image: &str) {
        let mut state = self.lock();
        let entry = state.record.entry(canonical(image)).or_insert(ImageEntry {
            last_used: 0,
            pulled: false,
        });
        entry.last_used = now_unix();
        state.dirty = true;
    }

    /// Every image in `images` is in use now.
    pub(super) fn used_all<'a>(&self, images: impl IntoIterator<Item = &'a String>) {
        for image in images {
            self.used(image);
        }
    }

    /// The executor pulled `image` now (written with the next save: the pass a pull
    /// kicks).
    pub(super) fn pulled(&self, image: &str) {
        let mut state = self.lock();
        state.record.insert(
            canonical(image),
            ImageEntry {
                last_used: now_unix(),
                pulled: true,
            },
        );
        state.dirty = true;
    }

    /// The record, by canonical reference.
    pub(super) fn record(&self) -> BTreeMap<String, ImageEntry> {
        self.lock().record.clone()
    }

    /// `image` is gone: it leaves the record.
    pub(super) fn forget(&self, image: &str) {
        let mut state = self.lock();
        if state.record.remove(&canonical(image)).is_some() {
            state.dirty = true;
        }
    }

    /// Images of the record that the engine no longer stores (removed by someone else)
    /// leave it, unless they are being pulled.
    pub(super) fn forget_absent(&self, stored: &[crate::engine::StoredImage]) {
        let present: BTreeSet<String> = stored
            .iter()
            .flat_map(|image| image.names.iter().map(|n| canonical(n)))
            .collect();
        let mut state = self.lock();
        let state = &mut *state;
        let before = state.record.len();
        state
            .record
            .retain(|name, _| present.contains(name) || state.pulling.contains(name));
        if state.record.len() != before {
            state.dirty = true;
        }
    }

    /// Writes the record if it changed (blocking: call it off the runtime's threads); a
    /// failure is logged (the record stays in memory and is written again at the next
    /// save).
    pub(super) fn save(&self) {
        if let Err(e) = self.write() {
            let file = self.file.as_deref().unwrap_or(Path::new("-"));
            tracing::warn!(file = %file.display(), error = %e, "could not write the image_gc state file");
        }
    }

    fn write(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let text = {
            let mut state = self.lock();
            if !state.dirty && file.exists() {
                return Ok(());
            }
            state.dirty = false;
            serde_json::to_vec_pretty(&StateFile {
                version: STATE_VERSION,
                images: state.record.clone(),
            })
            .expect("the record serializes")
        };
        // Written aside and renamed: a crash leaves the old file or the new one.
        let aside = file.with_extension("json.new");
        let written = (|| {
            let mut out = std::fs::File::create(&aside)?;
            out.write_all(&text)?;
            out.sync_all()?;
            std::fs::rename(&aside, file)
        })();
        if written.is_err() {
            self.lock().dirty = true;
        }
        written
    }

    /// A pull of `image` begins: it is not removed until [`pull_ended`](Self::pull_ended).
    pub(super) fn pull_began(&self, image: &str) {
        self.lock().pulling.insert(canonical(image));
    }

    pub(super) fn pull_ended(&self, image: &str) {
        self.lock().pulling.remove(&canonical(image));
    }

    /// Marks `image` as being removed, unless it is being pulled or removed already.
    /// Returns whether it was marked; then [`removal_ended`](Self::removal_ended) must
    /// follow.
    pub(super) fn begin_removal(&self, image: &str) -> bool {
        let image = canonical(image);
        let mut state = self.lock();
        if state.pulling.contains(&image) || state.removing.contains(&image) {
            return false;
        }
        state.removing.insert(image)
    }

    pub(super) fn removal_ended(&self, image: &str) {
        self.lock().removing.remove(&canonical(image));
        self.removed.notify_waiters();
    }

    /// Returns once `image` is not being removed.
    pub(super) async fn wait_not_removing(&self, image: &str) {
        let image = canonical(image);
        loop {
            let removed = self.removed.notified();
            if !self.lock().removing.contains(&image) {
                return;
            }
            removed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_survives_a_restart_and_a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/images.json");
        let uses = ImageUse::load(file.clone()).unwrap();
        uses.pulled("meca-echo");
        uses.used("docker.io/library/python:3");
        uses.save();
        let again = ImageUse::load(file.clone()).unwrap();
        let record = again.record();
        assert!(record["meca-echo:latest"].pulled);
        assert!(!record["python:3"].pulled);
        assert!(record["python:3"].last_used >= record["meca-echo:latest"].last_used);

        std::fs::write(&file, b"not json").unwrap();
        let fresh = ImageUse::load(file.clone()).unwrap();
        assert!(fresh.record().is_empty());
        assert!(file.with_extension("json.corrupt").exists());
    }

    #[test]
    fn an_unwritable_state_file_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("a-file");
        std::fs::write(&blocker, b"").unwrap();
        let e = ImageUse::load(blocker.join("images.json")).err().unwrap();
        assert!(e.to_string().contains("image_gc state file"), "{e}");
    }

    #[test]
    fn a_pulled_or_removed_image_is_not_removed_twice() {
        let uses = ImageUse::in_memory();
        uses.pull_began("a");
        assert!(!uses.begin_removal("a:latest"));
        uses.pull_ended("a");
        assert!(uses.begin_removal("a"));
        assert!(!uses.begin_removal("a"));
        uses.removal_ended("a");
        assert!(uses.begin_removal("a"));
    }
}
